"""Smoke test of bench/onnxhead.py --quick: it runs end to end and prints its tables and ratios."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_onnxhead_bench_quick_prints_accuracies_and_ratios(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "onnxhead.py"), "--quick", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| labels per class | DP ε | onnx-logreg | onnx-prototype | torch linear-probe |" in out
    rows = re.findall(r"^\| (5|20|all \(\d+\)) \| (—|1\.0|4\.0) \| ([0-9.]+) ± ", out, re.M)
    assert len(rows) == 9 and all(0.0 <= float(acc) <= 1.0 for *_, acc in rows)
    ratio = re.search(r"process time ([0-9.]+), fit time ([0-9.]+), peak memory ([0-9.]+)", out)
    assert ratio and all(float(v) > 0 for v in ratio.groups())
