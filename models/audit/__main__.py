"""`python -m xfer.models.audit DIR --members SPEC --non-members SPEC`: audit a model folder trained elsewhere.

DIR holds card.json and model.safetensors (as `python -m xfer.models.train`
writes them). SPEC is a data spec as everywhere in xfer (`fashion-mnist:
split=source`, `file.npz`, `file.csv`, `folder/`; see `xfer.client.targets`):
the members are examples the model trained on, the non-members examples
from the same distribution it never saw. Reference models for RMIA, and for
a card that claims DP the one-run canary audit, are trained with the recipe
the flags give (default: `models.train`'s, DP at the card's epsilon), so give
the recipe that trained the model. The audit is written into DIR/card.json
(`--no-write`: only printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from xfer.errors import XferError
from xfer.models.audit.config import AuditConfig


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m xfer.models.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", metavar="DIR", help="model folder with card.json and model.safetensors")
    parser.add_argument("--members", required=True, metavar="SPEC", help="data the model trained on")
    parser.add_argument("--non-members", required=True, metavar="SPEC", help="data from the same source it never saw")
    parser.add_argument(
        "--reference-pairs",
        type=int,
        default=AuditConfig.reference_pairs,
        help="pairs of RMIA reference models (default %(default)s; 0: loss attack only)",
    )
    parser.add_argument("--max-members", type=int, default=None, help="evaluate at most this many members")
    parser.add_argument("--canaries", type=int, default=None, help="canaries of the DP audit (default n/5, <= 1000)")
    parser.add_argument(
        "--no-dp-audit", dest="dp_audit", action="store_false", help="skip the one-run canary audit of a DP card"
    )
    parser.add_argument("--confidence", type=float, default=AuditConfig.confidence)
    recipe = parser.add_argument_group("training recipe of the reference and canary models (the target's)")
    recipe.add_argument("--epochs", type=int, default=30)
    recipe.add_argument("--batch-size", type=int, default=64)
    recipe.add_argument("--lr", type=float, default=3e-3)
    recipe.add_argument("--dp-epsilon", type=float, default=None, help="default: the card's DP epsilon, if any")
    recipe.add_argument("--dp-delta", type=float, default=None, help="default: the card's DP delta, if any")
    recipe.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print the audit, leave card.json")
    parser.add_argument("--json", action="store_true", help="print the audit block as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success, the error kind's exit code otherwise."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        import torch

        # The data-spec reader is the client's (numpy only); reading the operator's own data through it keeps
        # one spec language for every command.
        from xfer.client.targets import load_all
        from xfer.models.audit.runner import audit_folder, summary_lines
        from xfer.models.card import ModelCard
        from xfer.models.fit import FitConfig

        if args.threads < 1:
            raise ValueError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
        card_path = f"{args.folder}/card.json"
        with open(card_path, encoding="utf-8") as handle:
            card = ModelCard.from_dict(json.load(handle))
        members = load_all(args.members, card=card)
        non_members = load_all(args.non_members, card=card, label_names=card.label_names or None)
        recipe = FitConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            dp_epsilon=args.dp_epsilon if args.dp_epsilon is not None else card.dp_epsilon,
            dp_delta=args.dp_delta if args.dp_delta is not None else card.dp_delta,
            max_grad_norm=args.max_grad_norm,
        )
        config = AuditConfig(
            reference_pairs=args.reference_pairs,
            confidence=args.confidence,
            max_members=args.max_members,
            canaries=args.canaries,
            seed=args.seed,
        )
        audit = audit_folder(
            folder=args.folder,
            members=(members.x, members.y),
            non_members=(non_members.x, non_members.y),
            fit_config=recipe,
            config=config,
            dp_audit=args.dp_audit,
            write=args.write,
        )
    except (XferError, ValueError, LookupError, OSError) as exc:
        print(f"models.audit: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    if args.json:
        print(json.dumps(audit.to_dict()))
    else:
        for line in summary_lines(audit):
            print(line)
        if args.write:
            print(f"written to {args.folder}/card.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
