"""While the database is down, health says NOT_SERVING and calls say UNAVAILABLE; both recover by themselves."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pg_cluster import PgCluster
from server_testkit import Stubs, rpc_error

from xfer.client.errors import UnavailableError, details_of, from_rpc_error

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def cluster():
    cluster = PgCluster().start()
    yield cluster
    cluster.destroy()


def _status(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _eventually(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


def test_database_outage_is_not_serving_and_unavailable_then_recovers(start_server, cluster, source_model_dir) -> None:
    running = start_server(db_url=cluster.create_database("outage"), health_interval_s=0.3)
    with grpc.insecure_channel(running.target) as channel:
        stubs = Stubs.on(channel)
        stubs.register("digits", source_model_dir)
        assert _status(channel) == SERVING

        cluster.stop()
        _eventually(lambda: _status(channel) == NOT_SERVING)
        assert _status(channel, "xfer.v1.RegistryService") == NOT_SERVING
        err = rpc_error(lambda: stubs.get("models/digits/versions/1"))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert "database is unavailable" in err.details()
        assert details_of(err).reason == "DATABASE_UNAVAILABLE" and details_of(err).retry_after == 1.0
        assert isinstance(from_rpc_error(err), UnavailableError)  # the SDK retries this kind

        cluster.start()
        _eventually(lambda: _status(channel) == SERVING)
        assert stubs.get("models/digits/versions/1").name == "models/digits/versions/1"
        assert running.database_up
