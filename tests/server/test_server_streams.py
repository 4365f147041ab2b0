"""Clients that stall cannot freeze the server: asyncio streams, stall timeouts, per-token stream limits.

The hostile clients run in a separate process where it matters (a real
client that opens streams and never reads them), against a real in-process
server on port 0.
"""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_testkit import SAFETENSORS, Stubs, bearer, load_card, rpc_error, store_artifact

from xfer.client.errors import TooManyStreamsError, details_of, from_rpc_error
from xfer.server.app import READ_METHOD, RunningServer
from xfer.server.convert import card_to_proto
from xfer.server.interceptors import UPLOAD_METHOD
from xfer.v1 import registry_service_pb2 as rs
from xfer.v1 import transfer_service_pb2 as ts

pytestmark = pytest.mark.timeout(180)
MIB = 1024 * 1024
#: A client that never grows its HTTP/2 flow-control window (BDP probing off) and never reads: the server can
#: send it a few chunks at most, then its writes wait. (With BDP on, grpc's client library may buffer a whole
#: artifact in memory without the application reading, which would not stall anything.)
STALLING = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 8 * 1024 * 1024)]
BIG = 32 * MIB
VERSION = "models/big/versions/1"


def _register_big_blob(running: RunningServer, source_model_dir: Path) -> str:
    """A 32 MiB artifact put straight into storage (no validation needed to test streaming); returns its sha256."""
    block = os.urandom(MIB)
    return store_artifact(running, source_model_dir, "big", (block for _ in range(BIG // MIB)), size=BIG)


def _active(running: RunningServer, method: str) -> float:
    return running.metrics.registry.get_sample_value("xfer_active_streams", {"method": method}) or 0.0


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


STALLED_READERS = """
import sys, time, grpc
from xfer.v1 import transfer_service_pb2 as ts, transfer_service_pb2_grpc as tsg
target, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
channels = [grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) for _ in range(count // 50 + 1)]
calls = [tsg.TransferServiceStub(channels[i % len(channels)]).ReadArtifact(
    ts.ReadArtifactRequest(name="models/big/versions/1", format=1), metadata=[("authorization", "Bearer " + token)])
    for i in range(count)]
print("opened", flush=True)
time.sleep(600)  # never reads
"""


def _stalled_readers(target: str, token: str, count: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED_READERS, target, token, str(count)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "opened"
    return proc


def _health_ms(channel: grpc.Channel) -> float:
    started = time.perf_counter()
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    return (time.perf_counter() - started) * 1000


def _pull_sha(stubs: Stubs) -> str:
    digest = hashlib.sha256()
    for response in stubs.transfer.ReadArtifact(
        ts.ReadArtifactRequest(name=VERSION, format=SAFETENSORS), metadata=stubs.md, timeout=60
    ):
        digest.update(response.data)
    return digest.hexdigest()


def test_sixteen_stalled_readers_do_not_freeze_anyone_else(start_server, tokens, source_model_dir) -> None:
    """The issue's attack: 16 ReadArtifact streams opened and never read, by a client token.

    With 4 worker threads (the sync server used one thread per stream, so 16
    stalled streams were enough to freeze it), health, GetModelVersion and
    another client's full pull still answer promptly.
    """
    running = start_server(token_file=tokens.file, max_workers=4)
    sha = _register_big_blob(running, source_model_dir)
    stalled = _stalled_readers(running.target, tokens.client, 16)
    try:
        _wait_for(lambda: _active(running, READ_METHOD) == 16)
        time.sleep(1.0)  # let every stalled stream fill its flow-control window and block
        with grpc.insecure_channel(running.target, options=[("grpc.max_receive_message_length", 8 * MIB)]) as channel:
            stubs = Stubs.on(channel, tokens.client)
            assert max(_health_ms(channel) for _ in range(20)) < 1000
            assert stubs.get(VERSION).name == VERSION
            assert _pull_sha(stubs) == sha  # another client's pull, same token, completes
        assert _active(running, READ_METHOD) == 16  # the stalled streams are still open, just not holding anyone
    finally:
        stalled.kill()
        stalled.wait()
    _wait_for(lambda: _active(running, READ_METHOD) == 0)


def test_twenty_stalled_uploads_do_not_freeze_anyone_else(start_server, tokens, source_model_dir) -> None:
    """20 uploads that send their header and then nothing; a 21st upload and every read still work."""
    running = start_server(token_file=tokens.file, max_workers=4, max_uploads_per_token=32, max_uploads=32)
    card = card_to_proto(load_card(source_model_dir))
    data = (source_model_dir / "model.safetensors").read_bytes()
    header = rs.CreateModelVersionRequest(
        header=rs.CreateModelVersionHeader(
            parent="models/stalled",
            card=card,
            artifacts=[
                rs.ArtifactDeclaration(
                    format=SAFETENSORS, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
                )
            ],
        )
    )
    release = threading.Event()
    outcomes: list[grpc.StatusCode] = []

    def stalled_upload(channel: grpc.Channel) -> None:
        def requests():
            yield header
            release.wait(120)

        try:
            Stubs.on(channel, tokens.operator).registry.CreateModelVersion(requests(), metadata=bearer(tokens.operator))
        except grpc.RpcError as exc:
            outcomes.append(exc.code())

    channel = grpc.insecure_channel(running.target)
    threads = [threading.Thread(target=stalled_upload, args=(channel,)) for _ in range(20)]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: _active(running, UPLOAD_METHOD) == 20)
        with grpc.insecure_channel(running.target) as other:
            stubs = Stubs.on(other, tokens.operator)
            assert max(_health_ms(other) for _ in range(20)) < 1000
            version = stubs.register("fresh", source_model_dir)  # the 21st upload goes through
            assert stubs.get(version.name).name == "models/fresh/versions/1"
    finally:
        release.set()  # the stalled generators end: their uploads are incomplete, so refused
        for thread in threads:
            thread.join(60)
        channel.close()
    assert outcomes == [grpc.StatusCode.INVALID_ARGUMENT] * 20  # "ended after 0 of its declared bytes"
    assert [p for p in running.registry.blobs.root.iterdir() if p.is_file()] == []


def test_a_stalled_reader_is_ended_and_frees_its_slot(start_server, tokens, source_model_dir) -> None:
    running = start_server(token_file=tokens.file, stall_timeout_s=1.0, max_reads_per_token=1)
    _register_big_blob(running, source_model_dir)
    with grpc.insecure_channel(running.target, options=STALLING) as channel:
        stubs = Stubs.on(channel, tokens.client)
        stalled = stubs.transfer.ReadArtifact(
            ts.ReadArtifactRequest(name=VERSION, format=SAFETENSORS), metadata=stubs.md, timeout=60
        )
        _wait_for(lambda: _active(running, READ_METHOD) == 1)
        _wait_for(lambda: _active(running, READ_METHOD) == 0, timeout=30)  # ended by the server, slot freed
        assert len(_pull_sha(stubs)) == 64  # the same token may read again (its one slot is free)
        err = rpc_error(lambda: [r for r in stalled])  # reading now: the buffered chunks, then the status
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "read nothing for 1 s" in err.details()
    assert details_of(err).reason == "STREAM_STALLED" and details_of(err).retry_after == 1.0


def test_a_stalled_upload_is_ended_and_leaves_nothing(start_server, tokens, source_model_dir) -> None:
    running = start_server(token_file=tokens.file, stall_timeout_s=1.0)
    data = (source_model_dir / "model.safetensors").read_bytes()
    header = rs.CreateModelVersionRequest(
        header=rs.CreateModelVersionHeader(
            parent="models/slow",
            card=card_to_proto(load_card(source_model_dir)),
            artifacts=[
                rs.ArtifactDeclaration(
                    format=SAFETENSORS, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
                )
            ],
        )
    )
    release = threading.Event()

    def requests():
        yield header
        yield rs.CreateModelVersionRequest(chunk=rs.ArtifactChunk(format=SAFETENSORS, data=data[:1000]))
        release.wait(30)

    with grpc.insecure_channel(running.target) as channel:
        try:
            err = rpc_error(
                lambda: Stubs.on(channel).registry.CreateModelVersion(
                    requests(), metadata=bearer(tokens.operator), timeout=30
                )
            )
        finally:
            release.set()
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "no upload data arrived for 1 s" in err.details()
    assert details_of(err).reason == "STREAM_STALLED"
    assert [p for p in running.registry.blobs.root.iterdir() if p.is_file()] == []
    assert running.registry.list_models().items == ()


def test_per_token_stream_limit_is_resource_exhausted_with_a_retry_hint(start_server, tokens, source_model_dir) -> None:
    running = start_server(token_file=tokens.file, max_reads_per_token=2)
    sha = _register_big_blob(running, source_model_dir)
    with grpc.insecure_channel(running.target, options=STALLING) as channel:
        client, operator = Stubs.on(channel, tokens.client), Stubs.on(channel, tokens.operator)
        held = [
            client.transfer.ReadArtifact(
                ts.ReadArtifactRequest(name=VERSION, format=SAFETENSORS), metadata=client.md, timeout=60
            )
            for _ in range(2)
        ]
        _wait_for(lambda: _active(running, READ_METHOD) == 2)
        err = rpc_error(lambda: _pull_sha(client))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "already has 2 artifact reads open" in err.details()
        assert details_of(err).reason == "STREAM_LIMIT" and details_of(err).retry_after == 2.0
        typed = from_rpc_error(err)
        assert isinstance(typed, TooManyStreamsError) and typed.retry_after == 2.0
        assert _pull_sha(operator) == sha  # another token is not affected
        held[0].cancel()
        _wait_for(lambda: _active(running, READ_METHOD) == 1)
        assert _pull_sha(client) == sha  # a freed slot can be used again
        held[1].cancel()


def test_server_wide_stream_limit(start_server, tokens, source_model_dir) -> None:
    running = start_server(token_file=tokens.file, max_reads=1)
    _register_big_blob(running, source_model_dir)
    with grpc.insecure_channel(running.target, options=STALLING) as channel:
        client, operator = Stubs.on(channel, tokens.client), Stubs.on(channel, tokens.operator)
        held = client.transfer.ReadArtifact(
            ts.ReadArtifactRequest(name=VERSION, format=SAFETENSORS), metadata=client.md, timeout=60
        )
        _wait_for(lambda: _active(running, READ_METHOD) == 1)
        err = rpc_error(lambda: _pull_sha(operator))
        assert (
            err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the server has 1 artifact reads open" in err.details()
        )
        held.cancel()


def test_a_server_out_of_file_descriptors_answers_stream_limit_not_internal(start_server, source_model_dir) -> None:
    # Each held stream keeps its blob open; with the open-file limit just above what the server uses,
    # new streams run out of descriptors (opening the blob, or duplicating it for a chunk read).
    running = start_server(max_reads=1000, max_reads_per_token=1000, chunk_size=64 * 1024)
    sha = _register_big_blob(running, source_model_dir)
    request = ts.ReadArtifactRequest(name=VERSION, format=SAFETENSORS, read_limit=1024 * 1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held, refused = [], []
    with grpc.insecure_channel(running.target, options=STALLING) as channel:
        stub = Stubs.on(channel).transfer
        assert len(b"".join(r.data for r in stub.ReadArtifact(request))) == 1024 * 1024  # connected, blob verified
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
        try:
            for _ in range(40):
                call = stub.ReadArtifact(request, timeout=60)
                try:
                    next(call)
                    held.append(call)
                except grpc.RpcError as exc:
                    refused.append(exc)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for call in held:
                call.cancel()
        assert held and refused, (len(held), len(refused))
        assert {err.code() for err in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}, refused[0].details()
        assert all("open-file limit" in err.details() for err in refused)
        assert details_of(refused[0]).reason == "STREAM_LIMIT" and details_of(refused[0]).retry_after == 2.0
        assert isinstance(from_rpc_error(refused[0]), TooManyStreamsError)  # so the SDK waits and retries
        _wait_for(lambda: _active(running, READ_METHOD) == 0)
        assert _pull_sha(Stubs.on(channel)) == sha  # and the server recovers by itself


def test_connections_are_recycled_at_their_maximum_age_and_a_pull_resumes(
    start_server, tokens, source_model_dir, tmp_path, caplog
) -> None:
    """A connection older than max_connection_age is closed (after its grace); a slow pull on it resumes."""
    import logging

    from xfer.client import Client, RetryPolicy

    caplog.set_level(logging.INFO, logger="xfer.client.download")
    running = start_server(
        token_file=tokens.file, max_connection_age_s=1.0, max_connection_age_grace_s=1.0, chunk_size=256 * 1024
    )
    sha = _register_big_blob(running, source_model_dir)

    def slowly(done: int, total: int) -> None:
        time.sleep(0.05)  # about 4 s for the whole artifact: longer than age + grace

    patient = RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.2)
    with Client(running.target, token=tokens.client, cache_dir=tmp_path / "cache", retry=patient) as xfer:
        result = xfer.pull("big:1", progress=slowly)
    assert result.sha256 == sha and hashlib.sha256(result.blob_path.read_bytes()).hexdigest() == sha
    assert result.transferred_bytes == BIG and result.restarts == 0
    assert "resuming models/big/versions/1 at byte" in caplog.text  # the connection really was recycled


def _closed_by_peer(conn: socket.socket, *, within: float) -> bool:
    """Reads (and drops) what the server sends, such as its SETTINGS, until it closes the connection."""
    conn.settimeout(within)
    try:
        while conn.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_flood_of_silent_connections_cannot_use_up_the_servers_files(spawn_server) -> None:
    """200 TCP connections that never send a byte (no TLS, no HTTP/2 preface), from one client.

    Without a cap each held a descriptor for gRPC's default 120 s handshake timeout, and a flood larger
    than the open-file limit made health checks time out for as long as it lasted. Now the server holds
    at most --max-connections of them, closes the rest at once and the held ones at the handshake timeout,
    and calls on a connection opened before the flood go on.
    """
    server = spawn_server("--max-connections", "8", "--handshake-timeout", "1", "--lazy-sandbox")
    host, port = server.target.rsplit(":", 1)
    files = lambda: len(os.listdir(f"/proc/{server.pid}/fd"))  # noqa: E731
    with grpc.insecure_channel(server.target) as established:
        _health_ms(established)
        before = files()
        flood = [socket.create_connection((host, int(port))) for _ in range(200)]
        try:
            time.sleep(0.3)
            assert files() <= before + 8, (before, files())
            assert max(_health_ms(established) for _ in range(10)) < 1000
            started = time.monotonic()
            assert all(_closed_by_peer(conn, within=10.0) for conn in flood)
            assert time.monotonic() - started < 5.0  # closed at the handshake timeout, not gRPC's 120 s
        finally:
            for conn in flood:
                conn.close()
        assert files() <= before
    with grpc.insecure_channel(server.target) as fresh:
        _health_ms(fresh)  # new connections are accepted again


def test_the_connection_cap_is_what_the_open_file_limit_leaves_after_the_streams() -> None:
    from xfer.server.config import ServerConfig
    from xfer.server.open_files import MIN_CONNECTIONS, connection_cap, open_file_limit, stream_files

    config = ServerConfig(data_dir=Path("."))
    limit = open_file_limit()
    assert limit is not None and stream_files(config) == 2 * 256 + 16 + 128
    assert connection_cap(config) == max(MIN_CONNECTIONS, limit - stream_files(config))
    assert connection_cap(ServerConfig(data_dir=Path("."), max_connections=5)) == 5
    assert connection_cap(ServerConfig(data_dir=Path("."), max_reads=10**6)) == MIN_CONNECTIONS
    with pytest.raises(ValueError, match="max_connections must be positive, got 0"):
        ServerConfig(data_dir=Path("."), max_connections=0)


def test_keepalive_and_connection_limits_are_configured() -> None:
    from xfer.server.app import _options
    from xfer.server.config import ServerConfig

    options = dict(_options(ServerConfig(data_dir=Path("."))))
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000  # clients may not ping more often
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.keepalive_time_ms"] == 60_000 and options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.max_connection_age_ms"] == 1_800_000 and options["grpc.max_connection_age_grace_ms"] == 300_000
    assert options["grpc.max_connection_idle_ms"] == 900_000 and options["grpc.max_concurrent_streams"] == 100
    assert (
        options["grpc.server_handshake_timeout_ms"] == 20_000 and options["grpc.max_allowed_incoming_connections"] > 0
    )
