"""The server under load, on loopback, against baselines measured in the same run.

    .venv/bin/python bench/serve_load.py                  # 32 MiB artifact, 1/8/64 clients, 200 stalled readers
    .venv/bin/python bench/serve_load.py --size-mb 8 --quick

Starts a real `python -m xfer.server` subprocess (loopback, no auth; stream
caps raised so that the stalled readers and 64 clients all get in), registers
an MLP whose safetensors file is about --size-mb, then measures:

1. aggregate pull throughput with 1, 8 and 64 concurrent clients: SDK
   `Client.pull` (gRPC -> cache file + incremental sha256, verified) against
   the raw-socket baseline at the same concurrency (a threaded sendfile(2)
   server; each client recv_into + sha256). Clients run as threads spread
   over a few processes, the same for both contenders. Client caches live
   on tmpfs (/dev/shm) when there is one, so both sides measure the
   transfer, not this machine's disk;
2. GetModelVersion latency p50/p99 while the 64 clients pull, and while
   64 raw-socket clients load the same two CPUs (the server idle): what the
   shared machine alone costs a call;
3. health Check and GetModelVersion latency p50/p99 with 200 stalled
   readers (ReadArtifact streams opened by a client that never reads and
   never grows its flow-control window), and the server's RSS growth;
4. ReportRun calls per second from 32 threads.

With the throughput it prints where the CPU went: ms per MiB pulled in the
client processes and in the servers, beside what sha256 alone costs here.
When the clients saturate the CPUs, the ratio can be no better than the
baseline's CPU per MiB over xfer's.

Targets (issue 11): single-client verified pull >= 0.8 of raw socket +
sha256; 64-client aggregate >= 0.7 of the baseline; health p99 < 100 ms
with 200 stalled readers. Loopback throughput on a shared machine is noisy:
each contender's best of --repeat runs counts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import math
import multiprocessing
import os
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MIB = 1024 * 1024
TARGET_SINGLE = 0.8
TARGET_AGGREGATE = 0.7
TARGET_HEALTH_P99_MS = 100.0
STALLED = 200
REPORT_THREADS = 32


# -- the two contenders, run inside client worker processes ------------------------------------
def _socket_pull(port: int, size: int) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    received = 0
    with socket.create_connection(("127.0.0.1", port)) as conn:
        while n := conn.recv_into(buffer):
            digest.update(view[:n])
            received += n
    assert received == size
    return digest.hexdigest()


def _client_worker(kind: str, threads: int, args: dict, start, results) -> None:
    """One client process: `threads` threads wait for `start`, pull once each, report (start, end, sha).

    An SDK client is connected (channel up, one GetModelVersion) before the
    clock starts, as a socket client's connect is part of its own run; the
    timed part is `Client.pull` into an empty cache: resolve, stream, write,
    hash, verify, fsync, rename.
    """
    clients = []
    if kind == "sdk":
        from xfer.client import Client

        for _ in range(threads):
            cache = Path(args["cache_root"]) / uuid.uuid4().hex
            client = Client(args["target"], cache_dir=cache)
            client.get(args["ref"])
            clients.append((client, cache))

    def one(index: int) -> None:
        start.wait()
        began = time.perf_counter()
        if kind == "socket":
            sha = _socket_pull(args["port"], args["size"])
        else:
            result = clients[index][0].pull(args["ref"])
            assert not result.cache_hit
            sha = result.sha256
        results.put((began, time.perf_counter(), sha))

    pool = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    cpu_at_start = time.process_time()
    for thread in pool:
        thread.join()
    results.put(("cpu", time.process_time() - cpu_at_start, None))
    for client, cache in clients:
        client.close()
        shutil.rmtree(cache, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class PullRun:
    """One timed run of a contender: wall seconds, and the CPU seconds of its clients and of the servers."""

    seconds: float
    client_cpu: float
    server_cpu: float


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_clients(kind: str, clients: int, args: dict, *, expected_sha: str, server_pids: tuple[int, ...]) -> PullRun:
    """Times `clients` concurrent pulls, from the first client starting to the last finishing (each
    verifies the digest), and the CPU that the client processes and the servers spent meanwhile.

    Both servers count in both contenders' runs: the idle one costs next to nothing, and the
    GetModelVersion probe, which runs during both, is charged to each alike."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds gRPC channels
    processes = min(clients, 4)
    per_process = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_client_worker, args=(kind, n, args, start, results)) for n in per_process]
    for worker in workers:
        worker.start()
    time.sleep(3.0 if kind == "sdk" else 0.5)  # imports and connections done before the clock starts
    server_cpu = sum(map(_cpu_seconds, server_pids))
    start.set()
    messages = [results.get(timeout=900) for _ in range(clients + len(workers))]
    server_cpu = sum(map(_cpu_seconds, server_pids)) - server_cpu
    for worker in workers:
        worker.join()
    outcomes = [m for m in messages if m[0] != "cpu"]
    assert all(sha == expected_sha for _, _, sha in outcomes), "a pull returned the wrong bytes"
    return PullRun(
        seconds=max(end for _, end, _ in outcomes) - min(began for began, _, _ in outcomes),
        client_cpu=sum(m[1] for m in messages if m[0] == "cpu"),
        server_cpu=server_cpu,
    )


