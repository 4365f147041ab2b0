"""Pull throughput of the SDK against a plain TCP socket, measured in the same run.

    .venv/bin/python bench/pull.py                 # 256 MiB artifact
    .venv/bin/python bench/pull.py --size-mb 32    # quick

Starts a real `python -m xfer.server` subprocess (loopback, no auth) on a fresh
data dir, registers an MLP whose safetensors file is about --size-mb, then:

1. baseline: a tiny socket server process sends the same blob file over
   loopback; the reader receives it into a reused buffer and sha256s it;
2. SDK: `Client.pull` into a fresh cache (stream -> file + incremental
   sha256 -> fsync -> rename), sampling the resident memory (VmRSS from
   /proc) of the server and of this process while it runs;
3. a cache hit (second pull of the same digest);
4. a resumed pull from a partial file of half the size.

Prints MB/s of both, the ratio (target >= 0.6) and the RSS growth of each
side (target < 64 MiB). The server has hashed the blob once before the
timed runs (it verifies each blob once per process), and the file is in the
page cache for both contenders, so both read the same warm bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from xfer.client import Client  # noqa: E402
from xfer.client.cache import Cache  # noqa: E402
from xfer.server.process import ServerProcess  # noqa: E402

MIB = 1024 * 1024
TARGET_RATIO = 0.6
TARGET_RSS_MIB = 64


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples the RSS of some pids every few ms in a thread; `growth` is peak minus start."""

    def __init__(self, pids: dict[str, int], *, interval: float = 0.005) -> None:
        self.pids = pids
        self.interval = interval
        self.start = {name: rss_bytes(pid) for name, pid in pids.items()}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_bytes(pid))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], rss_bytes(pid))

    def growth(self, name: str) -> int:
        return self.peak[name] - self.start[name]


def make_model_folder(folder: Path, *, size_mb: float) -> int:
    """Writes model.safetensors + card.json of an MLP whose weights take about `size_mb` MiB."""
    import json

    import torch

    from xfer.models import card_for_model, create_model
    from xfer.models.weights import save_safetensors

    # Two square hidden layers dominate: params ~ w^2 (+ small terms).
    width = max(16, int(math.sqrt(size_mb * MIB / 4)))
    torch.manual_seed(0)
    model = create_model("mlp", in_features=64, hidden=[width, width], num_classes=10)
    save_safetensors(model, folder / "model.safetensors")
    card = card_for_model(model, source_task="benchmark weights (random)", license="MIT")
    (folder / "card.json").write_text(json.dumps(card.to_dict()))
    return (folder / "model.safetensors").stat().st_size


def start_server(data_dir: Path, *, chunk_size: int, max_artifact_mb: int) -> ServerProcess:
    """A `python -m xfer.server` subprocess on port 0 (loopback, no auth)."""
    server = ServerProcess(
        data_dir=data_dir,
        log_level="WARNING",
        args=("--chunk-size", str(chunk_size), "--max-artifact-mb", str(max_artifact_mb)),
    )
    return server.start()


