"""Smoke test of `make report`: the real script with --quick, through a real server, into tmp_path.

Checks the report's structure — sections, tables, PNGs, numbers that parse
as accuracies — never its numbers.
"""

from __future__ import annotations

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
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("report")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=540)
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


@pytest.mark.timeout(600)
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


@pytest.mark.timeout(600)
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


@pytest.mark.timeout(600)
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


@pytest.mark.timeout(600)
def test_quick_report_went_through_the_server(quick_report) -> None:
    out, _ = quick_report
    sections = _sections((out / "transfer_report.md").read_text(encoding="utf-8"))
    product = sections["## The product path"]
    reported = int(re.search(r"Client.report`: (\d+)", product).group(1))
    listed = int(re.search(r"Client.list_runs`: (\d+)", product).group(1))
    assert reported > 0 and reported == listed
    assert "MISMATCH" not in sections["## Server leaderboard"]
