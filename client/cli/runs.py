"""`xfer runs | leaderboard`: what clients reported."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from xfer.client.cli.context import Context
from xfer.client.cli.output import Io, number, short_version, table, when

EXIT_OK = 0


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Declares the commands of this module."""
    p = command("runs", cmd_runs, "list reported runs, newest first")
    p.add_argument("--model", default=None, metavar="REF", help="MODEL (all versions) or MODEL:VERSION")
    p.add_argument("--strategy", default=None)
    p = command("leaderboard", cmd_leaderboard, "per version and strategy: count, mean, std, best of a metric")
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--model", default=None, metavar="REF")
    p.add_argument("--goal", default="maximize", choices=["maximize", "minimize"])


def cmd_runs(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer runs [--model REF] [--strategy S]`"""
    client = ctx.client
    runs = client.list_runs(model=args.model, strategy=args.strategy)
    if args.json:
        io.json([r.to_dict() for r in runs])
        return EXIT_OK
    if not runs:
        io.print("no runs reported yet")
        return EXIT_OK
    rows = []
    for r in runs:
        dp = f"eps={r.privacy.epsilon_spent:.2f}" if r.privacy.dp else "no"
        rows.append(
            [
                r.run_id,
                short_version(r.model_version),
                r.strategy,
                dp,
                metrics_cell(r.metrics),
                r.train_examples_pow2,
                r.device_kind.value,
                f"{r.wall_seconds:.1f}s",
                when(r.create_time),
            ]
        )
    io.print(table(["RUN", "VERSION", "STRATEGY", "DP", "METRICS", "N(2^k)", "DEVICE", "WALL", "CREATED"], rows))
    return EXIT_OK


def metrics_cell(metrics: Mapping[str, float], *, limit: int = 3) -> str:
    """The first few metrics of a run, top-level ones first."""
    # Per-class ones like class/3/accuracy would make the table unreadable, so they
    # are only counted (all are in --json).
    ordered = sorted(metrics, key=lambda k: ("/" in k, k != "accuracy", k))
    shown = " ".join(f"{k}={number(metrics[k])}" for k in ordered[:limit])
    rest = len(ordered) - limit
    return f"{shown} (+{rest})" if rest > 0 else shown


def cmd_leaderboard(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer leaderboard [--metric M] [--model REF]`"""
    client = ctx.client
    board = client.summarize_runs(metric=args.metric, model=args.model, goal=args.goal)
    if args.json:
        io.json(board.to_dict())
        return EXIT_OK
    if not board.entries:
        io.print(f"no runs report {board.metric or args.metric!r} yet")
        return EXIT_OK
    rows = [
        [
            i,
            short_version(e.model_version),
            e.strategy,
            "yes" if e.dp else "no",
            e.count,
            f"{e.mean:.4f}",
            f"{e.std:.4f}",
            f"{e.best:.4f}",
            e.best_run_id,
        ]
        for i, e in enumerate(board.entries, 1)
    ]
    io.print(f"metric: {board.metric or args.metric} ({args.goal})")
    io.print(table(["#", "VERSION", "STRATEGY", "DP", "RUNS", "MEAN", "STD", "BEST", "BEST RUN"], rows))
    return EXIT_OK
