"""The body of `xfer fit-head REF DATA` (the `xfer` CLI owns the parser, the pull and the report).

`add_arguments(parser)` declares the flags; `run(args, onnx_path=..., card=...,
cache_dir=..., progress=...)` loads DATA, fits the head on the pulled ONNX
model's features, writes model.onnx / card.json / metrics.json to --out and
returns a `FitHeadOutcome` whose `report_fields()` is what a MetricsService
`Run` carries (minus run_id and model_version), exactly like
`xfer finetune`'s outcome, or `to_run(run_id=..., model_version=...)`.
Only numpy, onnx and onnxruntime are needed (scikit-learn for `digits`).
This is the only module of the package that prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Any, TextIO

from xfer.client.domain import Run
from xfer.client.finetune.ledger import BudgetStatus, PrivacyLedger
from xfer.client.onnxhead.api import HeadFitResult, fit_head
from xfer.client.onnxhead.data import HeadData, load_data
from xfer.client.onnxhead.errors import HeadError
from xfer.client.onnxhead.features import SessionOptions
from xfer.client.onnxhead.heads import HeadConfig, list_heads
from xfer.client.onnxhead.private import NoisyGDConfig, PrivacyConfig
from xfer.client.onnxhead.prototype import METRICS
from xfer.client.seeds import seed_argument
from xfer.models.card import ModelCard


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the `xfer fit-head` flags on `parser` (DATA positional; REF is the caller's)."""
    parser.add_argument(
        "data",
        help="any data spec xfer finetune takes: file.npz, file.csv, an image folder, "
        "or a built-in data set such as fashion-mnist:classes=5-9,per_class=5",
    )
    parser.add_argument(
        "--head",
        choices=list_heads(),
        default="logreg",
        help="logreg: multinomial logistic regression (L-BFGS, L2 chosen on the validation "
        "split); prototype: nearest class mean (default: logreg)",
    )
    parser.add_argument("--metric", choices=METRICS, default="cosine", help="prototype head metric")
    parser.add_argument("--l2", type=float, default=None, help="logreg L2 penalty (default: chosen on val)")
    parser.add_argument(
        "--scale", type=float, default=None, help="prototype logit scale (inverse temperature; default: fitted on val)"
    )
    parser.add_argument(
        "--test",
        default=None,
        help="a separate test file (any file spec); DATA is then split 80/20 into train/val "
        "(default: DATA split 60/20/20 as `xfer finetune` does)",
    )
    parser.add_argument(
        "--dp-epsilon", type=float, default=None, help="fit with differential privacy at this epsilon (whole run)"
    )
    parser.add_argument(
        "--dp-delta",
        type=float,
        default=None,
        help="DP delta (default min(1e-5, 1/B^1.1), B the training-set size rounded up to 2^k)",
    )
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP logreg per-example clipping norm")
    parser.add_argument(
        "--dp-steps",
        type=int,
        default=NoisyGDConfig.steps,
        help=f"DP logreg full-batch gradient steps (default {NoisyGDConfig.steps})",
    )
    parser.add_argument(
        "--privacy-budget",
        type=float,
        default=None,
        help="total epsilon allowed on this data set; recorded in the local privacy ledger",
    )
    parser.add_argument(
        "--dataset-id",
        default=None,
        help="privacy-ledger key of the data (default: derived from the data, as xfer finetune)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="feature extraction batch size")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime CPU threads (0: all)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="data split seed")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("fit-head-out"),
        help="output folder for model.onnx, card.json, metrics.json",
    )


