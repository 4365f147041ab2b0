"""Edge-client tests: they run in a virtual environment with only the base install (`pip install .`).

`make test-edge` creates that environment (.venv-edge) and runs this folder
in it. The server, which needs the [server] extra, runs as a subprocess of
the full environment's Python (`XFER_EDGE_SERVER_PYTHON`), and so does the
operator's source training; everything the tests import themselves must
work without torch, onnxruntime or SQLAlchemy. In the full environment the
same tests run with this process's own Python for the server.

This conftest imports nothing from the other test folders (their conftests
import torch): run it with `--confcutdir=tests/edge`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xfer.server.process import ServerProcess

SERVER_PYTHON = os.environ.get("XFER_EDGE_SERVER_PYTHON") or sys.executable


def _run(*argv: str) -> str:
    done = subprocess.run([SERVER_PYTHON, *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="session")
def source_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small source model as the operator's tools write it (trained by the full environment)."""
    out = tmp_path_factory.mktemp("source")
    _run("-m", "xfer.models.train", "--out", str(out), "--data", "digits", "--arch", "mlp", "--epochs", "2")
    return out


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, str]]:
    """A real server (full environment) with an operator and a client token: (process, operator, client)."""
    root = tmp_path_factory.mktemp("server")
    tokens = root / "tokens.json"
    operator = (
        _run("-m", "xfer.server", "tokens", "add", "--role", "operator", "--file", str(tokens), "--name", "op")
        .strip()
        .splitlines()[-1]
    )
    client = (
        _run("-m", "xfer.server", "tokens", "add", "--role", "client", "--file", str(tokens), "--name", "edge")
        .strip()
        .splitlines()[-1]
    )
    process = ServerProcess(
        data_dir=root / "data",
        python=SERVER_PYTHON,
        log_level="WARNING",
        args=("--token-file", str(tokens), "--chunk-size", str(16 * 1024)),
    )
    process.start()
    yield process, operator, client
    process.stop()
