"""Operators can see it: the Prometheus endpoint, and JSON log lines that carry each call's request id."""

from __future__ import annotations

import json
import re
import urllib.request

import grpc
import pytest
from server_testkit import SAFETENSORS, Stubs, load_card, model_artifacts, rpc_error, upload_requests

from xfer.server.process import ServerProcess
from xfer.v1 import registry_service_pb2 as rs

pytestmark = pytest.mark.timeout(180)
GET = "/xfer.v1.RegistryService/GetModelVersion"
CREATE = "/xfer.v1.RegistryService/CreateModelVersion"
READ = "/xfer.v1.TransferService/ReadArtifact"


def _scrape(port: int) -> dict[str, float]:
    """name{labels} -> value from the text exposition format."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def _sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when absent)."""
    for key, value in samples.items():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})?", key)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return value
    return 0.0


def test_prometheus_endpoint_counts_calls_bytes_validation_and_rejections(start_server, source_model_dir) -> None:
    running = start_server(metrics_port=0)
    assert running.metrics_port
    size = (source_model_dir / "model.safetensors").stat().st_size
    with grpc.insecure_channel(running.target) as channel:
        stubs = Stubs.on(channel)
        stubs.register("digits", source_model_dir)
        assert stubs.get("models/digits/versions/1").name
        rpc_error(lambda: stubs.get("models/nope/versions/1"))
        assert len(stubs.read("models/digits/versions/1", SAFETENSORS).data) == size
        artifacts = model_artifacts(source_model_dir)
        artifacts[0].declared_sha256 = "0" * 64
        rpc_error(lambda: stubs.upload(model="bad", card=load_card(source_model_dir), artifacts=artifacts))
    samples = _scrape(running.metrics_port)
    assert _sample(samples, "xfer_rpc_requests_total", method=GET, code="OK") == 1
    assert _sample(samples, "xfer_rpc_requests_total", method=GET, code="NOT_FOUND") == 1
    assert _sample(samples, "xfer_rpc_duration_seconds_count", method=GET, code="OK") == 1
    assert _sample(samples, "xfer_rpc_duration_seconds_bucket", method=GET, code="OK", le="+Inf") == 1
    assert _sample(samples, "xfer_artifact_bytes_served_total", format="safetensors") == size
    assert _sample(samples, "xfer_upload_bytes_received_total") > 2 * size
    assert _sample(samples, "xfer_validation_duration_seconds_count", job="artifacts", outcome="ok") == 1
    assert _sample(samples, "xfer_validation_duration_seconds_count", job="card", outcome="ok") == 2
    assert _sample(samples, "xfer_upload_rejections_total", reason="DIGEST_MISMATCH") == 1
    assert _sample(samples, "xfer_active_streams", method=READ) == 0
    assert _sample(samples, "xfer_database_up") == 1


def test_json_logs_carry_the_request_id_on_every_line_of_a_call(tmp_path, source_model_dir) -> None:
    """Lines written in the event loop and in worker threads alike carry the call's id (the caller's, here)."""
    with ServerProcess(data_dir=tmp_path / "data", args=("--log-format", "json")) as server:
        with grpc.insecure_channel(server.target) as channel:
            stubs = Stubs.on(channel)
            requests = upload_requests(
                parent="models/digits", card=load_card(source_model_dir), artifacts=model_artifacts(source_model_dir)
            )
            stubs.registry.CreateModelVersion(requests, metadata=[("x-request-id", "upload-1")], timeout=120)
            err = rpc_error(
                lambda: stubs.registry.GetModelVersion(
                    rs.GetModelVersionRequest(name="models/nope/versions/1"), timeout=10
                )
            )
        returned_id = dict(err.trailing_metadata())["x-request-id"]
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message", "request_id"} <= set(line) for line in lines)
    upload = [line for line in lines if line["request_id"] == "upload-1"]
    loggers = {line["logger"] for line in upload}
    # the registry writes from a worker thread; the access line from the event loop
    assert {"xfer.server.registry", "xfer.server.access"} <= loggers
    assert any("created models/digits/versions/1" in line["message"] for line in upload)
    failed = [line for line in lines if line["request_id"] == returned_id]
    assert any("NOT_FOUND MODEL_NOT_FOUND" in line["message"] for line in failed)
