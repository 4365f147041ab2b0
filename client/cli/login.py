"""`xfer login | logout`: store a bearer token for a server, readable only by its owner (0600)."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from xfer.client.cli.context import Context
from xfer.client.cli.output import Io
from xfer.client.cli.settings import Credentials, config_dir, server_target
from xfer.client.errors import InvalidArgumentError

EXIT_OK = 0


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Declares the commands of this module."""
    p = command("login", cmd_login, "store a token for the server (prompted for, or read from stdin)")
    p.add_argument("--token-stdin", action="store_true", help="read the token from standard input (for scripts)")
    p.add_argument("--no-verify", action="store_true", help="store without checking the token against the server")
    command("logout", cmd_logout, "forget the token stored for the server")


def cmd_login(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer login [--server S] [--token-stdin]`"""
    server = server_target(args, ctx.environ)
    if getattr(args, "token", None):
        token = args.token
    elif args.token_stdin:
        token = sys.stdin.readline().strip()
    else:
        token = getpass.getpass(f"token for {server}: ").strip()
    if not token:
        raise InvalidArgumentError("no token given; paste the token an operator created with `xfer-server tokens add`")
    args.token = token  # the client below uses it, not any token stored before
    if not args.no_verify:
        ctx.client.list_models()  # a refused token raises AuthenticationError; nothing is stored then
    Credentials(config_dir(ctx.environ)).save(server, token)
    if args.json:
        io.json({"server": server, "stored": True, "verified": not args.no_verify})
    else:
        checked = "" if args.no_verify else ", accepted by the server"
        io.print(f"token for {server} stored in {config_dir(ctx.environ)} (mode 0600{checked})")
    return EXIT_OK


def cmd_logout(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer logout [--server S]`"""
    server = server_target(args, ctx.environ)
    removed = Credentials(config_dir(ctx.environ)).remove(server)
    if args.json:
        io.json({"server": server, "removed": removed})
    else:
        io.print(f"forgot the token for {server}" if removed else f"no token stored for {server}")
    return EXIT_OK
