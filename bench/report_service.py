"""The product end to end: a real `python -m xfer.server` subprocess, operator and client tokens, SDK clients.

The report talks to xfer exactly as its users do: the service owner starts
`xfer-server` on port 0 with a token file, the operator registers source
models with `Client.register`, edge clients pull them with
`Client.load_torch` into their own cache and report each run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from xfer.server.process import ServerProcess

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0


@dataclasses.dataclass
class ServerHandle:
    """A running server subprocess and the credentials to talk to it."""

    process: ServerProcess
    operator_token: str
    client_token: str

    @property
    def target(self) -> str:
        return self.process.target

    @property
    def log_path(self) -> Path:
        assert self.process.log_path is not None
        return self.process.log_path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        self.process.stop(timeout=15)


def start_server(root: Path) -> ServerHandle:
    """Starts `python -m xfer.server --port 0` with a temp data dir and a token file of one operator and one client."""
    from xfer.server.auth import add_token

    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "tokens.json"
    operator = add_token(token_file, role="operator", name="report-operator")
    client = add_token(token_file, role="client", name="report-client")
    process = ServerProcess(
        data_dir=root / "data",
        args=("--token-file", str(token_file), "--grace", "1"),
        log_path=root / "server.log",
        log_level="WARNING",
        startup_timeout=START_TIMEOUT_S,
    )
    process.start()
    return ServerHandle(process=process, operator_token=operator, client_token=client)


def client(target: str, *, token: str, cache_dir: Path):
    """An SDK client with its own cache (quick retries: the server is local)."""
    from xfer.client import Client, RetryPolicy

    return Client(
        target,
        token=token,
        cache_dir=cache_dir,
        retry=RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=1.0),
        timeout=60.0,
    )
