"""`python -m xfer.server`: the listening line, signals, exit codes, refusals."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def test_sigint_stops_cleanly(spawn_server) -> None:
    server = spawn_server()
    with grpc.insecure_channel(server.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=30) == 0
    assert "shutting down" in server.log_text()


def test_non_loopback_without_tokens_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xfer.server", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to listen on '0.0.0.0' without authentication" in result.stderr


def test_data_dir_from_environment(tmp_path: Path) -> None:
    env_dir = tmp_path / "from-env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xfer.server", "--port", "0"],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"XFER_DATA_DIR": str(env_dir), "PATH": "/usr/bin:/bin"},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("xfer-server listening on 127.0.0.1:")
        assert (env_dir / "xfer.db").exists() and (env_dir / "blobs").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_negative_chunk_cache_exits_2_and_says_which_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xfer.server", "--port", "0", "--data-dir", str(tmp_path), "--chunk-cache-mb", "-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "chunk_cache_bytes must not be negative" in result.stderr


def test_a_short_open_file_limit_is_raised_or_reported(tmp_path: Path) -> None:
    # The child starts with a soft limit of 64 (hard limit unchanged): the server lifts it to the hard limit.
    script = (
        "import resource, sys; from xfer.server.__main__ import _raise_open_file_limit; "
        "from xfer.server.config import ServerConfig; "
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)); "
        "_raise_open_file_limit(ServerConfig(data_dir='.')); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard) or hard == resource.RLIM_INFINITY); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "  # now it cannot be raised: a warning says so
        "_raise_open_file_limit(ServerConfig(data_dir='.'))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "the open-file limit is 64, but --max-reads 256 and --max-uploads 16 may need 928" in result.stderr
