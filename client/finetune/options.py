"""The flags of `xfer finetune`, declared without importing torch.

The `xfer` parser is built on every invocation, also on edge devices that
have no torch installed; only running the command imports the engine.
`xfer.client.finetune.command.config_from_args` turns the parsed flags into
the engine's one frozen `FinetuneConfig`.
"""

from __future__ import annotations

import argparse
import pathlib

from xfer.client.fewshot.config import DEFAULT_QUERIES, EPISODE_HEADS
from xfer.client.finetune.config import (
    ACCOUNTANTS,
    DEFAULT_CRITERION,
    DEVICE_CHOICES,
    LABEL_FREE_CRITERIA,
    SELF_PRETRAIN_OBJECTIVES,
)
from xfer.client.finetune.schedules import SCHEDULES
from xfer.client.seeds import seed_argument

#: Strategy names for the help text; tests check they equal the engine's registry.
STRATEGY_HELP = (
    "full, linear-probe, lp-ft, discriminative, gradual-unfreeze, surgical:BLOCK, surgical:auto, tent, shot, aad, nrc"
)
ACCOUNTANT_CHOICES = ACCOUNTANTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the `xfer finetune` flags (after REF) on `parser`."""
    parser.add_argument(
        "data",
        help="data spec: digits[:shift=blur,classes=5-9,per_class=5], file.npz, "
        "file.csv[:label=col] or an image folder (per_class=K: few-label mode)",
    )
    parser.add_argument(
        "--strategy",
        default="lp-ft",
        help=f"one of {STRATEGY_HELP} (the last four adapt to unlabelled data); with --search a "
        f"comma-separated list (default: lp-ft; with --search: linear-probe,lp-ft)",
    )
    parser.add_argument(
        "--lr",
        default=None,
        help="learning rate (default: the strategy's own, x3 under DP); with --search a "
        "comma-separated grid (default: each strategy's LR x 0.3, 1, 3)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps (default: 10 passes over the size bucket, at least 200 (also under DP, with larger batches))",
    )
    budget.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="budget as passes over the size bucket (the training-set size rounded up to a power "
        "of two) instead of --steps",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size (default: bucket/8 in [8, 64]; under DP the expected Poisson batch, bucket/4 in [16, 1024])",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="steps between validation evaluations (default: one pass over the bucket, at most 50 evaluations)",
    )
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="cosine")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop a phase after this many evaluations without validation improvement (needs a "
        "validation split: not in few-label mode)",
    )
    parser.add_argument(
        "--reinit-head", action="store_true", help="re-initialise the head even if the label set matches the card's"
    )
    parser.add_argument(
        "--head",
        default=None,
        help="multi-task source: the head to start from (default: its first; `xfer show` lists "
        "them); it is kept when its labels match the data's, else (or with --reinit-head) reset",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help="choose strategy x LR on the training labels: k-fold cross-validation, or under DP "
        "private selection whose cost is inside --dp-epsilon",
    )
    parser.add_argument(
        "--criterion",
        choices=LABEL_FREE_CRITERIA,
        default=DEFAULT_CRITERION,
        help="tent/shot/aad/nrc: the label-free criterion, read on the unlabelled validation split, "
        f"that keeps the checkpoint and (with --search) picks the LR (default {DEFAULT_CRITERION})",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=3,
        help="folds for --search (default 3; under DP 1/folds of the labels score the trials)",
    )
    parser.add_argument(
        "--trials",
        type=float,
        default=None,
        help="--search under DP: mean number of random trials (default: the grid size)",
    )
    parser.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="train with DP-SGD; epsilon (0.01 to 100) of everything released, a whole --search included",
    )
    parser.add_argument(
        "--dp-delta", type=float, default=None, help="DP delta (default min(1e-5, 1/N^1.1) for the size bucket N)"
    )
    parser.add_argument(
        "--max-grad-norm",
        type=float,
        default=None,
        help="DP per-example clipping norm (default: 1 for a lone head, 10 when the body trains)",
    )
    parser.add_argument(
        "--accountant",
        choices=ACCOUNTANT_CHOICES,
        default="prv",
        help="DP accountant of a single run (a private search always uses RDP)",
    )
    parser.add_argument("--ghost-clipping", action="store_true", help="DP with ghost clipping (less memory)")
    parser.add_argument(
        "--privacy-budget",
        type=float,
        default=None,
        help="total epsilon allowed on this data set; recorded in the local privacy ledger",
    )
    parser.add_argument(
        "--dataset-id", default=None, help="privacy-ledger key of the data (default: derived from the data)"
    )
    pretext = parser.add_argument_group("self-pretraining on the client's unlabelled examples, before fine-tuning")
    pretext.add_argument(
        "--self-pretrain-steps",
        type=int,
        default=0,
        help="steps of self-supervised training of the body on the training split (labels unused) "
        "and any extra unlabelled examples (default 0: none)",
    )
    pretext.add_argument(
        "--self-pretrain",
        choices=SELF_PRETRAIN_OBJECTIVES,
        default="masked",
        help="objective: masked (reconstruct hidden patches; works under DP) or contrastive "
        "(SimCLR; not under DP) (default masked)",
    )
    pretext.add_argument("--self-pretrain-lr", type=float, default=1e-3, help="its AdamW learning rate (1e-3)")
    pretext.add_argument(
        "--self-pretrain-batch-size",
        type=int,
        default=None,
        help="its batch size (default: from the unlabelled pool's size bucket)",
    )
    pretext.add_argument(
        "--self-pretrain-epsilon-share",
        type=float,
        default=0.5,
        help="under DP: share of --dp-epsilon self-pretraining spends (default 0.5)",
    )
    episodes = parser.add_argument_group("few-shot evaluation (instead of fine-tuning)")
    episodes.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="evaluate the pulled model on this many N-way K-shot episodes per shot count drawn "
        "from DATA's labelled examples (600 is customary), with 95%% intervals; no fine-tuning",
    )
    episodes.add_argument("--ways", type=int, default=5, help="classes per episode (default 5)")
    episodes.add_argument("--shots", default="1,5", help="support examples per class, comma-separated (default 1,5)")
    episodes.add_argument(
        "--queries", type=int, default=DEFAULT_QUERIES, help=f"query examples per class (default {DEFAULT_QUERIES})"
    )
    episodes.add_argument(
        "--episode-heads",
        default="prototype,logreg",
        help=f"comma-separated heads among {', '.join(EPISODE_HEADS)} (default prototype,logreg; "
        "finetune adapts the whole network per episode and is much slower)",
    )
    episodes.add_argument(
        "--episode-steps",
        type=int,
        default=None,
        help="finetune head: SGD steps on the support set (default: a meta-learned source's own inner loop, else 10)",
    )
    episodes.add_argument(
        "--episode-lr",
        type=float,
        default=None,
        help="finetune head: SGD learning rate (default: the source's inner loop's, else 0.01)",
    )
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--seed", type=seed_argument, default=0)
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("finetune-out"),
        help="output folder for model.safetensors, model.onnx, metrics.json, card.json",
    )
