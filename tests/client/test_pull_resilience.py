"""Pulls that survive outages, refuse corrupt bytes, and share a cache between processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.client.server_process import blob_files, cli_env
from xfer.client.errors import DataLossError, TooManyStreamsError, UnavailableError
from xfer.client.transport import RetryPolicy


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_resume_after_the_server_is_killed_mid_pull(new_server, big_model_dir, tmp_path):
    server = new_server(chunk_size=4096)
    with server.client(tmp_path / "op", token="operator") as op:
        op.register(big_model_dir, "resume-model")
    expected = sha256(big_model_dir / "model.safetensors")
    size = (big_model_dir / "model.safetensors").stat().st_size
    cache = tmp_path / "cache"

    def kill_after_some_bytes(done: int, total: int) -> None:
        if done >= 64 * 1024:
            server.kill()

    with server.client(cache) as xfer:
        with pytest.raises(UnavailableError):
            xfer.pull("resume-model", progress=kill_after_some_bytes)
    partial = cache / "partial" / f"{expected}.partial"
    kept = partial.stat().st_size
    assert 64 * 1024 <= kept < size
    assert not (cache / "blobs" / expected).exists()  # nothing unverified is visible

    server.start()  # same data dir, new port
    with server.client(cache) as xfer:
        result = xfer.pull("resume-model")
    assert result.resumed_from == kept > 0
    assert result.transferred_bytes == size - kept
    assert sha256(result.blob_path) == expected and not partial.exists()


def test_resume_from_a_half_partial_and_restart_on_bad_partials(xfer_server, model_dir, tmp_path):
    data = (model_dir / "model.safetensors").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    for name, content, resumed, restarts in [
        ("half", data[: len(data) // 2], len(data) // 2, 0),
        # Garbage of the right length prefix: the digest check fails, the pull starts over once.
        ("garbage", b"\xff" * (len(data) // 2), len(data) // 2, 1),
        # Longer than the artifact: discarded up front.
        ("too-long", data + b"extra", 0, 0),
    ]:
        cache = tmp_path / name
        (cache / "partial").mkdir(parents=True)
        (cache / "partial" / f"{digest}.partial").write_bytes(content)
        with xfer_server.client(cache) as xfer:
            result = xfer.pull("digits-convnet:1")
        assert (result.resumed_from, result.restarts) == (resumed, restarts), name
        assert sha256(result.blob_path) == digest, name
        expected_transfer = len(data) - resumed if restarts == 0 else len(data) * 2 - resumed
        assert result.transferred_bytes == expected_transfer, name


def test_corrupt_blob_on_the_server_gives_a_clear_error_and_no_cached_file(new_server, model_dir, tmp_path):
    server = new_server()
    with server.client(tmp_path / "op", token="operator") as op:
        version = op.register(model_dir, "corrupt-model")
    digest = version.artifact("safetensors").sha256
    (blob,) = [p for p in blob_files(server) if p.name == digest]
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte: same size, different digest
    blob.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with server.client(cache) as xfer:
        with pytest.raises(DataLossError) as info:
            xfer.pull("corrupt-model", "safetensors")
    assert isinstance(info.value, IOError) and "corrupt" in str(info.value)
    assert not (cache / "blobs" / digest).exists()
    assert not (cache / "partial" / f"{digest}.partial").exists()


def test_two_processes_pulling_at_once_end_with_one_correct_file(xfer_server, model_dir, tmp_path):
    from xfer.client.cache import Cache

    cache = Cache(tmp_path / "shared-cache")
    digest = sha256(model_dir / "model.safetensors")
    env = cli_env(xfer_server, cache.root, xfer_server.client_token)
    command = [sys.executable, "-m", "xfer.client.cli", "-v", "pull", "digits-convnet:1", "--json"]
    # Hold the digest's lock until both processes say they wait for it: both are provably inside pull.
    with cache.lock(digest):
        procs = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        waiting = [threading.Event() for _ in procs]
        logs: list[list[str]] = [[] for _ in procs]

        def watch(i: int) -> None:
            for line in procs[i].stderr:
                logs[i].append(line)
                if "waiting for it" in line:
                    waiting[i].set()

        watchers = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(len(procs))]
        for w in watchers:
            w.start()
        for i, event in enumerate(waiting):
            assert event.wait(timeout=60), f"pull {i} never waited for the lock: {''.join(logs[i])}"
    results = []
    for i, proc in enumerate(procs):
        out = proc.stdout.read()
        proc.wait(timeout=120)
        watchers[i].join(timeout=10)
        assert proc.returncode == 0, "".join(logs[i])
        results.append(json.loads(out))
    size = (model_dir / "model.safetensors").stat().st_size
    # One process downloads; the other, once it has the lock, finds the verified blob.
    assert sorted(r["transferred_bytes"] for r in results) == [0, size]
    blobs = list((cache.root / "blobs").iterdir())
    assert len(blobs) == 1 and sha256(blobs[0]) == digest == results[0]["sha256"] == results[1]["sha256"]
    assert not list((cache.root / "partial").iterdir())


def test_unavailable_is_retried_and_a_pull_resumes_within_one_call(new_server, big_model_dir, tmp_path):
    from tests.conftest import free_port

    server = new_server(chunk_size=4096, port=free_port())
    with server.client(tmp_path / "op", token="operator") as op:
        op.register(big_model_dir, "retry-model")
    size = (big_model_dir / "model.safetensors").stat().st_size
    patient = RetryPolicy(max_attempts=60, initial_backoff=0.1, max_backoff=0.5)
    restarter: list[threading.Thread] = []

    def outage_after_some_bytes(done: int, total: int) -> None:
        if done >= 64 * 1024 and not restarter:
            server.kill()
            restarter.append(threading.Thread(target=server.start))
            restarter[0].start()  # back on the same port a few seconds later

    with server.client(tmp_path / "cache", retry=patient) as xfer:
        result = xfer.pull("retry-model", progress=outage_after_some_bytes)
        restarter[0].join()
        # Every byte crossed the wire once: the retries resumed, they did not start over.
        assert result.transferred_bytes == size and result.restarts == 0
        assert sha256(result.blob_path) == result.sha256
        server.kill()
        with pytest.raises(UnavailableError):
            xfer.list_models()  # down: retried by gRPC's retryPolicy, then a typed error
        server.start()
        assert "retry-model" in [m.model for m in _once_reconnected(xfer.list_models)]


def _once_reconnected(call, *, within: float = 15.0):
    # The channel reconnects on its own backoff (at most ~1 s here); the same client recovers.
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_cached_reference_still_loads_while_the_server_is_down(new_server, model_dir, tmp_path):
    server = new_server()
    with server.client(tmp_path / "op", token="operator") as op:
        op.register(model_dir, "offline-model")
    cache = tmp_path / "cache"
    with server.client(cache) as xfer:
        online = xfer.load_torch("offline-model")
        server.kill()
        offline = xfer.load_torch("offline-model")  # same ref, served from the cache
        assert offline.model_version.name == online.model_version.name and offline.card == online.card
        assert offline.path == online.path
        with pytest.raises(UnavailableError):
            xfer.pull("offline-model", "onnx")  # never pulled: needs the server
        with pytest.raises(UnavailableError):
            xfer.pull("offline-model:2")


def _hold_a_pull_slot(server, version_name: str):
    """Opens a ReadArtifact with the client token and never reads it: the stream stays open, holding a slot."""
    import grpc

    from xfer.v1 import transfer_service_pb2 as ts
    from xfer.v1 import transfer_service_pb2_grpc as tsg

    # No BDP probing: the window stays small, so the 4.5 MB artifact cannot all be sent and the stream waits.
    channel = grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
    call = tsg.TransferServiceStub(channel).ReadArtifact(
        ts.ReadArtifactRequest(name=version_name, format=1),  # SAFETENSORS
        metadata=(("authorization", f"Bearer {server.client_token}"),),
        timeout=120,
    )
    return channel, call


def test_a_pull_waits_out_a_full_server_as_its_retry_hint_says(new_server, big_model_dir, tmp_path, caplog):
    server = new_server(extra_args=("--max-reads-per-token", "1"))
    with server.client(tmp_path / "op", token="operator") as op:
        version = op.register(big_model_dir, "queued-model")
    channel, held = _hold_a_pull_slot(server, version.name)
    try:
        with server.client(tmp_path / "refused", retry=RetryPolicy(max_attempts=1)) as xfer:
            with pytest.raises(TooManyStreamsError) as refused:
                xfer.pull("queued-model")
        assert refused.value.retry_after == 2.0 and refused.value.reason == "STREAM_LIMIT"

        threading.Timer(1.0, held.cancel).start()  # the slot frees while the next pull waits
        with caplog.at_level("INFO", logger="xfer.client.download"):
            with server.client(tmp_path / "queued") as xfer:
                result = xfer.pull("queued-model")
    finally:
        held.cancel()
        channel.close()
    assert sha256(result.blob_path) == sha256(big_model_dir / "model.safetensors")
    waits = [r.getMessage() for r in caplog.records if "no pull slot free" in r.getMessage()]
    assert waits, "the pull never met the full server"
    # The RetryInfo delay (2 s) is honoured, with up to half of it again as jitter.
    assert all(2.0 <= float(w.rsplit("again in ", 1)[1].rstrip("s")) <= 3.0 for w in waits)
