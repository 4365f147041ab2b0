"""The body of `xfer finetune` (client/cli owns the parser and the pull).

`add_arguments` (from `options`, torch-free) declares the flags;
`config_from_args` turns them into the engine's one frozen `FinetuneConfig`
(the only place that sees an `argparse.Namespace`); `run` loads the data,
calls `pipeline.adapt` and returns its `FinetuneOutcome`, whose
`to_run(run_id=..., model_version=...)` is the `Run` to report. This is the
only module of the package that prints.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import TextIO

from xfer.client.finetune.config import FinetuneConfig, PrivacyConfig, SearchConfig, SelfPretrainConfig
from xfer.client.finetune.data import load_target
from xfer.client.finetune.errors import FinetuneError, SearchError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.options import add_arguments
from xfer.client.finetune.pipeline import FinetuneOutcome, adapt
from xfer.client.finetune.search import CVRow
from xfer.client.finetune.sfda_selection import source_free_training_data, uses_source_free
from xfer.client.finetune.strategies import get_strategy
from xfer.client.finetune.trainer import RoundRecord
from xfer.models.base import XferModel
from xfer.models.card import ModelCard

__all__ = ["FinetuneOutcome", "add_arguments", "config_from_args", "run"]


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The `FinetuneConfig` the `xfer finetune` flags describe; raises FinetuneError on a bad combination."""
    strategies = _split_list(args.strategy)
    try:
        lrs = [float(v) for v in _split_list(args.lr)]
    except ValueError:
        raise FinetuneError(
            f"--lr must be a number (or a comma-separated list with --search), got {args.lr!r}"
        ) from None
    for name in strategies:
        get_strategy(name)  # fail on a typo before loading anything
    if not args.search and (len(strategies) != 1 or len(lrs) > 1):
        raise SearchError("several strategies or learning rates need --search")
    if not args.search and args.trials is not None:
        raise SearchError("--trials needs --search")
    privacy = None
    if args.dp_epsilon is None:
        if (
            args.dp_delta is not None
            or args.ghost_clipping
            or args.privacy_budget is not None
            or args.max_grad_norm is not None
        ):
            raise FinetuneError("--dp-delta, --max-grad-norm, --ghost-clipping and --privacy-budget need --dp-epsilon")
    else:
        privacy = PrivacyConfig(
            epsilon=args.dp_epsilon,
            delta=args.dp_delta,
            max_grad_norm=args.max_grad_norm,
            accountant=args.accountant,
            ghost_clipping=args.ghost_clipping,
            budget=args.privacy_budget,
        )
    search = None
    if args.search:
        given_strategy = args.strategy != "lp-ft" or len(strategies) != 1
        search = SearchConfig(
            **({"strategies": tuple(strategies)} if given_strategy else {}),
            lrs=tuple(lrs) if lrs else None,
            folds=args.folds,
            trials=args.trials,
        )
    pretext = None
    if args.self_pretrain_steps:
        pretext = SelfPretrainConfig(
            steps=args.self_pretrain_steps,
            objective=args.self_pretrain,
            lr=args.self_pretrain_lr,
            batch_size=args.self_pretrain_batch_size,
            epsilon_share=args.self_pretrain_epsilon_share,
        )
    return FinetuneConfig(
        strategy=strategies[0],
        lr=lrs[0] if lrs and not args.search else None,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
        patience=args.patience,
        eval_every=args.eval_every,
        reinit_head=args.reinit_head,
        device=args.device,
        seed=args.seed,
        privacy=privacy,
        search=search,
        head=args.head,
        self_pretrain=pretext,
        **({"criterion": args.criterion} if getattr(args, "criterion", None) else {}),
    )


def run(
    args: argparse.Namespace,
    *,
    model: XferModel,
    card: ModelCard,
    cache_dir: pathlib.Path,
    progress: bool,
    out: TextIO | None = None,
) -> FinetuneOutcome:
    """Runs `xfer finetune` on a pulled model; prints progress to `out` (stdout) if asked; returns the outcome.

    With `--episodes` it evaluates the model on few-shot episodes instead and returns a
    `xfer.client.fewshot.FewShotOutcome` (the same reporting interface).
    """
    out = out if out is not None else sys.stdout
    if args.episodes is not None:
        from xfer.client.fewshot.command import run as run_episodes

        return run_episodes(args, model=model, card=card, progress=progress, out=out)  # type: ignore[return-value]
    config = config_from_args(args)
    target = load_target(args.data, card=card, seed=args.seed)
    ledger = PrivacyLedger.in_cache(cache_dir) if config.privacy is not None else None

    def on_progress(record: RoundRecord) -> None:
        if progress:
            val = (
                ""
                if record.val_loss is None
                else f"  val loss {record.val_loss:.4f}  val acc {record.val_accuracy:.4f}"
            )
            if record.label_free:
                val = f"  val {config.criterion} {record.label_free[config.criterion]:.4f} (label-free)"
            print(
                f"  step {record.step:5d} [{record.phase}] train loss {record.train_loss:.4f}{val}",
                file=out,
                flush=True,
            )

    def on_row(row: CVRow) -> None:
        if progress:
            print(f"  {row.strategy} lr={row.lr:g}: {' '.join(f'{s:.3f}' for s in row.scores)}", file=out, flush=True)

    if progress:
        mode = "few-label mode, no validation split" if target.val is None else f"{len(target.val)} validation"
        if uses_source_free(config):
            unlabelled = (
                "no validation split: the last step is kept"
                if target.val is None
                else f"{len(target.val)} unlabelled validation examples score the label-free {config.criterion} criterion"
            )
            what = (
                f"label-free search over {', '.join(config.search.strategies)}"
                if config.search is not None
                else f"source-free adaptation with {config.strategy_label}"
            )
            print(
                f"{what} on {len(source_free_training_data(target))} examples without their labels ({unlabelled})",
                file=out,
                flush=True,
            )
        elif config.search is None:
            print(
                f"fine-tuning with {config.strategy_label} on {len(target.train)} examples ({mode})",
                file=out,
                flush=True,
            )
        elif config.privacy is None:
            print(
                f"cross-validating over {config.search.folds} folds on {len(target.train)} training examples ({mode})",
                file=out,
                flush=True,
            )
        else:
            print(
                f"private selection on {len(target.train)} training examples, epsilon {config.privacy.epsilon:g} "
                f"for the whole search",
                file=out,
                flush=True,
            )
    outcome = adapt(
        model,
        target=target,
        config=config,
        card=card,
        ledger=ledger,
        dataset_id=args.dataset_id or target.dataset_id,
        out_dir=args.out,
        on_progress=on_progress,
        on_row=on_row,
    )
    if progress:
        if outcome.search is not None:
            print(outcome.search.table(), file=out, flush=True)
            found = outcome.search
            how = (
                "its own model is the result" if found.private or not found.folds else "retrained on all training data"
            )
            print(f"best: {found.best.strategy} lr={found.best.lr:g}; {how}", file=out, flush=True)
        print(outcome.summary(), file=out, flush=True)
    return outcome
