"""The root of every error xfer raises on purpose, and the CLI exit codes.

Client, fine-tuning, model-zoo and server errors all derive from
`XferError`, so `except xfer.errors.XferError` catches any failure that
carries a message written for people, and nothing else (a bug stays a bug).
Each subclass sets `exit_code`, the status the `xfer` command exits with.
This module imports nothing, so the lightest install can use it.
"""

from __future__ import annotations

from typing import Any, ClassVar

#: Exit codes of the `xfer` command, by kind of failure (documented in the README).
EXIT_CODES: dict[str, int] = {
    "failure": 1,
    "usage": 2,
    "invalid_argument": 3,
    "not_found": 4,
    "already_exists": 5,
    "unauthenticated": 6,
    "permission_denied": 7,
    "unavailable": 8,
    "deadline_exceeded": 9,
    "resource_exhausted": 10,
    "data_loss": 11,
    "unimplemented": 12,
    "server_error": 13,
    "privacy_budget": 14,
    "device_unavailable": 15,
    "failed_precondition": 16,
    "untrusted": 17,
}


class XferError(Exception):
    """Base class of every error xfer raises on purpose."""

    #: Process exit status of the `xfer` CLI for this kind of failure.
    exit_code: ClassVar[int] = EXIT_CODES["failure"]
    #: The gRPC status code the error came from, when it came from one (a `grpc.StatusCode`).
    code: Any = None

    def __init__(self, message: str = "", *, code: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message
