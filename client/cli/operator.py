"""`xfer register | alias | deprecate | delete`: the operator's commands (an operator token is needed)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from xfer.client.cli.context import Context
from xfer.client.cli.output import Io
from xfer.client.progress import ProgressBar, human_bytes

EXIT_OK = 0


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Declares the commands of this module."""
    p = command("register", cmd_register, "upload a new version (operator)")
    p.add_argument("folder", metavar="FOLDER", help="as written by `python -m xfer.models.train --out FOLDER`")
    p.add_argument("--model", required=True, metavar="ID", help="model id, e.g. digits-convnet")
    p.add_argument(
        "--sign-key",
        default=None,
        metavar="KEY",
        help="sign the version's manifest with this Ed25519 private key (`xfer keys generate`)",
    )
    p = command("alias", cmd_alias, "point an alias at a version (operator)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("alias", metavar="ALIAS")
    p = command("deprecate", cmd_deprecate, "flag a version as deprecated (operator)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--message", "-m", default="", help="shown to clients, e.g. 'use @stable'")
    p = command("delete", cmd_delete, "delete one version (operator)")
    p.add_argument("ref", metavar="REF", help="MODEL:VERSION or MODEL@ALIAS (a bare id is refused)")


def cmd_register(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer register FOLDER --model ID`"""
    client = ctx.client
    bar = ProgressBar(f"upload {args.model}", stream=io.err)
    try:
        version = client.register(args.folder, args.model, progress=bar, signing_key=args.sign_key)
    finally:
        bar.close()
    if args.json:
        io.json(version.to_dict())
        return EXIT_OK
    artifacts = ", ".join(
        f"{a.format.value} {human_bytes(a.size_bytes)}" + (" (derived)" if a.derived else "") for a in version.artifacts
    )
    signed = f"; signed by {', '.join(s.key_id for s in version.signatures)}" if version.signatures else ""
    io.print(f"registered {version.ref} ({artifacts}); aliases: {', '.join(version.aliases) or '-'}{signed}")
    return EXIT_OK


def cmd_alias(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer alias REF ALIAS`"""
    client = ctx.client
    version = client.set_alias(args.ref, args.alias)
    if args.json:
        io.json(version.to_dict())
    else:
        io.print(f"{version.model}@{args.alias} -> {version.ref}")
    return EXIT_OK


def cmd_deprecate(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer deprecate REF --message M`"""
    client = ctx.client
    version = client.deprecate(args.ref, args.message)
    if args.json:
        io.json(version.to_dict())
    else:
        io.print(
            f"deprecated {version.ref}" + (f": {version.deprecation_message}" if version.deprecation_message else "")
        )
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer delete REF`"""
    client = ctx.client
    from xfer.client.refs import parse_ref

    ref = parse_ref(args.ref)
    client.delete(ref)
    if args.json:
        io.json({"deleted": ref.version_name})
    else:
        io.print(f"deleted {ref}")
    return EXIT_OK
