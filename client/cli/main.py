"""The `xfer` command: ordinary argparse subcommands, one module per group.

Output: aligned tables for people; `--json` prints one JSON document on
stdout and nothing else. Failures print one line, `xfer: error: ...`, on
stderr and exit with the error kind's code (`xfer.errors.EXIT_CODES`: 3
invalid argument, 4 not found, 5 already exists, 6 unauthenticated, 7
permission denied, 8 unavailable, 9 deadline, 10 too large, 11 data loss,
12 unimplemented, 13 server error, 14 privacy budget, 15 device
unavailable, 16 failed precondition, 17 signature missing or not trusted; 2 is a usage
error, 130 an interrupt).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

from xfer.client.cli import adapt, cache, catalog, keys, login, operator, rank, runs
from xfer.client.cli.context import Context
from xfer.client.cli.output import Io
from xfer.client.cli.settings import add_connection_options, token
from xfer.errors import EXIT_CODES, XferError

EXIT_OK = 0
EXIT_INTERRUPTED = 130
#: The modules that declare commands, in the order `xfer --help` lists them.
COMMAND_MODULES = (catalog, operator, adapt, rank, runs, cache, keys, login)
Handler = Callable[[argparse.Namespace, Io, Context], int]


class _Exit(Exception):
    """Ends the command with `code` (argparse's own exits become this, so callers get a code, not SystemExit)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """Writes to the invocation's streams (help included) and raises instead of calling sys.exit."""

    def __init__(self, *args: Any, io: Io | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.io = io

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", functools.partial(_Parser, io=self.io))
        return super().add_subparsers(**kwargs)

    def _print_message(self, message: str, file: Any = None) -> None:
        if message and self.io is not None:
            (self.io.err if file is sys.stderr else self.io.out).write(message)
        elif message:
            super()._print_message(message, file)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message, sys.stderr)
        raise _Exit(status)

    def error(self, message: str) -> NoReturn:
        # One line like every other failure, instead of argparse's usage block.
        self.exit(EXIT_CODES["usage"], f"xfer: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"xfer {version('xfer')}"
    except PackageNotFoundError:  # pragma: no cover  (running from a source tree that is not installed)
        return "xfer (not installed)"


def build_parser(io: Io | None = None) -> argparse.ArgumentParser:
    """The `xfer` argument parser with every subcommand; help and errors go to `io` when given."""
    parser = _Parser(
        prog="xfer",
        description="Pull, adapt and report on privacy-preserving source models.",
        epilog="References: MODEL (alias latest), MODEL:VERSION or MODEL@ALIAS.",
        io=io,
    )
    parser.add_argument("--version", action="version", version=_version())
    add_connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler | None, help_text: str, *, parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        add_connection_options(p, suppress=True)
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    for module in COMMAND_MODULES:
        module.register(command)
    return parser


class _Formatter(logging.Formatter):
    """`xfer: warning: ...`, matching the `xfer: error: ...` lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"xfer: {record.levelname.lower()}: {record.getMessage()}"


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Runs `xfer` with `argv` and returns the exit status (the console script exits with it)."""
    import os

    environ = os.environ if environ is None else environ
    io = Io(out=stdout or sys.stdout, err=stderr or sys.stderr)
    try:
        args = build_parser(io).parse_args(list(sys.argv[1:] if argv is None else argv))
    except _Exit as exc:
        return exc.code
    handler = logging.StreamHandler(io.err)
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler], force=True)
    ctx = Context(args, environ)
    secret: str | None = None
    try:
        secret = token(args, environ)
        return int(args.handler(args, io, ctx))
    except XferError as exc:
        io.err.write(f"xfer: error: {_redact(str(exc), secret)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        io.err.write("xfer: interrupted (a partial download is kept; run the command again to resume)\n")
        return EXIT_INTERRUPTED
    except OSError as exc:
        # Local files: already written for people (the path and what went wrong).
        io.err.write(f"xfer: error: {_redact(str(exc), secret)}\n")
        return EXIT_CODES["failure"]
    except Exception as exc:  # noqa: BLE001  (one line, never a traceback, unless -v)
        if args.verbose:
            traceback.print_exc(file=io.err)
        io.err.write(
            f"xfer: error: unexpected {type(exc).__name__}: {_redact(str(exc), secret)} (run with -v for details)\n"
        )
        return EXIT_CODES["failure"]
    finally:
        ctx.close()
