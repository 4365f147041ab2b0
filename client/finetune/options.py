"""The flags of `xfer finetune`, declared without importing torch.

The `xfer` parser is built on every invocation, also on edge devices that
have no torch installed; only running the command imports the engine.
"""

from __future__ import annotations

import argparse
import pathlib

from xfer.client.finetune.schedules import SCHEDULES

#: Strategy names for the help text; tests check they equal the engine's registry.
STRATEGY_HELP = ("full, linear-probe, lp-ft, discriminative, gradual-unfreeze, surgical:BLOCK, "
                 "surgical:auto")
ACCOUNTANT_CHOICES = ("prv", "rdp")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the `xfer finetune` flags (after REF) on `parser`."""
    parser.add_argument("data", help="data spec: digits[:shift=blur,classes=5-9,per_class=5], file.npz, "
                                     "file.csv[:label=col] or an image folder")
    parser.add_argument("--strategy", default="lp-ft",
                        help=f"one of {STRATEGY_HELP}; with --search a comma-separated list (default: lp-ft)")
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
    parser.add_argument("--accountant", choices=ACCOUNTANT_CHOICES, default="prv")
    parser.add_argument("--ghost-clipping", action="store_true", help="DP with ghost clipping (less memory)")
    parser.add_argument("--privacy-budget", type=float, default=None,
                        help="total epsilon allowed on this data set; recorded in the local privacy ledger")
    parser.add_argument("--dataset-id", default=None,
                        help="privacy-ledger key of the data (default: derived from the data)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("finetune-out"),
                        help="output folder for model.safetensors, model.onnx, metrics.json, card.json")
