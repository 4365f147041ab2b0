"""`xfer rank DATA --models a,b,c`: choose a source before pulling its weights.

Pulls only each candidate's ONNX artifact, scores it on the local labelled
data (LogME, k-NN) and ranks the candidates; reports only the scores
(`xfer.client.rank`). Needs the [onnx] extra.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable

from xfer.client.cli.context import Context
from xfer.client.cli.output import Io, table
from xfer.client.rank import command as rank_command

EXIT_OK = 0


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Declares the commands of this module."""
    p = command(
        "rank",
        cmd_rank,
        "rank candidate source models on local labelled data (LogME, k-NN) from their "
        "ONNX features, before pulling any weights; report only the scores",
    )
    rank_command.add_arguments(p)
    p.add_argument("--no-report", action="store_true", help="rank, but report nothing")
    p.add_argument("--run-id", default=None, help="prefix of the reports' run ids (default: a random one)")


def cmd_rank(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer rank DATA --models a,b,c`"""
    import importlib

    from xfer.client.errors import UnimplementedError

    try:
        importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise UnimplementedError(f"this installation cannot run it ({exc}); install xfer[onnx]") from None
    client = ctx.client
    live = not args.json and io.interactive
    outcome = rank_command.run(args, client=client, progress=live, out=io.out)
    reported = []
    if not args.no_report:
        prefix = args.run_id or f"rank-{uuid.uuid4().hex[:16]}"
        reported = [client.report(run) for run in outcome.to_runs(run_id=prefix)]
    if args.json:
        io.json(
            {
                "by": outcome.by,
                "ranking": [
                    {
                        "place": row[0],
                        "ref": row[1],
                        "model_version": c.model_version,
                        "logme": c.score.logme,
                        "knn_accuracy": c.score.knn_accuracy,
                        "examples": c.score.examples,
                        "feature_dim": c.score.feature_dim,
                        "pulled_bytes": c.transferred_bytes,
                    }
                    for row, c in zip(outcome.rows(), outcome.order)
                ],
                "reported": [r.run.run_id for r in reported],
            }
        )
        return EXIT_OK
    other = "KNN-PLACE" if outcome.by == "logme" else "LOGME-PLACE"
    io.print(table(["PLACE", "MODEL", "LOGME", "KNN-ACC", other, "DIM"], outcome.rows()))
    if reported:
        io.print(f"reported {len(reported)} run(s) (scores only): {', '.join(r.run.run_id for r in reported)}")
    return EXIT_OK
