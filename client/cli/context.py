"""What a command runs with: its parsed arguments, the environment, and a client made on first use."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Mapping
from typing import Any


class Context:
    """Per-invocation state; commands that never touch the server never create a client."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.environ = environ

    @functools.cached_property
    def client(self) -> Any:
        """The `Client` (flags, then environment, then stored login, then defaults)."""
        from xfer.client.cli.settings import make_client

        return make_client(self.args, self.environ)

    def close(self) -> None:
        """Closes the client's channel if one was opened."""
        if "client" in self.__dict__:
            self.client.close()
