"""`xfer finetune REF DATA --episodes N --ways W --shots 1,5`: episodic evaluation instead of fine-tuning.

`client.finetune.options` declares the flags (torch-free); `client.finetune.command.run`
hands over here when `--episodes` is given. The episodes are drawn from every
labelled example of DATA (all splits pooled: nothing is trained across
episodes, so no split is needed); the features are computed once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from xfer.client.fewshot.config import EpisodeConfig
from xfer.client.fewshot.errors import FewShotError
from xfer.client.fewshot.evaluate import evaluate_model_episodes
from xfer.client.fewshot.outcome import EpisodePaths, FewShotOutcome
from xfer.client.finetune.data import TargetData, load_target
from xfer.models.base import XferModel
from xfer.models.card import ModelCard
from xfer.models.files import write_json_atomic
from xfer.models.multitask import select_head

METRICS_NAME = "episodes.json"
#: Fine-tuning flags that mean nothing for an episodic evaluation (name -> its default).
FINETUNE_ONLY = {
    "search": False,
    "dp_epsilon": None,
    "self_pretrain_steps": 0,
    "privacy_budget": None,
    "steps": None,
    "epochs": None,
    "lr": None,
    "reinit_head": False,
}


def config_from_args(args: argparse.Namespace) -> EpisodeConfig:
    """The EpisodeConfig the flags describe; raises FewShotError on a bad value or a fine-tuning-only flag."""
    given = [name for name, default in FINETUNE_ONLY.items() if getattr(args, name, default) != default]
    if given:
        flags = ", ".join("--" + g.replace("_", "-") for g in given)
        raise FewShotError(f"--episodes evaluates the pulled model without fine-tuning it; {flags} do not apply")
    try:
        shots = tuple(int(v) for v in str(args.shots).split(",") if v.strip())
    except ValueError:
        raise FewShotError(f"--shots must be comma-separated whole numbers, e.g. 1,5; got {args.shots!r}") from None
    heads = tuple(h.strip() for h in str(args.episode_heads).split(",") if h.strip())
    return EpisodeConfig(
        episodes=args.episodes,
        ways=args.ways,
        shots=shots,
        queries=args.queries,
        heads=heads,
        finetune_steps=args.episode_steps,
        finetune_lr=args.episode_lr,
        seed=args.seed,
    )


def labelled_pool(target: TargetData) -> tuple[torch.Tensor, np.ndarray]:
    """Every labelled example of the target (train, val and test splits together)."""
    parts = [p for p in (target.train, target.val, target.test) if p is not None and p.y is not None]
    if not parts:
        raise FewShotError(f"{target.spec}: episodes need labelled examples; this data has none")
    return torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]).numpy()


def run(
    args: argparse.Namespace, *, model: XferModel, card: ModelCard, progress: bool, out: TextIO | None = None
) -> FewShotOutcome:
    """Runs the episodic evaluation of `model` on DATA; prints progress to `out` if asked; returns the outcome."""
    out = out if out is not None else sys.stdout
    config = config_from_args(args)
    chosen = select_head(model, card=card, head=getattr(args, "head", None))
    target = load_target(args.data, card=chosen.card or card, seed=args.seed)
    x, y = labelled_pool(target)
    if progress:
        print(
            f"{config.episodes} {config.ways}-way episodes per shot count ({', '.join(map(str, config.shots))}) on "
            f"{len(y)} labelled examples, heads {', '.join(config.heads)}",
            file=out,
            flush=True,
        )
    report = evaluate_model_episodes(chosen.model, x, y, config=config, card=chosen.card or card)
    tuning_steps = tuning_lr = None
    if "finetune" in config.heads:
        from xfer.client.fewshot.adapt import EpisodeTuning

        tuning = EpisodeTuning.for_card(
            chosen.card or card, ways=config.ways, steps=config.finetune_steps, lr=config.finetune_lr
        )
        tuning_steps, tuning_lr = tuning.steps, tuning.lr
    outcome = FewShotOutcome(
        report=report,
        dataset_id=target.dataset_id,
        head=chosen.head,
        finetune_steps=tuning_steps,
        finetune_lr=tuning_lr,
    )
    if args.out is not None:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / METRICS_NAME, outcome.local_metrics())
        outcome = FewShotOutcome(
            report=report,
            dataset_id=target.dataset_id,
            head=chosen.head,
            finetune_steps=tuning_steps,
            finetune_lr=tuning_lr,
            paths=EpisodePaths(folder / METRICS_NAME),
        )
    if progress:
        print(outcome.summary(), file=out, flush=True)
    return outcome
