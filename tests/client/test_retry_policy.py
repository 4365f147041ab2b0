"""Unary retries come from gRPC's service-config retryPolicy: idempotent calls retry UNAVAILABLE, others never.

A real gRPC server on a real port implements the two methods and fails on purpose,
so the test sees exactly how many attempts reached the wire.
"""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest

from xfer.client import Client, RetryPolicy
from xfer.client.errors import InvalidArgumentError, UnavailableError
from xfer.v1 import registry_service_pb2 as pb
from xfer.v1 import registry_service_pb2_grpc as pb_grpc


class FlakyRegistry(pb_grpc.RegistryServiceServicer):
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = {"ListModels": 0, "DeleteModelVersion": 0}

    def _maybe_fail(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        if self.calls[method] <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded, try again")

    def ListModels(self, request, context):  # noqa: N802  (gRPC method name)
        self._maybe_fail("ListModels", context)
        return pb.ListModelsResponse()

    def DeleteModelVersion(self, request, context):  # noqa: N802
        self._maybe_fail("DeleteModelVersion", context)
        return pb.DeleteModelVersionResponse()


@pytest.fixture
def flaky():
    def start(failures: int):
        servicer = FlakyRegistry(failures)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append(server)
        return servicer, f"127.0.0.1:{port}"

    started: list[grpc.Server] = []
    yield start
    for server in started:
        server.stop(None)


FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)


def test_idempotent_call_is_retried_by_grpc(flaky, tmp_path):
    servicer, target = flaky(failures=3)
    with Client(target, cache_dir=tmp_path, retry=FAST) as xfer:
        assert xfer.list_models() == []
    assert servicer.calls["ListModels"] == 4


def test_retries_stop_at_max_attempts(flaky, tmp_path):
    servicer, target = flaky(failures=10)
    with Client(target, cache_dir=tmp_path, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as xfer:
        with pytest.raises(UnavailableError, match="overloaded"):
            xfer.list_models()
    assert servicer.calls["ListModels"] == 3


def test_delete_is_never_retried(flaky, tmp_path):
    servicer, target = flaky(failures=1)
    with Client(target, cache_dir=tmp_path, retry=FAST) as xfer:
        with pytest.raises(UnavailableError):
            xfer.delete("m1:1")
    assert servicer.calls["DeleteModelVersion"] == 1


def test_service_config_is_grpc_shaped():
    config = json.loads(RetryPolicy(max_attempts=60).service_config())
    (entry,) = config["methodConfig"]
    assert entry["retryPolicy"]["maxAttempts"] == 5  # gRPC's cap; the pull's own resume loop has none
    methods = {n["method"] for n in entry["name"]}
    assert "ReportRun" in methods and "DeleteModelVersion" not in methods
    assert json.loads(RetryPolicy(max_attempts=1).service_config()) == {"methodConfig": []}
    with pytest.raises(InvalidArgumentError):
        RetryPolicy(initial_backoff=0)


def test_a_server_retry_hint_is_a_floor_with_jitter_above_it():
    policy = RetryPolicy(max_backoff=0.5)
    waits = [policy.delay(0, server_hint=2.0) for _ in range(200)]
    assert all(2.0 <= w <= 3.0 for w in waits) and max(waits) - min(waits) > 0.2
    assert all(0 <= policy.delay(9) <= 0.5 for _ in range(50))  # without a hint: the capped backoff
    assert all(0 <= policy.delay(0, server_hint=0.0) <= 0.1 for _ in range(50))
    assert all(60.0 <= policy.delay(0, server_hint=1e9) <= 90.0 for _ in range(50))  # a server cannot park us


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_deadlines_must_be_positive_and_finite(tmp_path, bad) -> None:
    # A NaN or negative deadline would otherwise surface as "the server did not answer in time".
    with pytest.raises(InvalidArgumentError, match=r"^timeout must be a positive number of seconds"):
        Client("127.0.0.1:1", cache_dir=tmp_path, timeout=bad)
    with pytest.raises(InvalidArgumentError, match=r"^stream_timeout must be a positive number of seconds"):
        Client("127.0.0.1:1", cache_dir=tmp_path, stream_timeout=bad)
