"""`xfer` commands that work without a server: --version, cache ls/verify/prune, login storage, offline mode."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from xfer.client.cache import Cache
from xfer.client.cli.output import safe, table


def put_blob(cache: Path, data: bytes, *, model: str = "m1", version: int = 1) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (cache / "blobs").mkdir(parents=True, exist_ok=True)
    (cache / "blobs" / digest).write_bytes(data)
    Cache(cache).link_snapshot(model=model, version=version, filename="model.safetensors", sha256=digest)
    return digest


def test_version(run_cli):
    result = run_cli(None, "--version")
    assert result.code == 0 and result.out.startswith("xfer ")


def test_cache_ls_lists_models_and_partials(run_cli, tmp_path):
    cache = tmp_path / "cache"
    digest = put_blob(cache, b"weights" * 100)
    (cache / "partial").mkdir()
    (cache / "partial" / f"{'b' * 64}.partial").write_bytes(b"half")
    listing = json.loads(run_cli(None, "cache", "ls", "--json", cache_dir=cache).out)
    assert [(f["model"], f["version"], f["sha256"]) for f in listing["files"]] == [("m1", 1, digest)]
    assert [p["sha256"] for p in listing["partials"]] == ["b" * 64]
    assert listing["size_bytes"] == 700 + 4
    human = run_cli(None, "cache", "ls", cache_dir=cache)
    assert human.code == 0 and "m1" in human.out and "partial downloads" in human.out


def test_cache_verify_finds_and_removes_a_corrupt_blob(run_cli, tmp_path):
    cache = tmp_path / "cache"
    good = put_blob(cache, b"good")
    bad = put_blob(cache, b"bad", model="m2")
    (cache / "blobs" / bad).write_bytes(b"tampered")
    result = run_cli(None, "cache", "verify", cache_dir=cache)
    assert result.code == 11 and bad[:12] in result.err and "--remove-corrupt" in result.err
    assert (cache / "blobs" / bad).exists()
    result = run_cli(None, "cache", "verify", "--remove-corrupt", cache_dir=cache)
    assert result.code == 11 and not (cache / "blobs" / bad).exists() and (cache / "blobs" / good).exists()
    assert run_cli(None, "cache", "verify", cache_dir=cache).code == 0


def test_cache_prune_cleans_leftovers_and_keeps_models(run_cli, tmp_path):
    cache = tmp_path / "cache"
    kept = put_blob(cache, b"kept")
    dropped = put_blob(cache, b"dropped", model="other")
    orphan = hashlib.sha256(b"orphan").hexdigest()
    (cache / "blobs" / orphan).write_bytes(b"orphan")
    (cache / "partial").mkdir()
    (cache / "partial" / f"{'c' * 64}.partial").write_bytes(b"x" * 10)
    (cache / "locks").mkdir()
    (cache / "locks" / f"{kept}.lock").write_text("")
    report = json.loads(run_cli(None, "cache", "prune", "--json", cache_dir=cache).out)
    assert report["freed_bytes"] == 6 + 10 and not report["skipped_busy"]
    assert sorted(p.name for p in (cache / "blobs").iterdir()) == sorted([kept, dropped])
    assert not list((cache / "partial").iterdir()) and not list((cache / "locks").iterdir())
    run_cli(None, "cache", "prune", "--model", "other", cache_dir=cache)
    assert [p.name for p in (cache / "blobs").iterdir()] == [kept]
    assert not (cache / "snapshots" / "other").exists()
    assert run_cli(None, "cache", "prune", "--model", "Bad Id", cache_dir=cache).code == 3


def test_prune_skips_a_download_in_progress(tmp_path):
    cache = Cache(tmp_path / "cache")
    digest = "d" * 64
    cache.partial_path(digest).parent.mkdir(parents=True)
    cache.partial_path(digest).write_bytes(b"in flight")
    code = (
        "import sys, time; from xfer.client.cache import Cache; c = Cache(sys.argv[1]); "
        "l = c.lock(sys.argv[2]); l.__enter__(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(cache.root), digest], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        from xfer.client.cache_admin import prune_cache

        report = prune_cache(cache)
        assert report.skipped_busy == (digest,) and cache.partial_path(digest).exists()
    finally:
        holder.kill()
        holder.wait()
    assert prune_cache(cache).skipped_busy == () and not cache.partial_path(digest).exists()


def test_login_stores_the_token_owner_only_and_logout_forgets_it(run_cli, tmp_path, monkeypatch):
    config = tmp_path / "config"
    env = {"XFER_CONFIG_DIR": str(config), "XFER_SERVER": "edge.example:50051"}
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("s3cret-token\n"))
    result = run_cli(None, "login", "--token-stdin", "--no-verify", env=env)
    assert result.code == 0, result.err
    path = config / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["tokens"] == {"edge.example:50051": "s3cret-token"}
    assert "s3cret-token" not in result.out + result.err
    assert run_cli(None, "logout", env=env).code == 0
    assert json.loads(path.read_text())["tokens"] == {}


def test_empty_token_is_refused(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("\n"))
    result = run_cli(None, "login", "--token-stdin", "--no-verify", env={"XFER_CONFIG_DIR": str(tmp_path)})
    assert result.code == 3 and not (tmp_path / "credentials.json").exists()


def test_server_text_is_escaped_for_terminals():
    assert safe("ok\x1b[2Jgone\x07") == "ok\\x1b[2Jgone\\x07"
    assert "\x1b" not in table(["A"], [["\x1b]0;title\x07"]])


def test_the_cli_imports_no_torch():
    code = (
        "import sys, io; from xfer.client.cli import main; "
        "main(['--help'], stdout=io.StringIO()); main(['cache', 'ls'], stdout=io.StringIO()); "
        "bad = [m for m in ('torch', 'onnxruntime', 'onnx', 'opacus') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "XFER_CACHE": "/nonexistent-xfer-cache"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("argv", [["cache"], ["cache", "nope"], ["nope"]])
def test_usage_errors_are_one_line_exit_2(run_cli, argv):
    result = run_cli(None, *argv)
    assert result.code == 2 and result.err.count("\n") == 1 and result.err.startswith("xfer: error:")
