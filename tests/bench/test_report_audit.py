"""Smoke test of bench/report_audit.py: one tiny run end to end, and rendering rows a stopped run left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="needs Fashion-MNIST (make data)")
def test_report_audit_runs_and_renders(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "report_audit.py"),
            "--seeds",
            "1",
            "--settings",
            "none,4",
            "--examples",
            "200",
            "--epochs",
            "1",
            "--jobs",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## What the weights reveal" in done.stdout and "| ε = 4 |" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "audit_rows.jsonl").read_text().splitlines()]
    assert {r["epsilon"] for r in rows} == {None, 4.0}
    dp = next(r for r in rows if r["epsilon"] == 4.0)["dp_audit"]
    assert 0 <= dp["lower_bound"] <= dp["claimed"]
    again = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "report_audit.py"), "--render-only", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert again.returncode == 0 and "| no DP |" in again.stdout
