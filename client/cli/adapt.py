"""`xfer finetune` and `xfer fit-head`: pull a model, adapt it to local data, save it, report the run.

`finetune` trains with torch (the [finetune] extra); `fit-head` fits a new
head on the ONNX model's features with numpy and onnxruntime only (the
[onnx] extra). Flags are declared without importing either engine, so an
edge install without the extras still has a working `xfer`.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from typing import Any

from xfer.client.cli.context import Context
from xfer.client.cli.output import Io, jsonable
from xfer.client.finetune import options as finetune_options
from xfer.client.onnxhead import command as head_command
from xfer.client.progress import ProgressBar

EXIT_OK = 0


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Declares the commands of this module."""
    p = command("finetune", cmd_finetune, "pull a model, adapt it to local data, save it, report the run")
    p.add_argument("ref", metavar="REF")
    finetune_options.add_arguments(p)
    _report_options(p)
    p = command(
        "fit-head",
        cmd_fit_head,
        "pull a model's ONNX, fit a new head on its features (no torch), save it, report the run",
    )
    p.add_argument("ref", metavar="REF")
    head_command.add_arguments(p)
    _report_options(p)


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-report", action="store_true", help="adapt and save, but report nothing")
    p.add_argument("--run-id", default=None, help="id of the report (default: a random one)")


def _engine(name: str, extra: str) -> Any:
    import importlib

    from xfer.client.errors import UnimplementedError

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UnimplementedError(f"this installation cannot run it ({exc}); install xfer[{extra}]") from None


def cmd_finetune(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer finetune REF DATA ...`"""
    command = _engine("xfer.client.finetune.command", "finetune")
    if args.episodes is None:
        command.config_from_args(args)  # a bad flag is reported before any byte is pulled
    client = ctx.client
    bar = ProgressBar(f"pull {args.ref}", stream=io.err)
    try:
        loaded = client.load_torch(args.ref, progress=bar)
    finally:
        bar.close()
    # Per-epoch progress only for a person watching (and never into --json output).
    live = not args.json and io.interactive
    outcome = command.run(
        args, model=loaded.module, card=loaded.card, cache_dir=client.cache.root, progress=live, out=io.out
    )
    return _report(args, io, client, outcome, loaded.model_version, live=live)


def cmd_fit_head(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer fit-head REF DATA ...`"""
    _engine("onnxruntime", "onnx")
    head_command.config_from_args(args)  # a bad flag is reported before any byte is pulled
    client = ctx.client
    bar = ProgressBar(f"pull {args.ref}", stream=io.err)
    try:
        pulled = client.pull(args.ref, "onnx", progress=bar)
    finally:
        bar.close()
    live = not args.json and io.interactive
    outcome = head_command.run(
        args,
        onnx_path=pulled.blob_path,
        card=pulled.model_version.card,
        cache_dir=client.cache.root,
        progress=live,
        out=io.out,
    )
    return _report(args, io, client, outcome, pulled.model_version, live=live)


def _report(args: argparse.Namespace, io: Io, client: Any, outcome: Any, model_version: Any, *, live: bool) -> int:
    """Reports the outcome's run (unless --no-report) and prints what happened."""
    reported = None
    if not args.no_report:
        run = outcome.to_run(
            run_id=args.run_id or f"{model_version.model}-{uuid.uuid4().hex[:16]}", model_version=model_version.name
        )
        reported = client.report(run)
    if args.json:
        io.json(
            {
                "model_version": model_version.name,
                "outputs": jsonable(getattr(outcome, "paths", None)),
                "report_fields": jsonable(outcome.report_fields()),
                "run": reported.run.to_dict() if reported else None,
                "duplicate": reported.duplicate if reported else None,
            }
        )
        return EXIT_OK
    if not live:
        io.print(outcome.summary())  # printed by the engine itself when live
    if reported:
        io.print(f"reported run {reported.run.run_id} on {model_version.ref}")
    return EXIT_OK