# -- raw-socket baseline server ---------------------------------------------------------------
def _serve_file_forever(path: str, port_file: str) -> None:
    """Child process: a threaded TCP server sending the whole file (sendfile) to every connection."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with open(path, "rb") as f:
                self.request.sendfile(f)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 256

    with Server(("127.0.0.1", 0), Handler) as server:
        Path(port_file).write_text(str(server.server_address[1]))
        server.serve_forever()


def _start_socket_server(path: Path, workdir: Path) -> tuple[subprocess.Popen, int]:
    port_file = workdir / "socket-port"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
            f"from bench.serve_load import _serve_file_forever; "
            f"_serve_file_forever({str(path)!r}, {str(port_file)!r})",
        ]
    )
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.01)
    return child, int(port_file.read_text())


# -- helpers ---------------------------------------------------------------------------------------
def _make_model(folder: Path, *, size_mb: float) -> int:
    import json

    import torch

    from xfer.models import card_for_model, create_model
    from xfer.models.weights import save_safetensors

    width = max(16, int(math.sqrt(size_mb * MIB / 4)))  # the hidden width x width layer holds most parameters
    torch.manual_seed(0)
    model = create_model("mlp", in_features=64, hidden=[width, width], num_classes=10)
    folder.mkdir(parents=True)
    save_safetensors(model, folder / "model.safetensors")
    (folder / "card.json").write_text(json.dumps(card_for_model(model, source_task="load benchmark").to_dict()))
    return (folder / "model.safetensors").stat().st_size


@contextlib.contextmanager
def _probing(target: str, ref: str, cache_dir: Path, *, out: list[float] | None) -> Iterator[None]:
    """While the block runs, a thread calls GetModelVersion every 10 ms and appends its latency to `out`."""
    if out is None:
        yield
        return
    from xfer.client import Client

    stop = threading.Event()

    def sample() -> None:
        with Client(target, cache_dir=cache_dir) as xfer:
            while not stop.is_set():
                began = time.perf_counter()
                xfer.get(ref)
                out.append((time.perf_counter() - began) * 1000)
                time.sleep(0.01)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _percentiles(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return statistics.median(ordered), p99


def _latencies(call, *, count: int) -> list[float]:
    out = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        out.append((time.perf_counter() - began) * 1000)
    return out


def _cpu_per_mib(runs: list[PullRun], mib: float) -> tuple[float, float]:
    """Median CPU ms per MiB of the clients and of the servers over `runs`, each of which moved `mib`."""
    return (
        statistics.median(run.client_cpu for run in runs) * 1000 / mib,
        statistics.median(run.server_cpu for run in runs) * 1000 / mib,
    )


def _sha256_ms_per_mib(path: Path) -> float:
    """CPU ms that hashlib's sha256 alone takes per MiB here: the floor of every verified pull."""
    data = path.read_bytes()
    best = math.inf
    for _ in range(3):  # the least disturbed of three
        began = time.process_time()
        hashlib.sha256(data).digest()
        best = min(best, time.process_time() - began)
    return best * 1000 / (len(data) / MIB)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _active_reads(metrics_target: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics_target}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith('xfer_active_streams{method="/xfer.v1.TransferService/ReadArtifact"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


STALLED_READERS = """
import sys, time, grpc
from xfer.v1 import transfer_service_pb2 as ts, transfer_service_pb2_grpc as tsg
target, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
# BDP probing off: the window never grows, so the server can send a chunk or two and then waits on us.
# A local subchannel pool gives every channel its own connection (the server allows 100 streams on one).
options = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]
channels = [grpc.insecure_channel(target, options=options) for _ in range(count // 50 + 1)]
calls = [tsg.TransferServiceStub(channels[i % len(channels)]).ReadArtifact(
    ts.ReadArtifactRequest(name=name, format=1)) for i in range(count)]
print("opened", flush=True)
time.sleep(3600)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=32.0, help="artifact size in MiB (default 32)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender and concurrency; best counts")
    parser.add_argument("--quick", action="store_true", help="1 and 8 clients only, fewer samples")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)

    from xfer.client import Client, Run
    from xfer.server.process import ServerProcess

    workdir = Path(tempfile.mkdtemp(prefix="xfer-bench-load-"))
    cache_root = Path(
        tempfile.mkdtemp(prefix="xfer-bench-caches-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    server = None
    socket_server = None
    stalled = None
    try:
        size = _make_model(workdir / "model", size_mb=args.size_mb)
        server = ServerProcess(
            data_dir=workdir / "data",
            log_level="WARNING",
            args=(
                "--max-artifact-mb",
                str(max(512, int(args.size_mb * 3))),
                "--metrics-port",
                "0",
                "--max-reads",
                "1024",
                "--max-reads-per-token",
                "1024",
                "--stall-timeout",
                "600",
                "--max-workers",
                "16",
            ),
        ).start()
        with Client(server.target, cache_dir=workdir / "op-cache") as op:
            t0 = time.perf_counter()
            version = op.register(workdir / "model", "load-mlp")
            registered = time.perf_counter() - t0
            op.pull(version.ref)  # the server hashes each blob once per process: do it before timing
        sha = version.artifact("safetensors").sha256
        blob = next(p for p in (workdir / "data" / "blobs").rglob(sha))
        print(
            f"artifact {size / MIB:.1f} MiB safetensors, registered in {registered:.1f}s; server pid "
            f"{server.pid}, client caches in {cache_root}; {os.cpu_count()} CPUs"
        )
        socket_server, port = _start_socket_server(blob, workdir)
        hash_ms = _sha256_ms_per_mib(blob)
        servers = (socket_server.pid, server.pid)

        concurrency = (1, 8) if args.quick else (1, 8, 64)
        rows = []
        probe_ms: list[float] = []  # GetModelVersion while the xfer clients pull
        socket_probe_ms: list[float] = []  # ... while as many raw-socket clients load the same CPUs
        cpu_rows: list[tuple[int, tuple[float, float], tuple[float, float]]] = []
        for clients in concurrency:
            runs: dict[str, list[PullRun]] = {"socket": [], "sdk": []}
            loaded = clients == max(concurrency)
            for _ in range(args.repeat):
                probe = (server.target, version.ref, workdir / "probe-cache")
                with _probing(*probe, out=socket_probe_ms if loaded else None):
                    runs["socket"].append(
                        _run_clients(
                            "socket",
                            clients,
                            {"port": port, "size": size},
                            expected_sha=sha,
                            server_pids=servers,
                        )
                    )
                with _probing(*probe, out=probe_ms if loaded else None):
                    runs["sdk"].append(
                        _run_clients(
                            "sdk",
                            clients,
                            {"target": server.target, "ref": version.ref, "cache_root": str(cache_root)},
                            expected_sha=sha,
                            server_pids=servers,
                        )
                    )
            total = clients * size / MIB
            seconds = {kind: [run.seconds for run in kind_runs] for kind, kind_runs in runs.items()}
            base, sdk = total / min(seconds["socket"]), total / min(seconds["sdk"])
            typical = statistics.median(seconds["socket"]) / statistics.median(seconds["sdk"])
            rows.append((clients, base, sdk, sdk / base, typical))
            cpu_rows.append((clients, _cpu_per_mib(runs["socket"], total), _cpu_per_mib(runs["sdk"], total)))

        with Client(server.target, cache_dir=workdir / "probe-cache") as xfer:
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            rss_before = _rss_mib(server.pid)
            stalled = subprocess.Popen(
                [sys.executable, "-c", STALLED_READERS, server.target, version.name, str(STALLED)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert stalled.stdout.readline().strip() == "opened"
            deadline = time.monotonic() + 120
            while _active_reads(server.metrics_target) < STALLED:
                assert time.monotonic() < deadline, "the stalled readers did not all get in"
                time.sleep(0.1)
            time.sleep(2.0)  # every stalled stream has filled its window and waits
            rss_stalled = _rss_mib(server.pid)
            with grpc.insecure_channel(server.target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                samples = 100 if args.quick else 400
                health_ms = _latencies(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10), count=samples)
                get_ms = _latencies(lambda: xfer.get(version.ref), count=samples)
            stalled_now = _active_reads(server.metrics_target)
            stalled.kill()
            stalled.wait()
            stalled = None

            reports = 25 if args.quick else 60
            errors: list[BaseException] = []

            def report_runs() -> None:
                try:
                    with Client(server.target, cache_dir=workdir / "report-cache") as reporter:
                        for _ in range(reports):
                            reporter.report(
                                Run(
                                    run_id=uuid.uuid4().hex,
                                    model_version=version.name,
                                    strategy="full",
                                    metrics={"accuracy": 0.5},
                                    train_examples_pow2=64,
                                    device_kind="cpu",
                                    wall_seconds=1.0,
                                )
                            )
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=report_runs) for _ in range(REPORT_THREADS)]
            t0 = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            report_seconds = time.perf_counter() - t0
            assert not errors, errors[0]

        ok = lambda good: "OK" if good else "MISSED"  # noqa: E731
        print("\naggregate pull throughput (MB/s = MiB/s; SDK pulls are sha256-verified into the cache)")
        print(f"best of {args.repeat} runs each; 'median' is the ratio of the median runs")
        print(f"{'clients':>8} {'raw socket':>12} {'xfer pull':>12} {'ratio':>7} {'median':>7}  target")
        for clients, base, sdk, ratio, typical in rows:
            target = TARGET_SINGLE if clients == 1 else TARGET_AGGREGATE if clients == 64 else None
            verdict = f">= {target}  {ok(ratio >= target)}" if target else ""
            print(f"{clients:>8} {base:>12.1f} {sdk:>12.1f} {ratio:>7.2f} {typical:>7.2f}  {verdict}")
        print(
            f"\nCPU ms per MiB pulled, median over runs (clients + servers; {os.cpu_count()} CPUs shared by all; "
            f"sha256 alone: {hash_ms:.2f} ms/MiB)"
        )
        print(f"{'clients':>8} {'raw socket':>18} {'xfer pull':>18} {'xfer extra':>11}")
        for clients, (base_c, base_s), (sdk_c, sdk_s) in cpu_rows:
            extra = sdk_c + sdk_s - base_c - base_s
            print(f"{clients:>8} {base_c:>8.2f} + {base_s:<7.2f} {sdk_c:>8.2f} + {sdk_s:<7.2f} {extra:>+11.2f}")
        p50, p99 = _percentiles(probe_ms)
        s50, s99 = _percentiles(socket_probe_ms)
        print(
            f"\nGetModelVersion while {max(concurrency)} clients pull: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({len(probe_ms)} calls); while {max(concurrency)} raw-socket clients load the same CPUs and the "
            f"server idles: p50 {s50:.1f} ms, p99 {s99:.1f} ms ({len(socket_probe_ms)} calls)"
        )
        h50, h99 = _percentiles(health_ms)
        g50, g99 = _percentiles(get_ms)
        print(
            f"with {int(stalled_now)} stalled readers open: health p50 {h50:.1f} ms, p99 {h99:.1f} ms "
            f"(target p99 < {TARGET_HEALTH_P99_MS:.0f} ms) {ok(h99 < TARGET_HEALTH_P99_MS)}; "
            f"GetModelVersion p50 {g50:.1f} ms, p99 {g99:.1f} ms"
        )
        print(
            f"server RSS {rss_before:.0f} MiB before the stalled readers, {rss_stalled:.0f} MiB with them "
            f"(+{(rss_stalled - rss_before) / STALLED:.2f} MiB per stalled stream)"
        )
        print(
            f"ReportRun from {REPORT_THREADS} threads: {REPORT_THREADS * reports / report_seconds:.0f} calls/s "
            f"({REPORT_THREADS * reports} reports in {report_seconds:.1f}s)"
        )
        return 0
    finally:
        if stalled is not None:
            stalled.kill()
        if socket_server is not None:
            socket_server.kill()
            socket_server.wait()
        if server is not None:
            server.stop()
        shutil.rmtree(cache_root, ignore_errors=True)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
