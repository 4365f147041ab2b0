"""A private PostgreSQL cluster a test may stop and start again (the shared session one must stay up)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port


def _bin_dir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


class PgCluster:
    """initdb once; `start()` / `stop()` the postmaster on one fixed port, as often as a test likes."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
        self._as_root = os.geteuid() == 0
        if self._as_root and shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        self._bin = bin_dir
        self._prefix = ["runuser", "-u", "nobody", "--"] if self._as_root else []
        self.root = Path(tempfile.mkdtemp(prefix="xfer-pg-private-"))
        self.data = self.root / "data"
        self.data.mkdir()
        if self._as_root:
            os.chmod(self.root, 0o755)
            shutil.chown(self.data, "nobody")
        init = subprocess.run(
            [
                *self._prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "xfer",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://xfer@127.0.0.1:{self.port}/{database}"

    def start(self) -> PgCluster:
        import psycopg

        log = open(self.root / "postgres.log", "a")
        self._proc = subprocess.Popen(
            [
                *self._prefix,
                str(self._bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=xfer dbname=postgres", connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.root / "postgres.log").read_text()[-500:]) from None
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=xfer dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster): connections are cut, as in an outage."""
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)
        except (OSError, ValueError, IndexError):
            self._proc.terminate()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
