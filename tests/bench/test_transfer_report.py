"""Smoke test of `make report`: the real script with --quick, through a real server, into tmp_path.

Checks the report's structure — sections, tables, PNGs, numbers that parse
as accuracies — never its numbers. The end-to-end run trains two sources and
imports the ImageNet model, minutes on a busy 2-core machine, so it is
`slow` (`make test-all`); `test_report_renders_every_section` checks the same
structure in seconds, from rows made here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "transfer_report.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = (
    "## Setup",
    "## The product path",
    "## 1. Pretrained vs random initialisation",
    "## 2. Surgical fine-tuning by shift type",
    "## 3. Strategy comparison",
    "## 4. Privacy",
    "## 5. Search",
    "## 6. Agreement with published claims",
    "## Server leaderboard",
)
MEAN_STD = re.compile(r"(-?\d+\.\d+) ± (-?\d+\.\d+)")
VERDICTS = {"agrees", "does not agree", "within noise", "inconclusive"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The renderer alone, on rows of every section made here: the report's structure without training."""
    from report_claims import claims
    from report_experiments import PrivacyRow, Stat
    from report_render import LeaderboardTable, ProductFacts, ReportInput, make_figures, render_markdown
    from report_setup import Settings
    from test_report_claims import _results

    out = tmp_path_factory.mktemp("rendered")
    good, bad = Stat((0.9, 0.92, 0.91)), Stat((0.5, 0.52, 0.51))
    results = _results(pretrained=good, random=bad, early=good, late=bad)
    results.privacy.append(PrivacyRow("pretrained + linear-probe", "pretrained", "linear-probe", None, good, None))
    results.privacy.append(PrivacyRow("random + full", "random", "full", None, bad, None))
    settings = dataclasses.replace(
        Settings.full(), epsilons=(1.0, None), strategies=("full", "lp-ft"), search_strategies=("lp-ft",)
    )
    product = ProductFacts(
        "127.0.0.1:1",
        (("fashion-convnet:1", "ab" * 32, 0.9, 1000), ("imagenet-lite0:1", "cd" * 32, None, 2000)),
        3000,
        0,
        4,
        4,
        (LeaderboardTable("input", "acc/input/pc20", (), {}),),
    )
    data = ReportInput(
        settings=settings,
        results=results,
        claims=claims(results),
        product=product,
        wall_seconds=60.0,
        busy_seconds=100.0,
        cpu_seconds=90.0,
        generated="now",
    )
    make_figures(results, settings=settings, out_dir=out)
    (out / "transfer_report.md").write_text(render_markdown(data), encoding="utf-8")
    return out


def test_report_renders_every_section(rendered: Path) -> None:
    sections = _sections((rendered / "transfer_report.md").read_text(encoding="utf-8"))
    for heading in SECTIONS:
        assert heading in sections, f"missing section {heading!r}; have {list(sections)}"
    for heading in SECTIONS[2:8]:
        tables = _tables(sections[heading])
        assert tables and all(len(t) >= 2 and len({len(row) for row in t}) == 1 for t in tables), heading
    init = _tables(sections["## 1. Pretrained vs random initialisation"])[0]
    assert init[0][4:7] == ["frozen-feature probe", "fine-tuned", "random init"]
    assert any(row[5] == "—" for row in init[1:])  # the ImageNet model is not fine-tuned at every label count
    assert "imported" in sections["## The product path"]
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (rendered / "transfer_report.md").read_text())
    assert len(figures) >= 5 and all((rendered / f).read_bytes()[:8] == PNG_SIGNATURE for f in figures)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("report")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    return out, proc


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^(## .+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _tables(body: str) -> list[list[list[str]]]:
    """Markdown tables of a section as lists of rows of cells (header first, separator dropped)."""
    tables, current = [], []
    for line in body.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-", ":"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_report_structure(quick_report) -> None:
    out, proc = quick_report
    report = Path(proc.stdout.strip().splitlines()[-1])
    assert report == out / "transfer_report.md" and report.is_file()
    assert "[" in proc.stderr and "adaptation runs" in proc.stderr  # progress went to stderr
    text = report.read_text(encoding="utf-8")
    sections = _sections(text)
    for heading in SECTIONS:
        assert heading in sections, f"missing section {heading!r}; have {list(sections)}"
    for heading in SECTIONS[2:]:
        tables = _tables(sections[heading])
        assert tables, f"{heading} has no table"
        for table in tables:
            assert len(table) >= 2, f"{heading}: a table without rows"
            assert len({len(row) for row in table}) == 1, f"{heading}: ragged table {table}"
    # Nothing half-written is left behind (atomic writes).
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_report_numbers_are_accuracies(quick_report) -> None:
    out, _ = quick_report
    text = (out / "transfer_report.md").read_text(encoding="utf-8")
    sections = _sections(text)
    for heading in SECTIONS[2:6]:
        found = MEAN_STD.findall(sections[heading])
        assert found, f"{heading} has no 'mean ± std' numbers"
        for mean, std in found:
            assert 0.0 <= float(mean) <= 1.0, f"{heading}: {mean} is not an accuracy"
            assert 0.0 <= float(std) <= 1.0, f"{heading}: std {std} out of range"
    claims = [t for t in _tables(sections["## 6. Agreement with published claims"]) if "verdict" in t[0]]
    assert claims, "no claims table"
    header, rows = claims[0][0], claims[0][1:]
    verdict = header.index("verdict")
    assert rows and all(row[verdict].strip("*") in VERDICTS for row in rows)
    data = json.loads((out / "transfer_report.json").read_text())
    assert data["settings"]["quick"] is True and data["results"]["init"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_report_figures_are_pngs(quick_report) -> None:
    from PIL import Image

    out, _ = quick_report
    text = (out / "transfer_report.md").read_text(encoding="utf-8")
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert len(figures) >= 5
    for name in figures:
        path = out / name
        assert path.is_file(), f"{name} is referenced but missing"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size[0] > 100 and image.size[1] > 100


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_report_went_through_the_server(quick_report) -> None:
    out, _ = quick_report
    sections = _sections((out / "transfer_report.md").read_text(encoding="utf-8"))
    product = sections["## The product path"]
    reported = int(re.search(r"Client.report`: (\d+)", product).group(1))
    listed = int(re.search(r"Client.list_runs`: (\d+)", product).group(1))
    assert reported > 0 and reported == listed
    assert "MISMATCH" not in sections["## Server leaderboard"]
