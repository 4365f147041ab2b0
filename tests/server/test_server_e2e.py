"""End-to-end: a real server (in-process on port 0, and as a subprocess) driven over gRPC."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import grpc
import pytest
from server_testkit import ONNX, SAFETENSORS, Stubs, rpc_error

from xfer.v1 import registry_service_pb2 as rs

pytestmark = pytest.mark.timeout(180)


def _lifecycle(stubs: Stubs, source_model_dir: Path) -> None:
    """register -> list -> get -> read with resume -> aliases -> deprecate -> delete."""
    safetensors = (source_model_dir / "model.safetensors").read_bytes()
    v1 = stubs.register("digits", source_model_dir)
    assert v1.name == "models/digits/versions/1" and v1.version == 1
    assert v1.aliases == ["latest"]
    formats = {a.format: a for a in v1.artifacts}
    assert formats[SAFETENSORS].sha256 == hashlib.sha256(safetensors).hexdigest()
    assert formats[SAFETENSORS].size_bytes == len(safetensors)
    assert not formats[ONNX].derived
    assert v1.card.architecture == "convnet" and v1.card.output.num_classes == 10
    assert v1.card.architecture_config["width"] == 16

    # A safetensors-only upload: the server derives the ONNX itself.
    v2 = stubs.register("digits", source_model_dir, onnx=False)
    assert v2.version == 2 and {a.format: a.derived for a in v2.artifacts} == {SAFETENSORS: False, ONNX: True}

    models = stubs.registry.ListModels(rs.ListModelsRequest(), metadata=stubs.md).models
    assert [m.name for m in models] == ["models/digits"]
    assert models[0].latest_version == "models/digits/versions/2" and models[0].version_count == 2
    assert dict(models[0].aliases) == {"latest": 2}
    versions = stubs.registry.ListModelVersions(
        rs.ListModelVersionsRequest(parent="models/digits"), metadata=stubs.md
    ).model_versions
    assert [v.version for v in versions] == [2, 1]

    assert stubs.get("models/digits/versions/latest").version == 2
    assert stubs.get("models/digits/versions/1").card == v1.card

    # Read with resume: first half, then from the middle; the concatenation is the file.
    whole = stubs.read("models/digits/versions/1", SAFETENSORS)
    assert whole.data == safetensors
    assert whole.first.total_size_bytes == len(safetensors)
    assert whole.first.sha256 == hashlib.sha256(safetensors).hexdigest()
    assert whole.first.model_version == "models/digits/versions/1"
    middle = len(safetensors) // 2
    head = stubs.read("models/digits/versions/latest", SAFETENSORS, limit=middle)
    tail = stubs.read("models/digits/versions/latest", SAFETENSORS, offset=middle)
    assert tail.first.offset == middle and tail.first.model_version == "models/digits/versions/2"
    assert head.data + tail.data == safetensors
    assert hashlib.sha256(head.data + tail.data).hexdigest() == tail.first.sha256
    onnx = stubs.read("models/digits/versions/2", ONNX)
    assert hashlib.sha256(onnx.data).hexdigest() == onnx.first.sha256

    # Aliases: stable is set and moved; latest follows new versions.
    stable = stubs.registry.SetAlias(
        rs.SetAliasRequest(name="models/digits/versions/1", alias="stable"), metadata=stubs.md
    ).model_version
    assert sorted(stable.aliases) == ["stable"]
    assert stubs.get("models/digits/versions/stable").version == 1
    stubs.registry.SetAlias(rs.SetAliasRequest(name="models/digits/versions/2", alias="stable"), metadata=stubs.md)
    assert stubs.get("models/digits/versions/stable").version == 2
    assert sorted(stubs.get("models/digits/versions/2").aliases) == ["latest", "stable"]
    assert list(stubs.get("models/digits/versions/1").aliases) == []
    v3 = stubs.register("digits", source_model_dir)
    assert v3.version == 3 and list(v3.aliases) == ["latest"]

    deprecated = stubs.registry.DeprecateModelVersion(
        rs.DeprecateModelVersionRequest(name="models/digits/versions/1", message="use @stable"), metadata=stubs.md
    ).model_version
    assert deprecated.deprecated and deprecated.deprecation_message == "use @stable"
    assert stubs.get("models/digits/versions/1").deprecated
    assert stubs.read("models/digits/versions/1", SAFETENSORS).data == safetensors  # still readable

    # Delete the newest: latest falls back to 2; the number 3 is not reused.
    stubs.registry.DeleteModelVersion(rs.DeleteModelVersionRequest(name="models/digits/versions/3"), metadata=stubs.md)
    err = rpc_error(lambda: stubs.get("models/digits/versions/3"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert stubs.get("models/digits/versions/latest").version == 2
    assert stubs.register("digits", source_model_dir).version == 4


def test_lifecycle_in_process(start_server, tokens, source_model_dir: Path) -> None:
    running = start_server(token_file=tokens.file)
    with grpc.insecure_channel(running.target) as channel:
        _lifecycle(Stubs.on(channel, tokens.operator), source_model_dir)
        # A client token can read what the operator registered.
        client = Stubs.on(channel, tokens.client)
        assert client.get("models/digits/versions/latest").version == 4


def test_lifecycle_subprocess(spawn_server, tokens, source_model_dir: Path) -> None:
    server = spawn_server("--token-file", str(tokens.file))
    with grpc.insecure_channel(server.target) as channel:
        _lifecycle(Stubs.on(channel, tokens.operator), source_model_dir)
    # Uploads were validated, yet torch and onnxruntime live only in the sandbox's processes.
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "libtorch" not in maps and "onnxruntime" not in maps
    workers = subprocess.run(
        ["pgrep", "-P", str(server.pid), "-f", "sandbox_worker"], capture_output=True, text=True
    ).stdout.split()
    assert workers and "libtorch" in Path(f"/proc/{workers[0]}/maps").read_text()
    # Teardown sends SIGTERM and asserts exit code 0.


@pytest.mark.postgres
def test_lifecycle_on_postgresql(start_server, tokens, postgres_url, source_model_dir: Path) -> None:
    running = start_server(token_file=tokens.file, db_url=postgres_url)
    assert running.engine.dialect.name == "postgresql"
    with grpc.insecure_channel(running.target) as channel:
        _lifecycle(Stubs.on(channel, tokens.operator), source_model_dir)


def test_run_reports_resolve_aliases_through_the_registry(start_server, tokens, source_model_dir: Path) -> None:
    from xfer.v1 import metrics_service_pb2 as ms
    from xfer.v1 import metrics_service_pb2_grpc

    running = start_server(token_file=tokens.file)
    with grpc.insecure_channel(running.target) as channel:
        Stubs.on(channel, tokens.operator).register("digits", source_model_dir)
        metrics = metrics_service_pb2_grpc.MetricsServiceStub(channel)
        client_md = [("authorization", f"Bearer {tokens.client}")]
        run = ms.Run(
            run_id="run-1",
            model_version="models/digits/versions/latest",
            strategy=ms.Strategy(name="linear-probe"),
            metrics={"accuracy": 0.9},
            train_examples_pow2=256,
            device_kind=ms.DEVICE_KIND_CPU,
            wall_seconds=1.5,
        )
        stored = metrics.ReportRun(ms.ReportRunRequest(run=run), metadata=client_md).run
        assert stored.model_version == "models/digits/versions/1"
        run.model_version = "models/nope/versions/latest"
        run.run_id = "run-2"
        err = rpc_error(lambda: metrics.ReportRun(ms.ReportRunRequest(run=run), metadata=client_md))
        assert err.code() == grpc.StatusCode.NOT_FOUND


def test_concurrent_uploads_get_distinct_versions(start_server, source_model_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    running = start_server()
    with grpc.insecure_channel(running.target) as channel:
        stubs = Stubs.on(channel)
        with ThreadPoolExecutor(4) as pool:
            # Half without ONNX, so server-side derivations run concurrently too.
            versions = list(
                pool.map(lambda i: stubs.register("busy", source_model_dir, onnx=i % 2 == 0).version, range(4))
            )
        assert sorted(versions) == [1, 2, 3, 4]
        assert stubs.get("models/busy/versions/latest").version == 4
