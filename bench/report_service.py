"""The product end to end: a real `python -m xfer.server` subprocess, operator and client tokens, SDK clients.

The report talks to xfer exactly as its users do: the service owner starts
`xfer-server` on port 0 with a token file, the operator registers source
models with `Client.register`, edge clients pull them with
`Client.load_torch` into their own cache and report each run.
"""

from __future__ import annotations

import dataclasses
import logging
import selectors
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


@dataclasses.dataclass
class ServerHandle:
    """A running server subprocess and the credentials to talk to it."""

    target: str
    operator_token: str
    client_token: str
    proc: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_server(root: Path) -> ServerHandle:
    """Starts `python -m xfer.server --port 0` with a temp data dir and a token file of one operator and one client."""
    from xfer.server.auth import add_token

    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "tokens.json"
    operator = add_token(token_file, role="operator", name="report-operator")
    client = add_token(token_file, role="client", name="report-client")
    log_path = root / "server.log"
    with open(log_path, "ab") as server_log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xfer.server",
                "--port",
                "0",
                "--data-dir",
                str(root / "data"),
                "--token-file",
                str(token_file),
                "--log-level",
                "WARNING",
                "--grace",
                "1",
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=server_log,
            text=True,
        )
    line = _first_line(proc, timeout=START_TIMEOUT_S)
    if "listening on" not in line:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(
            f"xfer-server did not start (first line {line!r}); see {log_path}:\n{log_path.read_text()[-2000:]}"
        )
    target = line.strip().rsplit(" ", 1)[-1]
    return ServerHandle(target=target, operator_token=operator, client_token=client, proc=proc, log_path=log_path)


def _first_line(proc: subprocess.Popen, *, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                return proc.stdout.readline()
            if proc.poll() is not None:
                return ""
        return ""
    finally:
        selector.close()


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
