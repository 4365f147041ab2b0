"""`make report`: which adaptation works when, measured end to end through xfer on real data.

Trains convnet source models on Fashion-MNIST and imports Google's
ImageNet EfficientNet-Lite0, registers them on a real xfer server (a
`python -m xfer.server --port 0` subprocess with a temp data dir) as an
operator, pulls and adapts them through the SDK as edge clients (to unseen
Fashion classes, MNIST digits, corrupted images, permuted labels), reports
every run back, and writes a Markdown report with tables and PNG plots:

1. pretrained vs random initialisation with 1 to all labels per class;
2. surgical fine-tuning by shift type (input / feature / output level) and
   which blocks `surgical:auto` favours;
3. the strategies side by side;
4. accuracy against ε for DP fine-tuning vs DP training from scratch;
5. what k-fold cross-validation picks vs the best fixed choice in hindsight;
6. where the numbers agree with the published claims (decided from the
   numbers, never hard-coded).

    .venv/bin/python bench/transfer_report.py [--out reports/] [--quick] [--seeds N] [--arch convnet] [--jobs 2]

Progress goes to stderr; the path of the written report to stdout.
Module layout: report_setup (settings), report_service (server + SDK),
report_runs (units of work, process pool), report_experiments (rows),
report_claims (verdicts), report_render (Markdown + PNG).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for path in (str(REPO_ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from report_claims import claims
from report_experiments import run_experiments
from report_render import (
    LeaderboardTable,
    ProductFacts,
    ReportInput,
    make_figures,
    render_markdown,
    results_json,
)
from report_runs import (
    Runner,
    RunOutcome,
    SearchOutcome,
    SourceSpec,
    WorkerConfig,
    cell_metric,
    default_jobs,
)
from report_service import client, start_server  # noqa: E402
from report_setup import SOURCES, TARGETS, Settings  # noqa: E402

from xfer.models.files import write_bytes_atomic  # noqa: E402

REPORT_NAME = "transfer_report.md"
JSON_NAME = "transfer_report.json"


class Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="bench/transfer_report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports", help="output folder (default reports/)")
    parser.add_argument("--quick", action="store_true", help="one seed, fewer settings: a smoke test (~1-2 min)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per number (default 3; 1 with --quick)")
    parser.add_argument("--arch", default="convnet", help="architecture of the trained sources (default convnet)")
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="worker processes (default: 2 if 2 cores)")
    return parser


def write_atomic(path: Path, text: str) -> None:
    """Writes `text` atomically; 0o644 because mkstemp's 0600 would hide the report from other users."""
    write_bytes_atomic(path, text.encode("utf-8"), mode=0o644)