# -- baseline: plain TCP ---------------------------------------------------------
def _serve_file(path: str, port_file: str) -> None:
    """Child process: accepts one connection and sends the file with sendfile(2)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        Path(port_file).write_text(str(listener.getsockname()[1]))
        conn, _ = listener.accept()
        with conn, open(path, "rb") as f:
            conn.sendfile(f)


def socket_baseline(path: Path, *, workdir: Path, buffer_bytes: int) -> tuple[float, str, int]:
    """Seconds to receive `path` over loopback TCP and sha256 it; returns (seconds, digest, bytes)."""
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
            f"from bench.pull import _serve_file; _serve_file({str(path)!r}, {str(port_file)!r})",
        ]
    )
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.01)
    port = int(port_file.read_text())
    buffer = bytearray(buffer_bytes)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    received = 0
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        while n := conn.recv_into(buffer):
            digest.update(view[:n])
            received += n
    seconds = time.perf_counter() - start
    child.wait()
    return seconds, digest.hexdigest(), received


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=256.0, help="artifact size in MiB (default 256)")
    parser.add_argument("--chunk-size", type=int, default=1 * MIB, help="server ReadArtifact chunk size")
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender; the best counts (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="xfer-bench-pull-"))
    server = None
    try:
        folder = workdir / "model"
        folder.mkdir()
        t0 = time.perf_counter()
        size = make_model_folder(folder, size_mb=args.size_mb)
        print(
            f"artifact: mlp safetensors {size / MIB:.1f} MiB (made in {time.perf_counter() - t0:.1f}s); "
            f"server chunk size {args.chunk_size // 1024} KiB"
        )
        server = start_server(
            workdir / "data", chunk_size=args.chunk_size, max_artifact_mb=max(512, int(args.size_mb * 2) + 16)
        )
        with Client(server.target, cache_dir=workdir / "warm-cache") as op:
            t0 = time.perf_counter()
            version = op.register(folder, "bench-mlp")
            print(f"registered {version.ref} in {time.perf_counter() - t0:.1f}s (server validates and derives ONNX)")
            # Warm-up: the server hashes each blob once per process before serving it.
            op.pull(version.ref)
        artifact = version.artifact("safetensors")
        blob = next(p for p in (workdir / "data" / "blobs").rglob(artifact.sha256))

        # Loopback throughput on a shared VM is noisy: best of --repeat runs for both contenders.
        socket_runs = []
        for _ in range(args.repeat):
            seconds, digest, received = socket_baseline(blob, workdir=workdir, buffer_bytes=args.chunk_size)
            assert digest == artifact.sha256 and received == size
            socket_runs.append(seconds)
        seconds = min(socket_runs)
        socket_mbps = size / MIB / seconds

        pull_runs = []
        with RssSampler({"server": server.proc.pid, "client": os.getpid()}) as rss:  # type: ignore[union-attr]
            for i in range(args.repeat):
                with Client(server.target, cache_dir=workdir / f"cache{i}") as xfer:
                    t0 = time.perf_counter()
                    result = xfer.pull(version.ref)
                    pull_runs.append(time.perf_counter() - t0)
                assert result.transferred_bytes == size and not result.cache_hit
                shutil.rmtree(workdir / f"cache{i}")  # each run writes a fresh cache
        pull_seconds = min(pull_runs)
        sdk_mbps = size / MIB / pull_seconds

        with Client(server.target, cache_dir=workdir / "cache") as xfer:
            xfer.pull(version.ref)
            t0 = time.perf_counter()
            hit = xfer.pull(version.ref)
            hit_seconds = time.perf_counter() - t0
            assert hit.cache_hit and hit.transferred_bytes == 0

        resume_cache = Cache(workdir / "resume-cache")
        resume_cache.partial_path(artifact.sha256).parent.mkdir(parents=True)
        with open(blob, "rb") as src, open(resume_cache.partial_path(artifact.sha256), "wb") as dst:
            shutil.copyfileobj(src, dst, length=MIB)
            dst.truncate(size // 2)
        with Client(server.target, cache_dir=resume_cache.root) as xfer:
            t0 = time.perf_counter()
            resumed = xfer.pull(version.ref)
            resume_seconds = time.perf_counter() - t0
        assert resumed.resumed_from == size // 2 and resumed.transferred_bytes == size - size // 2

        ratio = sdk_mbps / socket_mbps
        server_growth, client_growth = rss.growth("server") / MIB, rss.growth("client") / MIB
        runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        print(
            f"socket baseline : {socket_mbps:8.1f} MB/s  (best of {runs(socket_runs)} s; recv_into + sha256, loopback)"
        )
        print(f"sdk pull        : {sdk_mbps:8.1f} MB/s  (best of {runs(pull_runs)} s; gRPC -> file + sha256 + fsync)")
        print(
            f"ratio sdk/socket: {ratio:8.2f}     (target >= {TARGET_RATIO})  {'OK' if ratio >= TARGET_RATIO else 'MISSED'}"
        )
        print(f"cache hit       : {hit_seconds * 1000:8.1f} ms  (GetModelVersion only, 0 bytes transferred)")
        print(
            f"resumed pull    : {resume_seconds:8.2f} s   (from {size // 2 / MIB:.1f} MiB partial, "
            f"{resumed.transferred_bytes / MIB:.1f} MiB transferred)"
        )
        print(
            f"RSS growth      : server {server_growth:6.1f} MiB, client {client_growth:6.1f} MiB during the pulls  "
            f"(target < {TARGET_RSS_MIB} MiB each)  "
            f"{'OK' if max(server_growth, client_growth) < TARGET_RSS_MIB else 'MISSED'}"
        )
        return 0
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
