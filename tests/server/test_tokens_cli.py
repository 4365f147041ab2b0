"""`xfer-server tokens add|list|remove`: the console command, and that it never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from xfer.server.auth import hash_token

XFER_SERVER = Path(sys.executable).parent / "xfer-server"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(XFER_SERVER), *argv], capture_output=True, text=True, timeout=60)


def test_add_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    result = _run("tokens", "add", "--role", "client", "--file", str(path), "--name", "edge-1")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("xfer_") and len(token) > 40
    stored = path.read_text()
    assert token not in stored and hash_token(token) in stored
    assert json.loads(stored)["tokens"] == [{"name": "edge-1", "role": "client", "sha256": hash_token(token)}]
    assert path.stat().st_mode & 0o777 == 0o600
    listing = _run("tokens", "list", "--file", str(path))
    assert listing.returncode == 0 and "client\tedge-1" in listing.stdout and token not in listing.stdout
    assert _run("tokens", "add", "--role", "client", "--file", str(path), "--name", "edge-1").returncode == 1
    removed = _run("tokens", "remove", "--name", "edge-1", "--file", str(path))
    assert removed.returncode == 0 and "removed 1 token(s)" in removed.stdout
    assert json.loads(path.read_text())["tokens"] == []


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = _run("tokens", "add", "--role", "admin", "--file", str(tmp_path / "t.json"))
    assert result.returncode == 2 and "invalid choice: 'admin'" in result.stderr


def test_token_administration_imports_no_torch(tmp_path: Path) -> None:
    """An operator's laptop or a CI job manages tokens without the ML stack (or the database stack)."""
    script = (
        "import sys\n"
        "from xfer.server.__main__ import main\n"
        f"code = main(['tokens', 'add', '--role', 'operator', '--file', {str(tmp_path / 't.json')!r}])\n"
        f"code |= main(['tokens', 'list', '--file', {str(tmp_path / 't.json')!r}])\n"
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'sqlalchemy', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
