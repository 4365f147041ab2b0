"""A real xfer server subprocess with an operator and a client token, for client e2e tests.

The process itself is `xfer.server.process.ServerProcess` (the one helper
that starts servers); this adds the tokens and a `client()` factory. A
subprocess, not an in-process server, so tests can kill -9 it mid-pull and
restart it on the same data dir, as a real outage would.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from xfer.client import Client, RetryPolicy
from xfer.server.process import ServerProcess

#: Small ReadArtifact chunks so that even a 300 KB artifact takes many messages.
SMALL_CHUNK = 16 * 1024


@dataclasses.dataclass
class TokenServer:
    """A server process with a token file of one operator and one client token."""

    process: ServerProcess
    token_file: Path
    operator_token: str
    client_token: str

    @property
    def target(self) -> str:
        return self.process.target

    @property
    def data_dir(self) -> Path:
        return self.process.data_dir

    def start(self) -> TokenServer:
        """Starts it again after a kill: same data dir, new port unless the port is fixed."""
        self.process.start()
        return self

    def kill(self) -> None:
        """SIGKILL: the abrupt end of an outage, no graceful shutdown."""
        self.process.kill()

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.process.stop(timeout=15)

    def restart(self) -> TokenServer:
        self.process.restart()
        return self

    def client(self, cache_dir: Path, *, token: str | None = "client", **kwargs) -> Client:
        """A Client for this server; `token` is 'client', 'operator', None or a literal token."""
        token = {"client": self.client_token, "operator": self.operator_token}.get(token, token)
        kwargs.setdefault("retry", RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2))
        return Client(self.target, token=token, cache_dir=cache_dir, **kwargs)


def new_server_process(
    root: Path, *, chunk_size: int = SMALL_CHUNK, extra_args: tuple[str, ...] = (), port: int = 0
) -> TokenServer:
    """Starts a server under `root` (data dir, token file, log) and returns it running."""
    from xfer.server.auth import add_token

    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "tokens.json"
    operator = add_token(token_file, role="operator", name="op")
    client = add_token(token_file, role="client", name="edge")
    process = ServerProcess(
        data_dir=root / "data",
        port=port,
        log_level="WARNING",
        args=("--token-file", str(token_file), "--chunk-size", str(chunk_size), "--grace", "0.5", *extra_args),
    )
    process.start()
    return TokenServer(process=process, token_file=token_file, operator_token=operator, client_token=client)


@dataclasses.dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def blob_files(server: TokenServer) -> list[Path]:
    """The server's stored blob files."""
    return [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file() and not p.name.startswith(".")]


def cli_env(server: TokenServer, cache_dir: Path, token: str) -> dict[str, str]:
    """Environment for a real `xfer` subprocess."""
    env = dict(os.environ)
    env.update(XFER_SERVER=server.target, XFER_TOKEN=token, XFER_CACHE=str(cache_dir))
    return env
