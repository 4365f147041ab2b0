"""The body of `xfer finetune` (client/cli.py owns the parser and the pull).

`add_arguments` declares the flags; `run` loads the data, fine-tunes (or
searches), writes the outputs and returns a `FinetuneOutcome` whose
`report_fields()` is exactly what a MetricsService `Run` carries (minus
`run_id` and `model_version`, which the caller knows). This is the only
module of the package that prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import time
from typing import Any, TextIO

from xfer.client.finetune.data import TargetData, load_target
from xfer.client.finetune.options import add_arguments  # noqa: F401  (the CLI declares these flags)
from xfer.client.domain import Run, pow2_at_least
from xfer.client.finetune.errors import FinetuneError, SearchError
from xfer.client.finetune.ledger import BudgetStatus, PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate
from xfer.client.finetune.output import OutputPaths, save_outputs
from xfer.client.finetune.privacy import PrivacyConfig
from xfer.client.finetune.search import SearchResult, search
from xfer.client.finetune.strategies import get_strategy
from xfer.client.finetune.trainer import EpochRecord, FinetuneResult, finetune
from xfer.models.base import XferModel
from xfer.models.card import ModelCard
from xfer.models.export import ParityReport

DEVICE_KINDS = {"cpu": "DEVICE_KIND_CPU", "cuda": "DEVICE_KIND_CUDA", "mps": "DEVICE_KIND_MPS"}
MAX_METRICS = 64


@dataclasses.dataclass
class FinetuneOutcome:
    """What `xfer finetune` produced."""

    result: FinetuneResult
    test_metrics: Metrics
    paths: OutputPaths
    parity: ParityReport
    dataset_id: str
    search: SearchResult | None
    budget: BudgetStatus | None
    wall_seconds: float

    def report_fields(self) -> dict[str, Any]:
        """The MetricsService `Run` fields (json_format.ParseDict-ready), no examples, size as 2^k."""
        r = self.result
        metrics = {**self.test_metrics.scalars()}
        if r.val_metrics is not None:
            metrics["val/accuracy"] = r.val_metrics.accuracy
        if self.search is not None:
            metrics["cv/accuracy"] = self.search.best.mean
        for i, name in enumerate(r.label_names):
            acc = self.test_metrics.per_class_accuracy.get(name)
            if acc is not None and len(metrics) < MAX_METRICS:
                metrics[f"class/{i}/accuracy"] = acc
        metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
        hyper = dict(r.hyperparameters)
        if self.search is not None:
            hyper["search_folds"] = str(len(self.search.folds))
            hyper["search_grid"] = ";".join(f"{row.strategy}@{row.lr:g}" for row in self.search.rows)[:256]
        p = r.privacy
        if p is not None:
            hyper["dp_accountant"] = p.accountant
            hyper["dp_target_epsilon"] = f"{p.target_epsilon:g}"
            if p.ghost_clipping:
                hyper["dp_ghost_clipping"] = "true"
        if self.search is not None and self.search.epsilon_total is not None and p is not None:
            epsilon = self.search.epsilon_total  # the search's folds spent privacy too
        else:
            epsilon = p.epsilon_spent if p else 0.0
        return {
            "strategy": {"name": r.strategy, "hyperparameters": {k: str(v)[:256] for k, v in hyper.items()}},
            "metrics": metrics,
            "privacy": {"dp": p is not None, "epsilon_spent": float(epsilon), "delta": p.delta if p else 0.0,
                        "noise_multiplier": p.noise_multiplier if p else 0.0,
                        "max_grad_norm": p.max_grad_norm if p else 0.0},
            "train_examples_pow2": pow2_at_least(r.train_examples),
            "device_kind": DEVICE_KINDS.get(r.device_kind, "DEVICE_KIND_UNSPECIFIED"),
            "wall_seconds": float(self.wall_seconds),
        }

    def to_run(self, *, run_id: str, model_version: str) -> Run:
        """The MetricsService run to report for this outcome."""
        return Run.from_report_fields(dict(self.report_fields()), model_version=model_version, run_id=run_id)

    def summary(self) -> str:
        """A short human-readable summary."""
        m = self.test_metrics
        lines = [(f"strategy {self.result.strategy}: test accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}, "
                  f"loss {m.loss:.4f}, ECE {m.ece:.4f} ({m.examples} examples)")]
        p = self.result.privacy
        if p is not None:
            eps = self.search.epsilon_total if self.search is not None else p.epsilon_spent
            lines.append(f"privacy: epsilon spent {eps:.3f} at delta {p.delta:.2e} (noise {p.noise_multiplier:.3f}, "
                         f"clip {p.max_grad_norm}, {p.accountant})")
            if self.budget is not None and self.budget.budget is not None:
                lines.append(f"privacy budget for {self.dataset_id}: {self.budget.spent:.3f} of "
                             f"{self.budget.budget:.3f} spent, {self.budget.remaining:.3f} left")
        lines.append(f"wrote {self.paths.weights}, {self.paths.onnx} (onnxruntime max |diff| "
                     f"{max(self.parity.max_abs_diff_logits, self.parity.max_abs_diff_features):.2e}), "
                     f"{self.paths.metrics}")
        return "\n".join(lines)


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _privacy(args: argparse.Namespace) -> PrivacyConfig | None:
    if args.dp_epsilon is None:
        if args.dp_delta is not None or args.ghost_clipping or args.privacy_budget is not None:
            raise FinetuneError("--dp-delta, --ghost-clipping and --privacy-budget need --dp-epsilon")
        return None
    return PrivacyConfig(epsilon=args.dp_epsilon, delta=args.dp_delta, max_grad_norm=args.max_grad_norm,
                         accountant=args.accountant, ghost_clipping=args.ghost_clipping)


def run(args: argparse.Namespace, *, model: XferModel, card: ModelCard, cache_dir: pathlib.Path,
        progress: bool, out: TextIO | None = None) -> FinetuneOutcome:
    """Runs `xfer finetune` on a pulled model; prints progress to `out` (default stdout) if asked."""
    out = out or sys.stdout
    started = time.perf_counter()
    strategies = _split_list(args.strategy)
    try:
        lrs = [float(v) for v in _split_list(args.lr)]
    except ValueError:
        raise FinetuneError(f"--lr must be a number (or a comma-separated list with --search), got {args.lr!r}") from None
    for name in strategies:
        get_strategy(name)  # fail on a typo before loading anything
    if not args.search and (len(strategies) != 1 or len(lrs) > 1):
        raise SearchError("several strategies or learning rates need --search")
    privacy = _privacy(args)
    target: TargetData = load_target(args.data, card=card, seed=args.seed)
    dataset_id = args.dataset_id or target.dataset_id
    ledger = PrivacyLedger.in_cache(cache_dir) if privacy is not None else None

    def on_epoch(record: EpochRecord) -> None:
        if progress:
            val = "" if record.val_loss is None else f"  val loss {record.val_loss:.4f}  val acc {record.val_accuracy:.4f}"
            print(f"  epoch {record.epoch:3d} [{record.phase}] train loss {record.train_loss:.4f}{val}", file=out, flush=True)

    common = {"card": card, "epochs": args.epochs, "batch_size": args.batch_size, "schedule": args.schedule,
              "weight_decay": args.weight_decay, "patience": args.patience, "reinit_head": args.reinit_head,
              "device": args.device}
    found = None
    if args.search:
        if progress:
            print(f"cross-validating {len(strategies)} strategies x {len(lrs) or 3} LRs over {args.folds} folds "
                  f"on {len(target.train)} training examples", file=out, flush=True)
        found = search(model, train=target.train, val=target.val, test=target.test, strategies=strategies,
                       lrs=lrs or None, folds=args.folds, label_names=target.label_names, privacy=privacy,
                       ledger=ledger, dataset_id=dataset_id, privacy_budget=args.privacy_budget, seed=args.seed,
                       **common)
        result, test_metrics = found.final, found.test_metrics
        if progress:
            print(found.table(), file=out, flush=True)
            print(f"best: {found.best.strategy} lr={found.best.lr:g}; retrained on all training data", file=out, flush=True)
    else:
        if progress:
            print(f"fine-tuning with {strategies[0]} on {len(target.train)} examples", file=out, flush=True)
        result = finetune(model, train=target.train, val=target.val, strategy=strategies[0],
                          lr=lrs[0] if lrs else None, label_names=target.label_names, privacy=privacy,
                          ledger=ledger, dataset_id=dataset_id, privacy_budget=args.privacy_budget, seed=args.seed,
                          on_epoch=on_epoch, **common)
        test_metrics = evaluate(result.model, target.test.x, target.test.y, label_names=target.label_names)
    budget = ledger.status(dataset_id, budget=args.privacy_budget) if ledger is not None else None
    metrics = {**test_metrics.to_dict(), "split": "test", "strategy": result.strategy,
               "hyperparameters": result.hyperparameters, "head_reset": result.head_reset,
               "val": result.val_metrics.to_dict() if result.val_metrics else None,
               "privacy": dataclasses.asdict(result.privacy) if result.privacy else None,
               "cv": [{"strategy": r.strategy, "lr": r.lr, "scores": list(r.scores), "mean": r.mean, "std": r.std}
                      for r in found.rows] if found else None}
    if found is not None and found.epsilon_total is not None:
        metrics["privacy"]["search_epsilon_total"] = found.epsilon_total
    paths, parity = save_outputs(model=result.model, out_dir=args.out, card=card, label_names=target.label_names,
                                 strategy=result.strategy, metrics=metrics)
    outcome = FinetuneOutcome(result, test_metrics, paths, parity, dataset_id, found, budget,
                              time.perf_counter() - started)
    if progress:
        print(outcome.summary(), file=out, flush=True)
    return outcome
