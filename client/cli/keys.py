"""`xfer keys generate`: an Ed25519 key pair for signing models (no server needed)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from xfer.client.cli.context import Context
from xfer.client.cli.output import Io

EXIT_OK = 0


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Declares `xfer keys` and its subcommands."""
    keys = command("keys", None, "signing keys for models (no server needed)")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = command(
        "generate", cmd_generate, "write a new Ed25519 key pair: NAME.key (private, 0600) and NAME.pub", parent=sub
    )
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="folder for the two files")
    p.add_argument("--name", default="xfer-signing", help="file name stem (default xfer-signing)")


def cmd_generate(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer keys generate [--out DIR] [--name NAME]`"""
    from xfer.client import signing

    private, public = signing.generate_key(args.out, name=args.name)
    key_id = signing.load_trusted_keys([public])[0].key_id
    if args.json:
        io.json({"private_key": str(private), "public_key": str(public), "key_id": key_id})
    else:
        io.print(
            f"key {key_id}: sign with {private} (`xfer register --sign-key`, keep it secret); "
            f"give clients {public} (XFER_TRUSTED_KEYS)"
        )
    return EXIT_OK
