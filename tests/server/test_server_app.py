"""The assembled server: health, reflection, chunked reads, error mapping, start-up checks."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from server_testkit import SAFETENSORS, Stubs, rpc_error

from xfer.server.app import SERVICE_NAMES, ConfigError, create_server
from xfer.server.config import ServerConfig
from xfer.v1 import registry_service_pb2 as rs

pytestmark = pytest.mark.timeout(120)


def test_health_and_reflection_need_no_token(start_server, tokens) -> None:
    running = start_server(token_file=tokens.file)
    with grpc.insecure_channel(running.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", *SERVICE_NAMES):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {
            "xfer.v1.RegistryService",
            "xfer.v1.TransferService",
            "xfer.v1.MetricsService",
            "grpc.health.v1.Health",
        } <= services


def test_health_turns_not_serving_on_shutdown(start_server) -> None:
    running = start_server()
    channel = grpc.insecure_channel(running.target)
    updates = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="xfer.v1.RegistryService")
    )
    assert next(updates).status == health_pb2.HealthCheckResponse.SERVING
    stopper = threading.Thread(target=running.stop, kwargs={"grace": 2})
    stopper.start()
    assert next(updates).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stopper.join()
    channel.close()


def test_reads_come_in_chunks_that_grow_to_the_chunk_size(start_server, source_model_dir: Path) -> None:
    from xfer.server.transfer import FIRST_CHUNK

    running = start_server(chunk_size=FIRST_CHUNK * 2)
    data = (source_model_dir / "model.safetensors").read_bytes()
    with grpc.insecure_channel(running.target) as channel:
        stubs = Stubs.on(channel)
        stubs.register("digits", source_model_dir)
        result = stubs.read("models/digits/versions/1", SAFETENSORS, offset=100)
        sizes = [len(r.data) for r in result.responses]
        assert sizes[0] == FIRST_CHUNK and all(s == 2 * FIRST_CHUNK for s in sizes[1:-1])
        assert 0 < sizes[-1] <= 2 * FIRST_CHUNK
        assert [r.offset for r in result.responses] == [100 + sum(sizes[:i]) for i in range(len(sizes))]
        assert result.data == data[100:]
        assert [bool(r.sha256) for r in result.responses] == [True] + [False] * (len(sizes) - 1)
        limited = stubs.read("models/digits/versions/1", SAFETENSORS, offset=10, limit=5000)
        assert limited.data == data[10:5010] and limited.first.total_size_bytes == len(data)


def test_unexpected_errors_are_internal_with_a_generic_message(start_server, caplog) -> None:
    running = start_server()

    def broken(name: str):
        raise ZeroDivisionError("secret internal detail")

    running.registry.get_version = broken  # the servicer holds this very object
    caplog.set_level(logging.ERROR)
    with grpc.insecure_channel(running.target) as channel:
        err = rpc_error(lambda: Stubs.on(channel).get("models/digits/versions/1"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "internal server error" in err.details() and "secret" not in err.details()
    request_id = err.details().split("request id ")[1].rstrip(")")
    assert request_id in caplog.text and "ZeroDivisionError" in caplog.text


def test_refuses_non_loopback_without_tokens(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="without authentication: pass --token-file"):
        create_server(ServerConfig(data_dir=data_dir, host="0.0.0.0", port=0))


def test_refuses_a_missing_token_file(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        create_server(ServerConfig(data_dir=data_dir, port=0, token_file=data_dir / "nope.json"))


def test_refuses_a_port_in_use(start_server, tmp_path: Path) -> None:
    running = start_server()
    with pytest.raises(ConfigError, match="cannot listen"):
        create_server(ServerConfig(data_dir=tmp_path / "other", port=running.port))


def test_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both a certificate and a key"):
        ServerConfig(data_dir=tmp_path, tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="chunk_size"):
        ServerConfig(data_dir=tmp_path, chunk_size=10)
    config = ServerConfig(data_dir=str(tmp_path))
    assert config.effective_db_url.endswith("xfer.db") and config.message_limit >= config.chunk_size


def test_message_limits_follow_the_chunk_size(start_server, source_model_dir: Path) -> None:
    running = start_server()
    limit = running.config.message_limit
    with grpc.insecure_channel(running.target) as channel:
        stubs = Stubs.on(channel)
        requests = iter(
            [rs.CreateModelVersionRequest(chunk=rs.ArtifactChunk(format=SAFETENSORS, data=b"\0" * (limit + 1)))]
        )
        err = rpc_error(lambda: stubs.registry.CreateModelVersion(requests, timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _peak_traced_bytes(action) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_artifact_size(start_server, source_model_dir: Path) -> None:
    """A 48 MiB artifact is read and a 48 MiB upload is received with a few MiB of Python memory.

    tracemalloc sees every bytes object the server creates, so buffering an
    artifact (a list of chunks, a b"".join) would show up as a 48 MiB peak.
    The shared chunk cache may hold its configured 8 MiB on top.
    """
    import hashlib
    import os

    from server_testkit import load_card, store_artifact

    from xfer.server.convert import card_to_proto
    from xfer.v1 import transfer_service_pb2 as ts

    size = 48 * 1024 * 1024
    cache_bytes = 8 * 1024 * 1024
    running = start_server(chunk_cache_bytes=cache_bytes)
    block = os.urandom(1024 * 1024)
    sha = store_artifact(running, source_model_dir, "big", (block for _ in range(size // len(block))), size=size)
    with grpc.insecure_channel(running.target, options=[("grpc.max_receive_message_length", 8 << 20)]) as channel:
        stubs = Stubs.on(channel)

        def read() -> None:
            digest, total = hashlib.sha256(), 0
            request = ts.ReadArtifactRequest(name="models/big/versions/1", format=SAFETENSORS)
            for response in stubs.transfer.ReadArtifact(request):
                digest.update(response.data)
                total += len(response.data)
            assert total == size and digest.hexdigest() == sha

        assert _peak_traced_bytes(read) < cache_bytes + 12 * 1024 * 1024

        def upload() -> None:
            header = rs.CreateModelVersionRequest(
                header=rs.CreateModelVersionHeader(
                    parent="models/big-upload",
                    card=card_to_proto(load_card(source_model_dir)),
                    artifacts=[rs.ArtifactDeclaration(format=SAFETENSORS, size_bytes=size, sha256="0" * 64)],
                )
            )
            chunk = rs.CreateModelVersionRequest(chunk=rs.ArtifactChunk(format=SAFETENSORS, data=block))
            err = rpc_error(
                lambda: stubs.registry.CreateModelVersion(iter([header] + [chunk] * (size // len(block))), timeout=60)
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "sha256 mismatch" in err.details()

        assert _peak_traced_bytes(upload) < 12 * 1024 * 1024
        assert [
            p for p in running.registry.blobs.root.iterdir() if p.is_file()
        ] == []  # the rejected upload's temp file is gone
