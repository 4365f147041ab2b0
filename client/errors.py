"""Typed client errors, each also the builtin a Python caller would expect.

A missing model is an `XferError` *and* a `LookupError`, a bad argument a
`ValueError`, a refused token a `PermissionError`, an unreachable server a
`ConnectionError`, a corrupt artifact an `IOError`. So callers can catch
either the xfer type or the builtin, and generic code (`except LookupError`)
does the right thing without knowing about xfer.

`from_rpc_error` is the ONE place where gRPC status codes become these
types; nothing else in the client inspects status codes. Each class carries
the exit code the `xfer` CLI uses, so scripts can tell failures apart.
"""

from __future__ import annotations

import grpc

from xfer.errors import EXIT_CODES, XferError


class InvalidArgumentError(XferError, ValueError):
    """The request was malformed: a bad name, card, artifact, metric or digest."""

    exit_code = EXIT_CODES["invalid_argument"]


class InvalidRefError(InvalidArgumentError):
    """A model reference that does not follow the syntax documented in client/refs.py."""


class OutOfRangeError(InvalidArgumentError):
    """An offset or limit outside the artifact (e.g. a resume point past its end)."""


class NotFoundError(XferError, LookupError):
    """The model, version, alias or artifact format does not exist."""

    exit_code = EXIT_CODES["not_found"]


class AlreadyExistsError(XferError, FileExistsError):
    """A conflicting object already exists (e.g. a run_id reported with other content)."""

    exit_code = EXIT_CODES["already_exists"]


class AuthenticationError(XferError, PermissionError):
    """The token is missing, malformed or unknown."""

    exit_code = EXIT_CODES["unauthenticated"]


class PermissionDeniedError(XferError, PermissionError):
    """The token is valid but its role may not do this (e.g. a client registering)."""

    exit_code = EXIT_CODES["permission_denied"]


class UnavailableError(XferError, ConnectionError):
    """The server could not be reached, or is shutting down; retried before it is raised."""

    exit_code = EXIT_CODES["unavailable"]


class OfflineError(UnavailableError):
    """Offline mode (`XFER_OFFLINE=1`) and the request needs the server, or the reference was never cached."""


class SignatureError(XferError):
    """A model whose signature is missing, made by an untrusted key, or does not match its card and digests."""

    exit_code = EXIT_CODES["untrusted"]


class DeadlineExceededError(XferError, TimeoutError):
    """The call did not finish within its deadline."""

    exit_code = EXIT_CODES["deadline_exceeded"]


class ResourceExhaustedError(XferError, ValueError):
    """Something is above a server limit, such as the maximum artifact size."""

    exit_code = EXIT_CODES["resource_exhausted"]


class DataLossError(XferError, IOError):
    """Bytes are corrupt: the server's stored blob, or what arrived here."""

    exit_code = EXIT_CODES["data_loss"]


class IntegrityError(DataLossError):
    """A downloaded artifact's size or sha256 differs from what the server declared."""


class UnimplementedError(XferError, NotImplementedError):
    """The server does not implement this call (an older server?)."""

    exit_code = EXIT_CODES["unimplemented"]


class ServerError(XferError, RuntimeError):
    """The server failed in a way the client cannot fix (INTERNAL, UNKNOWN, ...)."""

    exit_code = EXIT_CODES["server_error"]


_BY_CODE: dict[grpc.StatusCode, type[XferError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}

# Hints appended where the server's own message cannot know how the client
# was configured; they name the flag/variable, never the token itself.
_HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: "pass a valid token with --token or XFER_TOKEN",
}


def from_rpc_error(error: grpc.RpcError, *, target: str = "") -> XferError:
    """The typed error for a failed gRPC call (an `RpcError` that is also a `grpc.Call`)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    cls = _BY_CODE.get(code, ServerError)
    if code == grpc.StatusCode.UNAVAILABLE:
        where = f" at {target}" if target else ""
        message = f"server unavailable{where}: {details or 'no connection'}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the server did not answer in time ({details or 'deadline exceeded'})"
    else:
        message = details or code.name.lower().replace("_", " ")
    hint = _HINTS.get(code)
    if hint:
        message = f"{message} ({hint})"
    return cls(message, code=code)
