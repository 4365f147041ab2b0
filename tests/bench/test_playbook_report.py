"""The playbook report's arithmetic (Kendall τ, verdicts) and its rendering from rows made here; the run is slow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import report_playbook as rp


def test_kendall_tau_counts_pairs():
    assert rp.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert rp.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert rp.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert rp.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2 * 3))  # τ-b with a tie
    assert math.isnan(rp.kendall_tau([1, 1], [2, 2]))


def test_verdicts_need_twice_the_standard_error_and_two_seeds():
    assert "A beats B" in rp.verdict([0.9, 0.91, 0.92], [0.5, 0.52, 0.51], better="A", worse="B")
    assert "B beats A" in rp.verdict([0.5, 0.52, 0.51], [0.9, 0.91, 0.92], better="A", worse="B")
    assert "no clear difference" in rp.verdict([0.5, 0.9, 0.1], [0.5, 0.6, 0.4], better="A", worse="B")
    assert "one seed" in rp.verdict([0.9], [0.1], better="A", worse="B")
    assert "NaN" in rp.verdict([float("nan"), 1.0], [0.1, 0.2], better="A", worse="B")


def test_render_shows_every_section():
    s = {**rp.SETTINGS}
    cols = {f"{h} {k}-shot": [0.5, 0.6] for h in ("prototype", "logreg") for k in s["shots"]}
    result = {
        "settings": s,
        "seeds": 2,
        "wall_seconds": 1.0,
        "cpu_seconds": 2.0,
        "a": {
            "rows": {"supervised": cols, "protonet": cols},
            "ci95": {"supervised": cols, "protonet": cols},
            "verdicts": ["va"],
        },
        "b": {"rows": {"source, no self-pretraining": [0.4, 0.5]}, "verdicts": ["vb"]},
        "c": {
            "how": {"x": "made so"},
            "scores": {"x": {"logme": -0.3, "knn_accuracy": 0.7}},
            "accuracy": {"x": [0.6, 0.7]},
            "verdicts": ["vc"],
        },
    }
    text = rp.render(result)
    for part in ("## A.", "## B.", "## C.", "| protonet |", "- va", "- vb", "- vc", "| x | made so | -0.300"):
        assert part in text


@pytest.mark.slow
def test_quick_run_writes_the_report(tmp_path: Path):
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    assert rp.main(["--quick", "--seeds", "1", "--out", str(tmp_path / "r.md")]) == 0
    assert "Kendall" in (tmp_path / "r.md").read_text()
