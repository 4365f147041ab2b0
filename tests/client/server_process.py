"""A real `python -m xfer.server` subprocess for client e2e tests, plus small helpers.

A subprocess (not an in-process server) so tests can kill -9 it mid-pull
and restart it on the same data dir, as a real outage would.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from xfer.client import Client, RetryPolicy

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Small ReadArtifact chunks so that even a 300 KB artifact takes many messages.
SMALL_CHUNK = 16 * 1024


@dataclasses.dataclass
class ServerProcess:
    """One `python -m xfer.server` subprocess; `restart()` keeps the data dir (and gets a new port)."""

    data_dir: Path
    token_file: Path
    operator_token: str
    client_token: str
    chunk_size: int = SMALL_CHUNK
    extra_args: tuple[str, ...] = ()
    #: 0 picks a free port at every start; a fixed port survives restarts.
    port: int = 0
    proc: subprocess.Popen | None = None
    target: str = ""

    def start(self) -> "ServerProcess":
        log = open(self.data_dir.parent / f"server-{self.data_dir.name}.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xfer.server", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--token-file", str(self.token_file), "--chunk-size", str(self.chunk_size),
             "--log-level", "WARNING", "--grace", "0.5", *self.extra_args],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
        )
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}; see {log.name}")
        self.target = line.strip().rsplit(" ", 1)[-1]
        return self

    def kill(self) -> None:
        """SIGKILL: the abrupt end of an outage, no graceful shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> "ServerProcess":
        self.kill()
        return self.start()

    def client(self, cache_dir: Path, *, token: str | None = "client", **kwargs) -> Client:
        """A Client for this server; `token` is 'client', 'operator', None or a literal token."""
        token = {"client": self.client_token, "operator": self.operator_token}.get(token, token)
        kwargs.setdefault("retry", RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2))
        return Client(self.target, token=token, cache_dir=cache_dir, **kwargs)


def new_server_process(root: Path, *, chunk_size: int = SMALL_CHUNK, extra_args: tuple[str, ...] = (),
                       port: int = 0) -> ServerProcess:
    from xfer.server.auth import add_token

    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "tokens.json"
    operator = add_token(token_file, role="operator", name="op")
    client = add_token(token_file, role="client", name="edge")
    return ServerProcess(data_dir=root / "data", token_file=token_file, operator_token=operator,
                         client_token=client, chunk_size=chunk_size, extra_args=extra_args, port=port).start()


@dataclasses.dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def blob_files(server: ServerProcess) -> list[Path]:
    """The server's stored blob files."""
    return [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file() and not p.name.startswith(".")]


def cli_env(server: ServerProcess, cache_dir: Path, token: str) -> dict[str, str]:
    """Environment for a real `xfer` subprocess."""
    env = dict(os.environ)
    env.update(XFER_SERVER=server.target, XFER_TOKEN=token, XFER_CACHE=str(cache_dir))
    return env
