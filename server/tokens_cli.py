"""`xfer-server tokens add|list|remove`: manage the bearer-token file without starting (or importing) the server.

Imports only the token-file code (server/auth.py): no torch, no onnxruntime,
no database, so it runs in a second on any machine that holds the file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from xfer.server.auth import Role, TokenFileError, add_token, load_token_file, remove_token


def build_parser(prog: str = "xfer-server tokens") -> argparse.ArgumentParser:
    """The `tokens` sub-command line."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Manage the bearer tokens of xfer-server. The file "
        "stores only sha256 hashes; the server re-reads it when it changes.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a token and print it once (only its hash is stored)")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--file", required=True, type=Path)
    add.add_argument("--name", default="", help="a label, unique in the file (used by `remove`)")
    listing = sub.add_parser("list", help="show names and roles (never tokens)")
    listing.add_argument("--file", required=True, type=Path)
    remove = sub.add_parser("remove", help="remove tokens by name")
    remove.add_argument("--file", required=True, type=Path)
    remove.add_argument("--name", required=True)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs one tokens command; exit code 0, 1 on a file error, 2 on usage errors."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "add":
            print(add_token(args.file, role=args.role, name=args.name), file=out)
        elif args.command == "list":
            for entry in load_token_file(args.file):
                print(f"{entry.role.value}\t{entry.name or '-'}\t{entry.sha256[:12]}…", file=out)
        else:
            count = remove_token(args.file, name=args.name)
            print(f"removed {count} token(s)", file=out)
    except (OSError, TokenFileError) as exc:
        print(f"xfer-server tokens: error: {exc}", file=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
