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
import time
from typing import Any

from xfer.client.finetune.data import TargetData, load_target
from xfer.client.domain import pow2_at_least
from xfer.client.finetune.devices import DEVICE_CHOICES
from xfer.client.finetune.errors import FinetuneError, SearchError
from xfer.client.finetune.ledger import BudgetStatus, PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate
from xfer.client.finetune.output import OutputPaths, save_outputs
from xfer.client.finetune.privacy import ACCOUNTANTS, PrivacyConfig
from xfer.client.finetune.schedules import SCHEDULES
from xfer.client.finetune.search import SearchResult, search
from xfer.client.finetune.strategies import get_strategy, list_strategies
from xfer.client.finetune.trainer import EpochRecord, FinetuneResult, finetune
from xfer.models.base import XferModel
from xfer.models.card import ModelCard
from xfer.models.export import ParityReport

DEVICE_KINDS = {"cpu": "DEVICE_KIND_CPU", "cuda": "DEVICE_KIND_CUDA", "mps": "DEVICE_KIND_MPS"}
MAX_METRICS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the `xfer finetune` flags on `parser`."""
    parser.add_argument("data", help="data spec: digits[:shift=blur,classes=5-9,per_class=5], file.npz, "
                                     "file.csv[:label=col] or an image folder (see client/finetune/data.py)")
    parser.add_argument("--strategy", default="lp-ft",
                        help=f"one of {', '.join(list_strategies())}; with --search a comma-separated list "
                             f"(default: lp-ft)")
    parser.add_argument("--lr", default=None,
                        help="learning rate (default: the strategy's own); with --search a comma-separated "
                             "grid (default: each strategy's LR x 0.3, 1, 3)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="cosine")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--patience", type=int, default=None,
                        help="stop a phase after this many epochs without validation improvement")
    parser.add_argument("--reinit-head", action="store_true",
                        help="re-initialise the head even if the label set matches the card's")
    parser.add_argument("--search", action="store_true",
                        help="choose strategy x LR by k-fold cross-validation on the training split")
    parser.add_argument("--folds", type=int, default=3, help="folds for --search (default 3)")
    parser.add_argument("--dp-epsilon", type=float, default=None,
                        help="train with DP-SGD to this target epsilon (per run)")
    parser.add_argument("--dp-delta", type=float, default=None, help="DP delta (default min(1e-5, 1/n^1.1))")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP per-example clipping norm")
    parser.add_argument("--accountant", choices=ACCOUNTANTS, default="prv")
    parser.add_argument("--ghost-clipping", action="store_true", help="DP with ghost clipping (less memory)")
    parser.add_argument("--privacy-budget", type=float, default=None,
                        help="total epsilon allowed on this data set; recorded in the local privacy ledger")
    parser.add_argument("--dataset-id", default=None,
                        help="privacy-ledger key of the data (default: derived from the data)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("finetune-out"),
                        help="output folder for model.safetensors, model.onnx, metrics.json, card.json")


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
        progress: bool) -> FinetuneOutcome:
    """Runs `xfer finetune` on a pulled model; prints progress if asked; returns the outcome."""
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
            print(f"  epoch {record.epoch:3d} [{record.phase}] train loss {record.train_loss:.4f}{val}", flush=True)

    common = {"card": card, "epochs": args.epochs, "batch_size": args.batch_size, "schedule": args.schedule,
              "weight_decay": args.weight_decay, "patience": args.patience, "reinit_head": args.reinit_head,
              "device": args.device}
    found = None
    if args.search:
        if progress:
            print(f"cross-validating {len(strategies)} strategies x {len(lrs) or 3} LRs over {args.folds} folds "
                  f"on {len(target.train)} training examples", flush=True)
        found = search(model, train=target.train, val=target.val, test=target.test, strategies=strategies,
                       lrs=lrs or None, folds=args.folds, label_names=target.label_names, privacy=privacy,
                       ledger=ledger, dataset_id=dataset_id, privacy_budget=args.privacy_budget, seed=args.seed,
                       **common)
        result, test_metrics = found.final, found.test_metrics
        if progress:
            print(found.table(), flush=True)
            print(f"best: {found.best.strategy} lr={found.best.lr:g}; retrained on all training data", flush=True)
    else:
        if progress:
            print(f"fine-tuning with {strategies[0]} on {len(target.train)} examples", flush=True)
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
        print(outcome.summary(), flush=True)
    return outcome
