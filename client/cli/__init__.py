"""The `xfer` command line (see `xfer --help`); `main` is the console script's entry point."""

from xfer.client.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
