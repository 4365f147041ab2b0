"""`make report-sfda`: the renderer and verdicts on rows made here (fast), the real script with --quick (slow).

Checks structure and that verdicts follow the numbers, never the numbers themselves.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "report_sfda.py"
SECTIONS = (
    "## Setup",
    "## Test accuracy",
    "## Label-free selection vs hindsight",
    "## How each criterion tracks true accuracy",
    "## Verdicts",
)


def _row(target: str, seed: int, *, source: float, method_acc: float, few: float) -> dict:
    from report_sfda import CRITERIA, METHODS

    row = {"target": target, "seed": seed, "source": source, "lp-ft-5": few}
    for i, m in enumerate(METHODS):
        row[m] = {
            "accuracy": method_acc - 0.01 * i,
            "lr": 1e-3,
            "step": 30,
            "oracle": method_acc + 0.02,
            "spearman": {c: 0.5 - 0.2 * j for j, c in enumerate(CRITERIA)},
            "candidates": [],
        }
    return row


def test_report_renders_every_section_and_verdicts_follow_the_numbers():
    from report_sfda import METHODS, Settings, render

    settings = Settings(seeds=(0, 1))
    targets = settings.targets[:2]
    rows = [_row(targets[0].key, s, source=0.5, method_acc=0.8, few=0.6) for s in (0, 1)]
    rows += [_row(targets[1].key, s, source=0.7, method_acc=0.6, few=0.9) for s in (0, 1)]
    text = render(rows, settings, targets=targets, seconds=60.0, source_acc={"fashion": 0.9}, quick=False)
    for section in SECTIONS:
        assert section in text
    table = [line for line in text.splitlines() if line.startswith(f"| {targets[0].key} |")]
    assert len(table) == 1 and table[0].count("±") == 2 + len(METHODS)
    verdicts = text.split("## Verdicts")[1]
    assert (
        f"**{targets[0].key}**: the best of the four (each with its LR chosen label-free; best by test accuracy, in hindsight), `tent`, improves on the source"
        in verdicts
    )
    assert "beats lp-ft" in verdicts.splitlines()[2]
    assert (
        f"**{targets[1].key}**: the best of the four (each with its LR chosen label-free; best by test accuracy, in hindsight), `tent`, is worse than"
        in verdicts
    )
    assert "is beaten by lp-ft" in verdicts
    assert "`im` tracks accuracy best" in verdicts


def test_missing_numbers_render_as_a_dash():
    from report_sfda import _mean_sd

    assert _mean_sd([math.nan]) == "—" and _mean_sd([0.5]) == "0.500"
    assert _mean_sd([0.5, 0.7]) == "0.600 ± 0.141"


@pytest.mark.slow
def test_quick_report_end_to_end(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = Path(done.stdout.strip().splitlines()[-1])
    text = report.read_text()
    for section in SECTIONS:
        assert section in text
    data = json.loads((tmp_path / "sfda_report.json").read_text())
    for row in data["rows"]:
        for method in ("tent", "shot", "aad", "nrc"):
            cell = row[method]
            assert 0.0 <= cell["accuracy"] <= cell["oracle"] <= 1.0
            # Every candidate was scored by every criterion; the chosen LR is one of the grid's.
            assert cell["candidates"] and all({"im", "snd", "entropy"} <= set(c) for c in cell["candidates"])
            assert cell["lr"] in {c["lr"] for c in cell["candidates"]}
    assert re.search(r"\| fashion/invert \| \d\.\d{3} \|", text)


def test_selection_by_a_criterion_and_no_selection():
    from report_sfda import _differs, chosen_by, unselected

    candidates = [
        {"lr": 1e-3, "step": 10, "accuracy": 0.6, "im": 0.1},
        {"lr": 1e-3, "step": 20, "accuracy": 0.5, "im": math.nan},
        {"lr": 3e-3, "step": 20, "accuracy": 0.4, "im": 0.9},
    ]
    assert chosen_by(candidates, "im") == 0.4  # the criterion's pick, not the best accuracy; NaN never wins
    assert unselected(candidates, "shot") == 0.5  # shot's default LR 1e-3, its last step
    assert math.isnan(unselected(candidates, "aad"))  # aad's default 1e-4 is not in this grid
    assert _differs([0.9, 0.91, 0.92], [0.5, 0.51, 0.52]) == 1
    assert _differs([0.5, 0.9], [0.6, 0.7]) == 0  # within twice the standard error
    assert _differs([0.5], [0.9]) == 0  # one seed: no verdict
