"""`ServerProcess`: one `python -m xfer.server` child process, for tests, benchmarks and demos.

The one helper that starts a real server as a separate process (which an
outage test can kill -9 and restart on the same data dir, as a real outage
would):

    with ServerProcess(data_dir=tmp / "data", args=("--token-file", str(tokens))) as server:
        client = Client(server.target, ...)
        server.kill(); server.start()      # same data dir; new port unless `port` was fixed
        server.stop()                      # SIGTERM, graceful; returns the exit code

The server's stderr (its log) goes to `log_path`; `log_text()` reads it.
Starting waits for the parseable `xfer-server listening on HOST:PORT` line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

LISTENING = re.compile(r"xfer-server listening on (?P<target>\S+)")
METRICS = re.compile(r"xfer-server metrics on (?P<target>\S+)")


class ServerStartError(RuntimeError):
    """The server process exited or stayed silent instead of printing its listening line."""


@dataclasses.dataclass
class ServerProcess:
    """A `python -m xfer.server` child process on `data_dir`, started with `args` (see `xfer-server --help`)."""

    data_dir: Path
    args: Sequence[str] = ()
    #: 0 picks a free port at every start; a fixed port survives restarts.
    port: int = 0
    #: Where the server's stderr goes (appended across restarts); default beside the data dir.
    log_path: Path | None = None
    #: Extra environment variables for the child (the rest is inherited).
    env: Mapping[str, str] | None = None
    log_level: str = "INFO"
    startup_timeout: float = 120.0
    python: str = sys.executable
    proc: subprocess.Popen | None = dataclasses.field(default=None, init=False, repr=False)
    #: host:port the server listens on (set by `start`).
    target: str = dataclasses.field(default="", init=False)
    #: host:port of the Prometheus endpoint, when `--metrics-port` was passed.
    metrics_target: str = dataclasses.field(default="", init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.log_path is None:
            self.log_path = self.data_dir.parent / f"server-{self.data_dir.name}.log"

    # -- lifecycle ----------------------------------------------------------------------
    def command(self) -> list[str]:
        """The command line `start` runs."""
        return [
            self.python,
            "-m",
            "xfer.server",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            self.log_level,
            *self.args,
        ]

    def start(self) -> ServerProcess:
        """Starts the server and waits for its listening line; raises ServerStartError if it does not come."""
        if self.running:
            raise RuntimeError(f"the server is already running on {self.target}")
        assert self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        try:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log, env=env)
        finally:
            log.close()
        assert self.proc.stdout is not None
        lines = _LineReader(self.proc.stdout, self.log_path)
        match = lines.wait_for(LISTENING, timeout=self.startup_timeout, metrics=METRICS)
        if match is None:
            self.kill()
            raise ServerStartError(
                f"xfer-server did not start (exit code {self.proc.returncode}); its log "
                f"{self.log_path} ends with:\n{self.log_tail()}"
            )
        self.target = match.listening
        self.metrics_target = match.metrics
        return self

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self.proc.pid if self.running and self.proc is not None else None

    @property
    def bound_port(self) -> int:
        """The port the running server listens on."""
        return int(self.target.rsplit(":", 1)[1])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: health NOT_SERVING, in-flight calls finish), wait; SIGKILL after `timeout`.

        Returns the exit code (0 after a clean shutdown), or None if it was not running.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the abrupt end of an outage, no graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def restart(self) -> ServerProcess:
        """Kills the server and starts it again on the same data dir (a new port unless `port` is fixed)."""
        self.kill()
        return self.start()

    def __enter__(self) -> ServerProcess:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- logs -------------------------------------------------------------------------------
    def log_text(self) -> str:
        """Everything the server logged so far (all starts)."""
        assert self.log_path is not None
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclasses.dataclass(frozen=True)
class _Started:
    listening: str
    metrics: str


class _LineReader:
    """Reads the server's stdout on a thread: finds the listening line, then keeps draining into the log."""

    def __init__(self, stdout: IO[bytes], log_path: Path) -> None:
        self._stdout = stdout
        self._log_path = log_path
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._pump, name="xfer-server-stdout", daemon=True).start()

    def _pump(self) -> None:
        with open(self._log_path, "ab") as log:
            for raw in self._stdout:
                log.write(raw)
                log.flush()
                with self._changed:
                    self._lines.append(raw.decode(errors="replace"))
                    self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], *, timeout: float, metrics: re.Pattern[str]) -> _Started | None:
        def found() -> re.Match[str] | None:
            return next((m for line in self._lines if (m := pattern.search(line))), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._closed, timeout)
            match = found()
            if match is None:
                return None
            extra = next((m.group("target") for line in self._lines if (m := metrics.search(line))), "")
            return _Started(listening=match.group("target"), metrics=extra)