def generate(settings: Settings, *, out_dir: Path, progress: Progress) -> Path:
    """Runs everything and writes the report; returns the report's path."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(jobs=settings.jobs, progress=progress)
    with tempfile.TemporaryDirectory(prefix="xfer-report-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_server(tmp / "server")
        progress(f"xfer-server listening on {server.target} (data dir {tmp / 'server' / 'data'})")
        try:
            # Operator: train the source models and register them.
            source_specs = {
                key: SourceSpec(
                    source=key,
                    arch=settings.arch,
                    epochs=settings.source_epochs,
                    lr=settings.source_lr,
                    seed=settings.source_seed,
                    out_dir=str(tmp / "sources" / key),
                    max_examples=settings.source_examples,
                    image_size=settings.imagenet_size,
                )
                for key in SOURCES
            }
            runner.run_all(
                source_specs.values(), label="source models", config=WorkerConfig(None, None, None, str(REPO_ROOT))
            )
            with client(server.target, token=server.operator_token, cache_dir=tmp / "operator-cache") as op:
                for key, spec in source_specs.items():
                    version = op.register(spec.out_dir, SOURCES[key].model_id)
                    op.set_alias(version.ref, "stable")
                    progress(f"registered {version.ref} (alias stable) as operator")

            # Client: pull every source once into the shared client cache; workers then hit the cache.
            cache = tmp / "client-cache"
            sources = []
            blocks: dict[str, list[str]] = {}
            pulled = 0
            with client(server.target, token=server.client_token, cache_dir=cache) as edge:
                for key, spec in source_specs.items():
                    ref = f"{SOURCES[key].model_id}@stable"
                    pull = edge.pull(ref, "safetensors")
                    loaded = edge.load_torch(ref)
                    pulled += pull.transferred_bytes
                    artifact = loaded.model_version.artifact("safetensors")
                    sources.append(
                        (loaded.model_version.ref, artifact.sha256, runner[spec].test_accuracy, artifact.size_bytes)
                    )
                    for target in TARGETS.values():
                        if target.source == key:
                            blocks[target.key] = list(loaded.card.blocks)
                    progress(f"pulled {loaded.model_version.ref} as client ({pull.transferred_bytes:,} bytes)")

            config = WorkerConfig(server.target, server.client_token, str(cache), str(REPO_ROOT))
            work_dir = tmp / "work"
            work_dir.mkdir()
            results = run_experiments(
                settings, runner, blocks=blocks, config=config, work_dir=str(work_dir), progress=progress
            )

            with client(server.target, token=server.client_token, cache_dir=cache) as edge:
                product = _product_facts(
                    edge, runner, settings=settings, target=server.target, sources=sources, pulled=pulled
                )
        finally:
            server.stop()

    verdicts = claims(results)
    data = ReportInput(
        settings=settings,
        results=results,
        claims=verdicts,
        product=product,
        wall_seconds=time.perf_counter() - progress.started,
        busy_seconds=runner.busy_seconds,
        cpu_seconds=runner.cpu_seconds,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    figures = make_figures(results, settings=settings, out_dir=out_dir)
    progress(f"wrote {len(figures)} figures under {out_dir / 'figures'}")
    report = out_dir / REPORT_NAME
    write_atomic(out_dir / JSON_NAME, json.dumps(results_json(data), indent=2, default=str) + "\n")
    write_atomic(report, render_markdown(data))
    progress(f"report written in {time.perf_counter() - started:.0f}s")
    return report


def _product_facts(edge, runner: Runner, *, settings: Settings, target: str, sources, pulled: int) -> ProductFacts:
    """Cross-checks the server's view (list_runs, summarize_runs) against the runs made here."""
    reported = [o for o in runner.results.values() if isinstance(o, (RunOutcome, SearchOutcome)) and o.model_version]
    listed = sum(len(edge.list_runs(model=SOURCES[key].model_id)) for key in SOURCES)
    boards = []
    for t in settings.strategy_targets:
        metric = cell_metric(t, per_class=settings.adapt_per_class, epsilon=None)
        board = edge.summarize_runs(metric=metric, model=SOURCES[TARGETS[t].source].model_id)
        local: dict[str, list[float]] = {}
        for o in reported:
            if (
                isinstance(o, RunOutcome)
                and (o.spec.target, o.spec.per_class, o.spec.epsilon) == (t, settings.adapt_per_class, None)
                and _is_default_lr(o.spec)
            ):
                local.setdefault(_strategy_label(o.spec.strategy), []).append(o.accuracy)
        local_means = {k: sum(v) / len(v) for k, v in local.items()}
        boards.append(LeaderboardTable(TARGETS[t].title, metric, tuple(board.entries), local_means))
    worker_bytes = sum(
        o.transferred_bytes for o in runner.results.values() if isinstance(o, (RunOutcome, SearchOutcome))
    )
    return ProductFacts(
        server_target=target,
        sources=tuple(sources),
        pulled_bytes=pulled,
        worker_pulled_bytes=worker_bytes,
        runs_reported=len(reported),
        runs_listed=listed,
        leaderboards=tuple(boards),
    )


def _is_default_lr(spec) -> bool:
    from xfer.client.finetune import get_strategy

    return math.isclose(spec.lr, get_strategy(spec.strategy).default_lr)


def _strategy_label(name: str) -> str:
    from xfer.client.finetune import get_strategy

    return get_strategy(name).label


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    from xfer.models import datasets
    from xfer.models.train import ARCHITECTURES

    if args.arch not in ARCHITECTURES:
        print(f"transfer_report: unknown --arch {args.arch!r}; valid: {', '.join(ARCHITECTURES)}", file=sys.stderr)
        return 2
    for name in ("fashion-mnist", "mnist5k"):
        if not datasets.is_available(name):
            print(f"transfer_report: {datasets.install_hint(name)}", file=sys.stderr)
            return 2
    if args.seeds is not None and args.seeds < 1:
        print("transfer_report: --seeds must be at least 1", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("transfer_report: --jobs must be at least 1", file=sys.stderr)
        return 2
    preset = Settings.quick_preset if args.quick else Settings.full
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    settings = preset(seeds=seeds, arch=args.arch, jobs=args.jobs)
    progress = Progress()
    progress(
        f"transfer report ({'quick' if args.quick else 'full'}): {seeds} seed(s), arch {args.arch}, "
        f"{args.jobs} worker(s) -> {args.out}"
    )
    report = generate(settings, out_dir=args.out.resolve(), progress=progress)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
