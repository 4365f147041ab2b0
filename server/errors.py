"""Domain exceptions of the server and the ONE exception -> gRPC status mapping.

Domain code raises these; the RPC interceptor (server/interceptors.py) turns
them into statuses with `status_for`. Every message says what happened and
how to fix it, because it is shown to the caller verbatim.
"""

from __future__ import annotations

import dataclasses

import grpc

from xfer.models.errors import ModelError


class XferError(Exception):
    """Base class of every error the server reports to callers."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(XferError, ValueError):
    """A malformed name, card, artifact, page token, or a digest/size mismatch."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(XferError, LookupError):
    """An unknown model, version, alias or artifact format."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(XferError):
    """A resource that exists already (e.g. a run id reported with other content)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class OutOfRange(XferError):
    """A read offset past the end of an artifact."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(XferError):
    """An artifact above the server's size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(XferError):
    """A stored blob that is missing or whose bytes no longer match its digest."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(XferError):
    """A missing or unknown bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(XferError):
    """A valid token whose role may not call the method."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(XferError):
    """The server is shutting down or overloaded; the caller should retry."""

    code = grpc.StatusCode.UNAVAILABLE


#: Message sent for anything unexpected; the traceback goes to the log only,
#: because internals (paths, SQL) are no business of the caller.
INTERNAL_MESSAGE = "internal server error; the server log has the details (search for request id {request_id})"


@dataclasses.dataclass(frozen=True)
class Status:
    """What a caller sees for an exception."""

    code: grpc.StatusCode
    message: str
    #: False for errors that were not expected (log the traceback).
    expected: bool


def status_for(exc: BaseException, *, request_id: str = "-") -> Status:
    """The ONE mapping from an exception raised by server code to a gRPC status."""
    if isinstance(exc, XferError):
        return Status(code=exc.code, message=str(exc), expected=True)
    if isinstance(exc, ModelError):
        # models/ validates cards, configs and weights; its errors are the caller's input.
        return Status(code=grpc.StatusCode.INVALID_ARGUMENT, message=str(exc), expected=True)
    return Status(code=grpc.StatusCode.INTERNAL, message=INTERNAL_MESSAGE.format(request_id=request_id),
                  expected=False)


def shorten(value: str, limit: int = 80) -> str:
    """`value` quoted and cut to `limit` characters, for echoing hostile input in messages."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
