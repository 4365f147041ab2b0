"""The README's Python example runs exactly as written, against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.client.server_process import new_server_process

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The python block that follows the `readme-example` marker."""
    match = re.search(r"<!-- readme-example -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md lost its marked Python example"
    return match.group(1)


def test_readme_python_example_runs_as_written(tmp_path, source_model_dir):
    server = new_server_process(tmp_path / "server")
    try:
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            operator.register(source_model_dir, "digits-convnet")
            operator.set_alias("digits-convnet:1", "stable")
        script = tmp_path / "example.py"
        script.write_text(readme_example())
        env = {
            **os.environ,
            "XFER_SERVER": server.target,
            "XFER_TOKEN": server.client_token,
            "XFER_CACHE": str(tmp_path / "cache"),
        }
        done = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, cwd=README.parent, timeout=240
        )
        assert done.returncode == 0, done.stderr
        accuracy = float(re.search(r"test accuracy (\d\.\d+)", done.stdout).group(1))
        assert 0.0 <= accuracy <= 1.0
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            runs = operator.list_runs(model="digits-convnet")
        assert [run.strategy for run in runs] == ["lp-ft"]
        assert runs[0].metrics["accuracy"] == accuracy or abs(runs[0].metrics["accuracy"] - accuracy) < 5e-4
    finally:
        server.stop()
