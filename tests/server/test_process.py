"""`xfer.server.process.ServerProcess`: the one helper that runs a server as a child process."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest

from xfer.models import card_for_model, create_model
from xfer.server.catalog import Catalog
from xfer.server.db import create_engine
from xfer.server.pagination import PageTokens
from xfer.server.process import ServerProcess, ServerStartError
from xfer.v1 import registry_service_pb2 as rs
from xfer.v1 import registry_service_pb2_grpc as rsg

pytestmark = pytest.mark.timeout(180)


def _models(target: str) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        return [m.name for m in rsg.RegistryServiceStub(channel).ListModels(rs.ListModelsRequest(), timeout=10).models]


def test_start_restart_keeps_the_data_dir_and_stop_is_graceful(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", args=("--lazy-sandbox", "--metrics-port", "0"))
    server.start()
    try:
        assert server.running and server.bound_port > 0 and server.target.startswith("127.0.0.1:")
        body = urllib.request.urlopen(f"http://{server.metrics_target}/metrics", timeout=10).read()
        assert b"xfer_database_up 1.0" in body
        engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'xfer.db'}")
        Catalog(engine, page_tokens=PageTokens(b"k" * 32)).create_version(
            model_id="kept",
            card=card_for_model(create_model("mlp", in_features=4, hidden=[4], num_classes=2)),
            artifacts=[],
        )
        engine.dispose()
        first_pid = server.pid
        server.restart()  # SIGKILL, then start again on the same data dir
        assert server.pid != first_pid and _models(server.target) == ["models/kept"]
    finally:
        assert server.stop() == 0  # SIGTERM: health NOT_SERVING, calls drained, exit 0
    assert not server.running
    log = server.log_text()
    assert log.count("xfer-server listening on") >= 2 and "received SIGTERM" in log


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", args=("--host", "0.0.0.0"), startup_timeout=60)
    with pytest.raises(ServerStartError, match="refusing to listen on '0.0.0.0' without authentication"):
        server.start()
    assert server.proc.returncode == 2


def test_context_manager_stops_the_server(tmp_path: Path) -> None:
    with ServerProcess(data_dir=tmp_path / "data", args=("--lazy-sandbox",)) as server:
        assert _models(server.target) == []
    assert not server.running and server.proc.returncode == 0
