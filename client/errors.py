"""Typed client errors, each also the builtin a Python caller would expect.

A missing model is an `XferError` *and* a `LookupError`, a bad argument a
`ValueError`, a refused token a `PermissionError`, an unreachable server a
`ConnectionError`, a corrupt artifact an `IOError`. So callers can catch
either the xfer type or the builtin, and generic code (`except LookupError`)
does the right thing without knowing about xfer.

`from_rpc_error` is the ONE place where gRPC status codes become these
types; nothing else in the client inspects status codes. Each class carries
the exit code the `xfer` CLI uses, so scripts can tell failures apart.

The server also attaches `google.rpc.Status` details (the
`grpc-status-details-bin` trailer): an ErrorInfo with a stable `reason`
(MODEL_NOT_FOUND, DIGEST_MISMATCH, STREAM_LIMIT, ...), BadRequest field
violations and, on UNAVAILABLE and RESOURCE_EXHAUSTED, a RetryInfo delay.
`from_rpc_error` reads them into every error (`reason`, `retry_after`,
`field_violations`, `error_metadata`) and picks a narrower class for the
reasons a program most often branches on (`ModelNotFoundError`, ...). The
few messages are decoded here by hand, so the edge client needs no extra
dependency (googleapis-common-protos) for them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from xfer.errors import EXIT_CODES, XferError


class RpcDetails:
    """What the server's google.rpc.Status details said; empty for errors that did not come from a call."""

    #: The ErrorInfo reason, e.g. "MODEL_NOT_FOUND" (README lists them); "" when the server sent none.
    reason: str = ""
    #: Seconds the server asked the client to wait before retrying (RetryInfo), or None.
    retry_after: float | None = None
    #: (field, description) pairs of a BadRequest, e.g. ("run.metrics", "...").
    field_violations: tuple[tuple[str, str], ...] = ()
    #: ErrorInfo metadata, e.g. {"model": "models/digits"}.
    error_metadata: dict[str, str] = {}


class InvalidArgumentError(RpcDetails, XferError, ValueError):
    """The request was malformed: a bad name, card, artifact, metric or digest."""

    exit_code = EXIT_CODES["invalid_argument"]


class DigestMismatchError(InvalidArgumentError):
    """An upload whose bytes do not hash to the sha256 its header declared (reason DIGEST_MISMATCH)."""


class InvalidRefError(InvalidArgumentError):
    """A model reference that does not follow the syntax documented in client/refs.py."""


class OutOfRangeError(InvalidArgumentError):
    """An offset or limit outside the artifact (e.g. a resume point past its end)."""


class NotFoundError(RpcDetails, XferError, LookupError):
    """The model, version, alias or artifact format does not exist."""

    exit_code = EXIT_CODES["not_found"]


class ModelNotFoundError(NotFoundError):
    """The model does not exist (reason MODEL_NOT_FOUND)."""


class VersionNotFoundError(NotFoundError):
    """The model exists but not this version number (reason VERSION_NOT_FOUND)."""


class AliasNotFoundError(NotFoundError):
    """The model exists but the alias points at no version (reason ALIAS_NOT_FOUND)."""


class ArtifactNotFoundError(NotFoundError):
    """The version has no artifact of the requested format (reason ARTIFACT_NOT_FOUND)."""


class AlreadyExistsError(RpcDetails, XferError, FileExistsError):
    """A conflicting object already exists (e.g. a run_id reported with other content)."""

    exit_code = EXIT_CODES["already_exists"]


class AuthenticationError(RpcDetails, XferError, PermissionError):
    """The token is missing, malformed or unknown."""

    exit_code = EXIT_CODES["unauthenticated"]


class PermissionDeniedError(RpcDetails, XferError, PermissionError):
    """The token is valid but its role may not do this (e.g. a client registering)."""

    exit_code = EXIT_CODES["permission_denied"]


class UnavailableError(RpcDetails, XferError, ConnectionError):
    """The server could not be reached, or is shutting down; retried before it is raised."""

    exit_code = EXIT_CODES["unavailable"]


class OfflineError(UnavailableError):
    """Offline mode (`XFER_OFFLINE=1`) and the request needs the server, or the reference was never cached."""


class SignatureError(XferError):
    """A model whose signature is missing, made by an untrusted key, or does not match its card and digests."""

    exit_code = EXIT_CODES["untrusted"]


class FailedPreconditionError(RpcDetails, XferError):
    """The server's configuration refuses the request (e.g. its publishing policy); fix the model, not the call."""

    exit_code = EXIT_CODES["failed_precondition"]


class DeadlineExceededError(RpcDetails, XferError, TimeoutError):
    """The call did not finish within its deadline."""

    exit_code = EXIT_CODES["deadline_exceeded"]


class ResourceExhaustedError(RpcDetails, XferError, ValueError):
    """Something is above a server limit, such as the maximum artifact size."""

    exit_code = EXIT_CODES["resource_exhausted"]


class TooManyStreamsError(ResourceExhaustedError):
    """The token (or the server) has as many pulls/uploads open as allowed (reason STREAM_LIMIT); retry later."""


class RateLimitedError(ResourceExhaustedError):
    """The token made more calls per second than the server allows (reason RATE_LIMITED); retry after the hint."""


