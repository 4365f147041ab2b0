"""Server fixtures: in-process servers on port 0, subprocess servers, tokens, stubs."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from xfer.server.app import RunningServer, create_server
from xfer.server.auth import add_token
from xfer.server.config import ServerConfig
from server_testkit import Stubs

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"xfer-server listening on (\S+):(\d+)")


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


@pytest.fixture
def start_server(data_dir: Path) -> Iterator[Callable[..., RunningServer]]:
    """Factory: start_server(**config_overrides) -> a started in-process server on port 0."""
    started: list[RunningServer] = []

    def start(**overrides) -> RunningServer:
        fields = {"data_dir": data_dir, "port": 0, "grace_seconds": 0.5, "max_workers": 8, **overrides}
        running = create_server(ServerConfig(**fields))
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


@dataclasses.dataclass
class SubprocessServer:
    """`python -m xfer.server` running in a child process."""

    process: subprocess.Popen
    target: str
    output: list[str]

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., SubprocessServer]]:
    """Factory: spawn_server(*extra_args, data_dir=...) -> a server in a subprocess on port 0.

    At teardown each is stopped with SIGTERM and must exit with code 0.
    """
    spawned: list[SubprocessServer] = []

    def spawn(*args: str, data_dir: Path | None = None) -> SubprocessServer:
        data = data_dir or tmp_path / "subprocess-data"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "xfer.server", "--port", "0", "--data-dir", str(data),
                                 "--log-level", "INFO", *args],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output: list[str] = []
        found = threading.Event()
        target: list[str] = []

        def pump() -> None:
            for line in proc.stdout:
                output.append(line)
                match = LISTENING.search(line)
                if match and not target:
                    target.append(f"{match.group(1)}:{match.group(2)}")
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(timeout=60) or not target:
            proc.kill()
            raise AssertionError("server did not print its listening line:\n" + "".join(output))
        server = SubprocessServer(process=proc, target=target[0], output=output)
        spawned.append(server)
        return server

    yield spawn
    for server in spawned:
        code = server.stop()
        assert code == 0, "server exited with %s:\n%s" % (code, "".join(server.output))