@dataclasses.dataclass(frozen=True, eq=False)
class FitHeadOutcome:
    """What `xfer fit-head` produced, and what its report may say."""

    result: HeadFitResult
    dataset_id: str
    min_eval_examples: int
    budget: BudgetStatus | None

    def to_run(self, *, run_id: str, model_version: str) -> Run:
        """The report of this run (metrics rounded for the split the command made)."""
        return self.result.to_run(run_id=run_id, model_version=model_version, min_eval_examples=self.min_eval_examples)

    def report_fields(self) -> dict[str, Any]:
        """The MetricsService `Run` fields (json_format.ParseDict-ready), as `xfer finetune`'s outcome has them."""
        return self.result.report_fields(min_eval_examples=self.min_eval_examples)

    def summary(self) -> str:
        """A short human-readable summary (exact local numbers)."""
        r = self.result
        m = r.test_metrics
        lines = [
            f"head {r.strategy}: test accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}, loss {m.loss:.4f}, "
            f"ECE {m.ece:.4f} ({m.examples} examples)"
            if m
            else f"head {r.strategy}"
        ]
        if r.privacy is not None:
            p = r.privacy
            lines.append(
                f"privacy: epsilon spent {p.epsilon_spent:.3f} at delta {p.delta:.2e} "
                f"(noise multiplier {p.noise_multiplier:.3f}, gdp-analytic accountant)"
            )
            if self.budget is not None and self.budget.budget is not None:
                lines.append(
                    f"privacy budget for {self.dataset_id}: {self.budget.spent:.3f} of "
                    f"{self.budget.budget:.3f} spent, {self.budget.remaining:.3f} left"
                )
        if r.outputs is not None and r.verification is not None:
            lines.append(
                f"wrote {r.outputs.onnx} (onnxruntime = numpy head to {r.verification.max_abs_diff_logits:.1e}), "
                f"{r.outputs.card or '(no card)'}, {r.outputs.metrics}"
            )
        return "\n".join(lines)


def _privacy(args: argparse.Namespace) -> PrivacyConfig | None:
    if args.dp_epsilon is None:
        if args.dp_delta is not None or args.privacy_budget is not None:
            raise HeadError("--dp-delta and --privacy-budget need --dp-epsilon")
        return None
    return PrivacyConfig(epsilon=args.dp_epsilon, delta=args.dp_delta, max_grad_norm=args.max_grad_norm)


def config_from_args(args: argparse.Namespace) -> tuple[HeadConfig, PrivacyConfig | None]:
    """The validated head and privacy settings of `xfer fit-head` (HeadError/PrivacyError on a bad flag)."""
    privacy = _privacy(args)
    config = HeadConfig(
        l2=args.l2,
        metric=args.metric,
        scale=args.scale,
        dp=NoisyGDConfig(steps=args.dp_steps),
        batch_size=args.batch_size,
        seed=args.seed,
        session=SessionOptions(intra_op_threads=args.threads),
    )
    return config, privacy


def run(
    args: argparse.Namespace,
    *,
    onnx_path: str | pathlib.Path,
    card: ModelCard,
    cache_dir: pathlib.Path,
    progress: bool,
    out: TextIO | None = None,
) -> FitHeadOutcome:
    """Runs `xfer fit-head` on a pulled ONNX model; prints progress to `out` (default stdout) if asked."""
    out = out or sys.stdout
    config, privacy = config_from_args(args)
    data: HeadData = load_data(args.data, card=card, seed=args.seed, test=args.test)
    dataset_id = args.dataset_id or data.dataset_id
    ledger = PrivacyLedger.in_cache(cache_dir) if privacy is not None else None
    if progress:
        print(
            f"fitting a {args.head} head on the features of {len(data.train)} training examples"
            + (f" with DP (epsilon={privacy.epsilon:g})" if privacy else ""),
            file=out,
            flush=True,
        )
    result = fit_head(
        onnx_path,
        train=data.train,
        val=data.val,
        test=data.test,
        strategy=args.head,
        label_names=data.label_names,
        card=card,
        privacy=privacy,
        ledger=ledger,
        dataset_id=dataset_id,
        privacy_budget=args.privacy_budget,
        config=config,
        out_dir=args.out,
    )
    budget = ledger.status(dataset_id, budget=args.privacy_budget) if ledger is not None else None
    outcome = FitHeadOutcome(result, dataset_id, data.min_eval_examples, budget)
    if progress:
        print(outcome.summary(), file=out, flush=True)
    return outcome
