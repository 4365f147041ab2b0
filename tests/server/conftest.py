"""Server fixtures: in-process servers on port 0, subprocess servers, tokens, stubs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from server_testkit import Stubs

from xfer.server.app import RunningServer, create_server
from xfer.server.auth import add_token
from xfer.server.config import ServerConfig
from xfer.server.process import ServerProcess
from xfer.server.sandbox import Sandbox


@dataclasses.dataclass(frozen=True)
class Tokens:
    """A token file with one operator and one client token."""

    file: Path
    operator: str
    client: str


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    path = tmp_path / "tokens.json"
    operator = add_token(path, role="operator", name="ops")
    client = add_token(path, role="client", name="edge")
    return Tokens(file=path, operator=operator, client=client)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """One validation sandbox (one worker that imported torch) shared by every in-process server of the session."""
    box = Sandbox(max_concurrent=2)
    yield box
    box.close()


@pytest.fixture
def start_server(data_dir: Path, sandbox: Sandbox) -> Iterator[Callable[..., RunningServer]]:
    """Factory: start_server(**config_overrides) -> a started in-process server on port 0."""
    started: list[RunningServer] = []

    def start(**overrides) -> RunningServer:
        fields = {"data_dir": data_dir, "port": 0, "grace_seconds": 0.5, "max_workers": 8, **overrides}
        running = create_server(ServerConfig(**fields), sandbox=sandbox)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop(0)


@pytest.fixture
def open_server(start_server) -> RunningServer:
    """An in-process server without authentication (loopback only)."""
    return start_server()


@pytest.fixture
def open_stubs(open_server: RunningServer) -> Iterator[Stubs]:
    channel = grpc.insecure_channel(open_server.target)
    yield Stubs.on(channel)
    channel.close()


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: spawn_server(*extra_args, data_dir=...) -> `python -m xfer.server` in a subprocess on port 0.

    At teardown each is stopped with SIGTERM and must exit with code 0.
    """
    spawned: list[ServerProcess] = []

    def spawn(*args: str, data_dir: Path | None = None) -> ServerProcess:
        server = ServerProcess(data_dir=data_dir or tmp_path / f"subprocess-data{len(spawned)}", args=args)
        spawned.append(server)
        return server.start()

    yield spawn
    for server in spawned:
        code = server.stop()
        assert code in (0, None), f"server exited with {code}:\n{server.log_tail()}"
