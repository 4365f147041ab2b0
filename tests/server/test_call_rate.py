"""A token that calls too fast gets RATE_LIMITED with the wait; other tokens, health and the SDK carry on."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_testkit import Stubs, rpc_error, store_artifact

from xfer.client import Client
from xfer.client.errors import RateLimitedError, details_of, from_rpc_error
from xfer.server.config import ServerConfig
from xfer.server.errors import ResourceExhausted
from xfer.server.limits import CallRateLimiter
from xfer.v1 import registry_service_pb2 as rs


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_allows_its_burst_then_its_rate_per_key() -> None:
    clock = FakeClock()
    limiter = CallRateLimiter(rate=2.0, burst_seconds=2.0, clock=clock)
    for _ in range(4):  # the burst: two seconds' worth
        limiter.take("edge")
    with pytest.raises(ResourceExhausted) as refused:
        limiter.take("edge")
    assert refused.value.reason == "RATE_LIMITED" and refused.value.retry_after == pytest.approx(0.5)
    limiter.take("other")  # another token has its own bucket
    clock.now += 0.5
    limiter.take("edge")  # one call's worth came back
    with pytest.raises(ResourceExhausted):
        limiter.take("edge")
    clock.now += 60
    for _ in range(4):  # a long pause refills the burst, never more
        limiter.take("edge")
    with pytest.raises(ResourceExhausted):
        limiter.take("edge")


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_a_call_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="call rate limits must be positive and finite"):
        CallRateLimiter(rate=rate)
    with pytest.raises(ValueError, match="max_call_rate must be positive and finite"):
        ServerConfig(data_dir=Path("."), max_call_rate=rate)


def test_a_token_over_its_rate_is_refused_with_the_wait_and_others_are_not(start_server, tokens, tmp_path) -> None:
    running = start_server(token_file=tokens.file, max_call_rate=2.0)  # bursts of 8
    with grpc.insecure_channel(running.target) as channel:
        edge, ops = Stubs.on(channel, tokens.client), Stubs.on(channel, tokens.operator)
        list_models = lambda stubs: stubs.registry.ListModels(rs.ListModelsRequest(), metadata=stubs.md)  # noqa: E731
        for _ in range(8):
            list_models(edge)
        err = rpc_error(lambda: list_models(edge))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than 2 calls per second" in err.details() and "--max-call-rate" in err.details()
        details = details_of(err)
        assert details.reason == "RATE_LIMITED" and 0 < details.retry_after <= 0.5
        assert ("grpc-retry-pushback-ms", str(math.ceil(details.retry_after * 1000))) in err.trailing_metadata()
        assert isinstance(from_rpc_error(err), RateLimitedError)
        list_models(ops)  # another token is not slowed by this one
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # health carries no token
    # The SDK's calls retry after the server's pushback, so a burst over the rate is slowed, not failed.
    with Client(running.target, token=tokens.client, cache_dir=tmp_path / "cache") as xfer:
        started = time.monotonic()
        for _ in range(6):
            assert xfer.list_models() == []
        assert time.monotonic() - started >= 2.0  # the bucket was empty: about 0.5 s per call


def test_an_open_server_has_no_call_rate(start_server) -> None:
    running = start_server(max_call_rate=1.0)  # no token file: no tokens to tell callers apart
    with grpc.insecure_channel(running.target) as channel:
        stubs = Stubs.on(channel)
        for _ in range(20):
            stubs.registry.ListModels(rs.ListModelsRequest())


def test_a_pull_over_the_rate_waits_out_the_hint_and_verifies(start_server, tokens, source_model_dir, tmp_path, caplog):
    running = start_server(token_file=tokens.file, max_call_rate=0.5)  # bursts of 2: one pull's calls
    block = os.urandom(1024 * 1024)
    sha = store_artifact(running, source_model_dir, "big", (block for _ in range(4)), size=4 * 1024 * 1024)
    caplog.set_level(logging.INFO, logger="xfer.client.download")
    with Client(running.target, token=tokens.client, cache_dir=tmp_path / "first") as xfer:
        xfer.pull("big:1")  # GetModelVersion and ReadArtifact spend the burst
    with Client(running.target, token=tokens.client, cache_dir=tmp_path / "second") as xfer:
        result = xfer.pull("big:1")  # both calls are refused once; gRPC's retry, then the pull's loop, wait
    assert hashlib.sha256(result.blob_path.read_bytes()).hexdigest() == sha
    assert "this token is over the server's call rate" in caplog.text
