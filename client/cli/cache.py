"""`xfer cache ls | verify | prune`: the local cache, without the server."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any

from xfer.client.cli.context import Context
from xfer.client.cli.output import Io, table
from xfer.client.progress import human_bytes

EXIT_OK = 0


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Declares `xfer cache` and its subcommands."""
    cache = command("cache", None, "look after the local cache (no server needed)")
    sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    command("ls", cmd_ls, "list cached models, partial downloads and unreferenced blobs", parent=sub)
    p = command("verify", cmd_verify, "re-hash every cached blob against its sha256", parent=sub)
    p.add_argument("--remove-corrupt", action="store_true", help="delete blobs that fail (a pull fetches them again)")
    p = command(
        "prune",
        cmd_prune,
        "remove partial downloads, lock files and dangling names; with --model or --all, also cached models",
        parent=sub,
    )
    p.add_argument(
        "--model", action="append", default=[], metavar="ID", help="also remove this model's files (repeatable)"
    )
    p.add_argument("--all", action="store_true", help="remove everything in the cache")
    p.add_argument(
        "--partials-older-than",
        type=float,
        default=0.0,
        metavar="HOURS",
        help="keep partial downloads younger than this (default: remove all idle ones)",
    )


def _cache(ctx: Context) -> Any:
    from xfer.client.cache import Cache
    from xfer.client.cli.settings import cache_dir

    return Cache(cache_dir(ctx.args, ctx.environ))


def cmd_ls(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer cache ls`"""
    from xfer.client.cache_admin import list_cache

    listing = list_cache(_cache(ctx))
    if args.json:
        io.json(
            {
                "root": str(listing.root),
                "size_bytes": listing.size_bytes,
                "files": [vars(f) for f in listing.files],
                "partials": [vars(p) for p in listing.partials],
                "unreferenced_blobs": list(listing.unreferenced_blobs),
            }
        )
        return EXIT_OK
    io.print(f"cache {listing.root}: {human_bytes(listing.size_bytes)}")
    if listing.files:
        io.print(
            table(
                ["MODEL", "VERSION", "FILE", "SIZE", "SHA256", "MODIFIED"],
                [
                    [f.model, f.version, f.filename, human_bytes(f.size_bytes), f.sha256[:12], _time(f.modified)]
                    for f in listing.files
                ],
            )
        )
    else:
        io.print("no models cached")
    if listing.partials:
        io.print("\npartial downloads (a pull resumes them; `xfer cache prune` removes them):")
        io.print(
            table(
                ["SHA256", "SIZE", "MODIFIED"],
                [[p.sha256[:12], human_bytes(p.size_bytes), _time(p.modified)] for p in listing.partials],
            )
        )
    if listing.unreferenced_blobs:
        io.print(f"\n{len(listing.unreferenced_blobs)} blob(s) no model name points at (`xfer cache prune`)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer cache verify [--remove-corrupt]`"""
    from xfer.client.cache_admin import verify_cache
    from xfer.client.errors import DataLossError

    report = verify_cache(_cache(ctx), remove_corrupt=args.remove_corrupt)
    if args.json:
        io.json({"checked": report.checked, "corrupt": list(report.corrupt), "removed": report.removed})
    elif report.ok:
        io.print(f"{report.checked} blob(s) verified, all match their sha256")
    if not report.ok:
        action = "removed; pull them again" if report.removed else "run with --remove-corrupt to remove them"
        raise DataLossError(
            f"{len(report.corrupt)} of {report.checked} cached blob(s) do not match their sha256 "
            f"({', '.join(d[:12] for d in report.corrupt)}); {action}"
        )
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer cache prune [--model ID] [--all]`"""
    from xfer.client.cache_admin import prune_cache
    from xfer.client.errors import InvalidArgumentError
    from xfer.names import is_model_id

    for model in args.model:
        if not is_model_id(model):
            raise InvalidArgumentError(f"--model {model!r} is not a model id")
    if not 0 <= args.partials_older_than < float("inf"):  # NaN fails too
        raise InvalidArgumentError(f"--partials-older-than must be 0 or more hours, got {args.partials_older_than}")
    report = prune_cache(
        _cache(ctx), models=tuple(args.model), everything=args.all, partials_older_than=args.partials_older_than * 3600
    )
    if args.json:
        io.json(
            {
                "removed_files": report.removed_files,
                "freed_bytes": report.freed_bytes,
                "skipped_busy": list(report.skipped_busy),
            }
        )
        return EXIT_OK
    io.print(f"removed {report.removed_files} file(s), freed {human_bytes(report.freed_bytes)}")
    if report.skipped_busy:
        io.print(f"skipped {len(report.skipped_busy)} download(s) in progress in another process")
    return EXIT_OK


def _time(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")