class DataLossError(RpcDetails, XferError, IOError):
    """Bytes are corrupt: the server's stored blob, or what arrived here."""

    exit_code = EXIT_CODES["data_loss"]


class IntegrityError(DataLossError):
    """A downloaded artifact's size or sha256 differs from what the server declared."""


class UnimplementedError(RpcDetails, XferError, NotImplementedError):
    """The server does not implement this call (an older server?)."""

    exit_code = EXIT_CODES["unimplemented"]


class ServerError(RpcDetails, XferError, RuntimeError):
    """The server failed in a way the client cannot fix (INTERNAL, UNKNOWN, ...)."""

    exit_code = EXIT_CODES["server_error"]


_BY_CODE: dict[grpc.StatusCode, type[XferError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
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

#: ErrorInfo reasons (the server's stable vocabulary) that have a class of their own.
_BY_REASON: dict[str, type[XferError]] = {
    "MODEL_NOT_FOUND": ModelNotFoundError,
    "VERSION_NOT_FOUND": VersionNotFoundError,
    "ALIAS_NOT_FOUND": AliasNotFoundError,
    "ARTIFACT_NOT_FOUND": ArtifactNotFoundError,
    "DIGEST_MISMATCH": DigestMismatchError,
    "STREAM_LIMIT": TooManyStreamsError,
    "RATE_LIMITED": RateLimitedError,
}
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@dataclasses.dataclass(frozen=True)
class StatusDetails:
    """What a server's google.rpc.Status details said about a failed call."""

    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    #: (field, description) pairs of a BadRequest.
    field_violations: tuple[tuple[str, str], ...] = ()
    #: Seconds to wait before retrying (RetryInfo), if the server said.
    retry_after: float | None = None


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """The (field number, value) pairs of a protobuf message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, Any]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            value, i = data[i : i + length], i + length
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((number, value))
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def parse_status_details(raw: bytes) -> StatusDetails:
    """Decodes a serialized google.rpc.Status: its ErrorInfo, BadRequest and RetryInfo details.

    Unknown detail types are skipped; a malformed message gives empty details
    rather than an exception (the status code and message still stand).
    """
    try:
        reason = domain = ""
        metadata: dict[str, str] = {}
        violations: list[tuple[str, str]] = []
        retry_after: float | None = None
        for number, any_message in _fields(raw):
            if number != 3 or not isinstance(any_message, bytes):
                continue
            parts = dict(_fields(any_message))
            type_url, value = _text(parts.get(1)), parts.get(2, b"")
            if type_url == _ERROR_INFO:
                for field, item in _fields(value):
                    if field == 1:
                        reason = _text(item)
                    elif field == 2:
                        domain = _text(item)
                    elif field == 3:
                        entry = dict(_fields(item))
                        metadata[_text(entry.get(1))] = _text(entry.get(2))
            elif type_url == _BAD_REQUEST:
                for field, item in _fields(value):
                    if field == 1:
                        violation = dict(_fields(item))
                        violations.append((_text(violation.get(1)), _text(violation.get(2))))
            elif type_url == _RETRY_INFO:
                delay = dict(_fields(dict(_fields(value)).get(1, b"")))
                retry_after = int(delay.get(1, 0)) + int(delay.get(2, 0)) / 1e9
        return StatusDetails(
            reason=reason, domain=domain, metadata=metadata, field_violations=tuple(violations), retry_after=retry_after
        )
    except (ValueError, TypeError, IndexError):
        return StatusDetails()


def details_of(error: grpc.RpcError) -> StatusDetails:
    """The google.rpc.Status details in a failed call's trailers (empty if the server sent none)."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return parse_status_details(value)
    return StatusDetails()


# Hints appended where the server's own message cannot know how the client
# was configured; they name the flag/variable, never the token itself.
_HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: "pass a valid token with --token or XFER_TOKEN",
}


#: How gRPC reports a stream cut in transit (a proxy resetting it because the replica behind it died):
#: the server never chose that status, and a repeat of an idempotent call may well succeed elsewhere.
_TRANSPORT_RESETS = ("RST_STREAM", "Stream removed")


def _cut_in_transit(code: grpc.StatusCode, details: str) -> bool:
    return code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and any(m in details for m in _TRANSPORT_RESETS)


def from_rpc_error(error: grpc.RpcError, *, target: str = "") -> XferError:
    """The typed error for a failed gRPC call (an `RpcError` that is also a `grpc.Call`).

    A stream reset in transit (INTERNAL "Received RST_STREAM", what a load
    balancer sends when the replica behind a stream dies) becomes UNAVAILABLE:
    transient, so retried, and a pull resumes through another replica.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    if _cut_in_transit(code, details):
        code = grpc.StatusCode.UNAVAILABLE
    info = details_of(error)
    cls = _BY_CODE.get(code, ServerError)
    narrower = _BY_REASON.get(info.reason)
    if narrower is not None and issubclass(narrower, cls):
        cls = narrower
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
    typed = cls(message, code=code)
    assert isinstance(typed, RpcDetails)
    typed.reason = info.reason
    typed.retry_after = info.retry_after
    typed.field_violations = info.field_violations
    typed.error_metadata = info.metadata
    return typed
