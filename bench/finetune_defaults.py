"""Measures the fine-tuning defaults on the digits targets: the tables of the README's adaptation section.

    .venv/bin/python bench/finetune_defaults.py defaults   # every strategy, few-label and all-label, 3 seeds
    .venv/bin/python bench/finetune_defaults.py dp         # DP defaults at epsilon 2 (the demo's setting)
    .venv/bin/python bench/finetune_defaults.py dp-sweep   # one knob at a time around the DP defaults

Sources are trained here with `xfer.models.train` (convnet, 30 epochs): one on all ten digits of the
source pool (for the shifted targets) and one on digits 0-4 (for the unseen digits 5-9, as in the demo).
Few-label mode is 5 labels per class and no validation split (everything the client has labelled is
the 5 per class); all-label mode is the 60/20/20 split with its validation split. Test accuracy on the
held-out test split, mean ± sample std over seeds. Runs go through `adapt`, the API `xfer finetune` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

SOURCES = {"all10": tuple(range(10)), "digits0-4": (0, 1, 2, 3, 4)}
TARGETS = {  # name -> (data spec, source)
    "invert": ("digits:shift=invert", "all10"),
    "permute-labels": ("digits:shift=permute-labels", "all10"),
    "blur": ("digits:shift=blur", "all10"),
    "unseen 5-9": ("digits:classes=5-9", "digits0-4"),
}
STRATEGIES = ("full", "linear-probe", "lp-ft", "discriminative", "gradual-unfreeze", "surgical:block1", "surgical:auto")
FEW = 5


@dataclasses.dataclass(frozen=True)
class Job:
    target: str
    strategy: str
    few: bool
    seed: int
    epsilon: float | None = None
    overrides: tuple[tuple[str, float], ...] = ()


_SOURCES: dict[str, Path] = {}


def _init(sources: dict[str, Path]) -> None:
    import torch

    torch.set_num_threads(1)
    _SOURCES.update(sources)


def run_job(job: Job) -> tuple[Job, float, float]:
    import json as _json

    from xfer.client.finetune import FinetuneConfig, PrivacyConfig, adapt, load_target
    from xfer.models.card import ModelCard
    from xfer.models.weights import load_safetensors, model_from_card

    spec, source = TARGETS[job.target]
    folder = _SOURCES[source]
    card = ModelCard.from_dict(_json.loads((folder / "card.json").read_text()))
    model = load_safetensors(model_from_card(card), folder / "model.safetensors")
    target = load_target(spec + (f",per_class={FEW}" if job.few else ""), card=card, seed=job.seed)
    if job.few:  # few-label mode: the K per class are all the labels there are
        target = dataclasses.replace(target, val=None)
    over = dict(job.overrides)
    clip = over.pop("max_grad_norm", None)
    privacy = None if job.epsilon is None else PrivacyConfig(epsilon=job.epsilon, max_grad_norm=clip)
    fields = {k: (int(v) if k in ("steps", "batch_size") else v) for k, v in over.items()}
    config = FinetuneConfig(strategy=job.strategy, device="cpu", seed=job.seed, privacy=privacy, **fields)
    started = time.perf_counter()
    outcome = adapt(model, target=target, config=config, card=card)
    assert outcome.test_metrics is not None
    return job, outcome.test_metrics.accuracy, time.perf_counter() - started


def _sources(root: Path) -> dict[str, Path]:
    from xfer.models.train import train_source_model

    out = {}
    for name, classes in SOURCES.items():
        folder = root / name
        if not (folder / "card.json").exists():
            train_source_model(out_dir=folder, arch="convnet", classes=classes, epochs=30, seed=0)
        out[name] = folder
    return out


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _run(jobs: list[Job], sources: dict[str, Path], workers: int) -> dict[Job, float]:
    results: dict[Job, float] = {}
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init, initargs=(sources,)) as pool:
        for job, acc, seconds in pool.imap_unordered(run_job, jobs):
            results[job] = acc
            print(f"# {job} -> {acc:.3f} ({seconds:.1f} s)", file=sys.stderr, flush=True)
    return results


def table_defaults(
    sources: dict[str, Path], *, seeds: int, workers: int, targets: list[str], strategies: list[str]
) -> str:
    jobs = [Job(t, s, few, seed) for t in targets for s in strategies for few in (True, False) for seed in range(seeds)]
    results = _run(jobs, sources, workers)
    head = (
        "| strategy | "
        + " | ".join(f"{t} ({'5/class' if few else 'all'})" for t in targets for few in (True, False))
        + " |"
    )
    lines = [head, "|" + " --- |" * (1 + 2 * len(targets))]
    for s in strategies:
        cells = [
            _cell([results[Job(t, s, few, seed)] for seed in range(seeds)]) for t in targets for few in (True, False)
        ]
        lines.append(f"| `{s}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_dp(sources: dict[str, Path], *, seeds: int, workers: int, epsilon: float) -> str:
    strategies = ("linear-probe", "lp-ft")
    jobs = [
        Job("unseen 5-9", s, few, seed, epsilon) for s in strategies for few in (True, False) for seed in range(seeds)
    ]
    jobs += [Job("unseen 5-9", s, few, seed) for s in strategies for few in (True, False) for seed in range(seeds)]
    results = _run(jobs, sources, workers)
    lines = [f"| strategy | data | no DP | DP ε={epsilon:g} |", "| --- | --- | --- | --- |"]
    for s in strategies:
        for few in (True, False):
            lines.append(
                f"| `{s}` | {'5/class' if few else 'all'} | "
                f"{_cell([results[Job('unseen 5-9', s, few, seed)] for seed in range(seeds)])} | "
                f"{_cell([results[Job('unseen 5-9', s, few, seed, epsilon)] for seed in range(seeds)])} |"
            )
    return "\n".join(lines)


def table_dp_sweep(sources: dict[str, Path], *, seeds: int, workers: int, epsilon: float) -> str:
    knobs: list[tuple[tuple[str, float], ...]] = [()]
    for steps in (50, 200, 400):
        knobs.append((("steps", steps),))
    for batch in (32, 64, 256):
        knobs.append((("batch_size", batch),))
    for lr_mult in (1 / 3, 10 / 3):
        knobs.append((("lr_mult", lr_mult),))
    for clip in (0.1, 10.0):
        knobs.append((("max_grad_norm", clip),))
    from xfer.client.finetune.strategies import get_strategy

    jobs = []
    for s in ("linear-probe", "lp-ft"):
        base = get_strategy(s).default_lr * 3
        for knob in knobs:
            over = tuple((("lr", base * v) if k == "lr_mult" else (k, v)) for k, v in knob)
            jobs += [Job("unseen 5-9", s, False, seed, epsilon, over) for seed in range(seeds)]
    results = _run(jobs, sources, workers)
    lines = [
        f"| strategy | change from the DP default (ε={epsilon:g}, all labels, unseen 5-9) | test accuracy |",
        "| --- | --- | --- |",
    ]
    for s in ("linear-probe", "lp-ft"):
        base = get_strategy(s).default_lr * 3
        for knob in knobs:
            over = tuple((("lr", base * v) if k == "lr_mult" else (k, v)) for k, v in knob)
            label = ", ".join(f"{k}={v:g}" for k, v in over) or "default"
            lines.append(
                f"| `{s}` | {label} | "
                f"{_cell([results[Job('unseen 5-9', s, False, seed, epsilon, over)] for seed in range(seeds)])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("defaults", "dp", "dp-sweep"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="rows of the defaults table")
    parser.add_argument("--sources", type=Path, default=None, help="folder to keep the trained sources in")
    args = parser.parse_args(argv)
    root = args.sources or Path(tempfile.mkdtemp(prefix="xfer-sources-"))
    sources = _sources(root)
    started = time.perf_counter()
    if args.table == "defaults":
        targets, strategies = args.targets.split(","), args.strategies.split(",")
        print(table_defaults(sources, seeds=args.seeds, workers=args.workers, targets=targets, strategies=strategies))
    elif args.table == "dp":
        print(table_dp(sources, seeds=args.seeds, workers=args.workers, epsilon=args.epsilon))
    else:
        print(table_dp_sweep(sources, seeds=args.seeds, workers=args.workers, epsilon=args.epsilon))
    print(f"\n({time.perf_counter() - started:.0f} s; {json.dumps({'seeds': args.seeds})})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
