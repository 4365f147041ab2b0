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


def _serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m xfer.server --port 0 --data-dir DATA_DIR ARGS`, for refusals that end it at start."""
    command = [sys.executable, "-m", "xfer.server", "--port", "0", "--data-dir", str(data_dir), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_non_loopback_without_tokens_exits_2(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--host", "0.0.0.0")
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
    result = _serve(tmp_path, "--chunk-cache-mb", "-1")
    assert result.returncode == 2
    assert "argument --chunk-cache-mb: must be an integer at least 0, got -1" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--port", "70000", "must be an integer from 0 to 65535, got 70000"),
        ("--metrics-port", "-1", "must be an integer from 0 to 65535, got -1"),
        ("--chunk-size", "10", "must be an integer from 4096 to 67108864, got 10"),
        ("--max-reads", "0", "must be an integer more than 0, got 0"),
        ("--max-workers", "1.5", "expected an integer more than 0, got '1.5'"),
        ("--validation-memory-mb", "-5", "must be an integer more than 0, got -5"),
        ("--stall-timeout", "nan", "must be a finite number more than 0, got nan"),
        ("--health-interval", "inf", "must be a finite number more than 0, got inf"),
        ("--grace", "-1", "must be a finite number at least 0, got -1"),
        ("--max-connections", "0", "must be an integer more than 0, got 0"),
        ("--max-call-rate", "-1", "must be a finite number at least 0, got -1"),
        ("--handshake-timeout", "nan", "must be a finite number more than 0, got nan"),
    ],
)
def test_a_bad_number_is_reported_against_its_flag(flag: str, value: str, message: str, capsys) -> None:
    from xfer.server.__main__ import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([flag, value])
    assert exited.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_flag_bounds_admit_the_defaults_and_the_edges() -> None:
    from xfer.server.__main__ import build_parser

    args = build_parser().parse_args(["--port", "0", "--chunk-size", "4096", "--chunk-cache-mb", "0", "--grace", "0"])
    assert (args.port, args.chunk_size, args.chunk_cache_mb, args.grace) == (0, 4096, 0, 0.0)
    assert build_parser().parse_args([]).port == 50051
    assert build_parser().parse_args(["--max-call-rate", "0"]).max_call_rate == 0.0  # 0: no limit


def test_a_short_open_file_limit_is_raised_or_reported(tmp_path: Path) -> None:
    # The child starts with a soft limit of 64 (hard limit unchanged): the server lifts it to the hard limit.
    script = (
        "import resource, sys; from xfer.server.open_files import raise_open_file_limit; "
        "from xfer.server.config import ServerConfig; "
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)); "
        "raise_open_file_limit(ServerConfig(data_dir='.')); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard) or hard == resource.RLIM_INFINITY); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "  # now it cannot be raised: a warning says so
        "raise_open_file_limit(ServerConfig(data_dir='.'))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "the open-file limit is 64, but --max-reads 256, --max-uploads 16 and 16 connections may need 672" in (
        result.stderr
    )
