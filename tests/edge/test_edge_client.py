"""The base install is a working edge client: list, show, pull, verify, resume, cache, sign — without torch."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xfer.client import Client
from xfer.client.signing import generate_key

XFER = Path(sys.executable).with_name("xfer")
#: What an edge device must never need to load.
HEAVY = ("torch", "onnxruntime", "onnx", "opacus", "sqlalchemy", "safetensors", "sklearn")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def registered(server, source_folder, tmp_path_factory):
    """The source registered (signed) through the edge SDK: registering streams files, no torch needed."""
    process, operator, _ = server
    keys = tmp_path_factory.mktemp("keys")
    generate_key(keys, name="operator")
    with Client(process.target, token=operator, cache_dir=tmp_path_factory.mktemp("op")) as op:
        version = op.register(source_folder, "edge-mlp", signing_key=keys / "operator.key")
    return version, keys / "operator.pub"


def cli(server, *argv: str, cache: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    process, _, client_token = server
    env = {
        **os.environ,
        "XFER_SERVER": process.target,
        "XFER_TOKEN": client_token,
        "XFER_CACHE": str(cache),
        **(extra_env or {}),
    }
    return subprocess.run([str(XFER), *argv], capture_output=True, text=True, env=env, timeout=120)


def test_this_environment_has_no_torch_when_it_is_the_edge_install():
    if not os.environ.get("XFER_EDGE_SERVER_PYTHON"):
        pytest.skip("running in the full environment (make test-edge runs this in the base install)")
    for module in HEAVY:
        assert importlib.util.find_spec(module) is None, f"{module} is installed in the base environment"


def test_sdk_pulls_verifies_resumes_and_caches(server, registered, source_folder, tmp_path):
    version, public_key = registered
    process, _, client_token = server
    with Client(
        process.target, token=client_token, cache_dir=tmp_path, trusted_keys=[public_key], require_signed=True
    ) as xfer:
        assert "edge-mlp" in [m.model for m in xfer.list_models()]
        first = xfer.pull("edge-mlp")
        assert first.transferred_bytes == first.size_bytes and sha256(first.path) == first.sha256
        assert first.sha256 == sha256(source_folder / "model.safetensors")
        again = xfer.pull("edge-mlp")
        assert again.cache_hit and again.transferred_bytes == 0
        onnx = xfer.pull("edge-mlp", "onnx")
        half = onnx.size_bytes // 2
        onnx.blob_path.unlink()
        partial = tmp_path / "partial" / f"{onnx.sha256}.partial"
        partial.parent.mkdir(exist_ok=True)
        partial.write_bytes((source_folder / "model.onnx").read_bytes()[:half])
        resumed = xfer.pull("edge-mlp", "onnx")
        assert resumed.resumed_from == half and resumed.transferred_bytes == onnx.size_bytes - half
        assert sha256(resumed.blob_path) == onnx.sha256


def test_cli_models_show_pull_and_cache(server, registered, tmp_path):
    listed = cli(server, "models", "--json", cache=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "edge-mlp" in [m["model"] for m in json.loads(listed.stdout)]
    shown = cli(server, "show", "edge-mlp", cache=tmp_path, extra_env={"XFER_TRUSTED_KEYS": str(registered[1])})
    assert shown.returncode == 0 and "mlp" in shown.stdout and "valid, by trusted key" in shown.stdout
    pulled = cli(
        server, "pull", "edge-mlp", "--json", "--require-signed", "--trusted-keys", str(registered[1]), cache=tmp_path
    )
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["transferred_bytes"] > 0
    assert cli(server, "cache", "verify", cache=tmp_path).returncode == 0
    offline = cli(server, "pull", "edge-mlp", "--json", cache=tmp_path, extra_env={"XFER_OFFLINE": "1"})
    assert offline.returncode == 0 and json.loads(offline.stdout)["cache_hit"]
    finetune = cli(server, "finetune", "edge-mlp", "digits", "--out", str(tmp_path / "adapted"), cache=tmp_path)
    if importlib.util.find_spec("torch") is None:
        assert finetune.returncode == 12 and "xfer[finetune]" in finetune.stderr  # a clear "install the extra"
    else:
        assert finetune.returncode == 0, finetune.stderr


def test_importing_and_running_the_client_loads_nothing_heavy(server, registered, tmp_path):
    process, _, client_token = server
    code = f"""
import io, sys
from xfer.client import Client
from xfer.client.cli import main
with Client({process.target!r}, token={client_token!r}, cache_dir={str(tmp_path)!r}) as xfer:
    xfer.pull("edge-mlp"); xfer.pull("edge-mlp", "onnx"); xfer.get("edge-mlp")
for argv in (["models"], ["show", "edge-mlp"], ["pull", "edge-mlp"], ["cache", "ls"]):
    assert main(argv, environ={{"XFER_SERVER": {process.target!r}, "XFER_TOKEN": {client_token!r},
                                 "XFER_CACHE": {str(tmp_path)!r}}}, stdout=io.StringIO()) == 0, argv
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
