"""Domain exceptions of the server and the ONE exception -> gRPC status mapping.

Domain code raises these; the RPC interceptor (server/interceptors.py) turns
them into statuses with `status_for`, and server/rpc_status.py attaches the
`google.rpc.Status` details (ErrorInfo with a stable `reason`, BadRequest
field violations, RetryInfo). Every message says what happened and how to
fix it, because it is shown to the caller verbatim; the `reason` is what a
program branches on, so reasons are part of the wire contract and never change
meaning (README lists them).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import logging
from collections.abc import Mapping

import grpc

from xfer.errors import XferError
from xfer.models.errors import ModelError

logger = logging.getLogger(__name__)

#: The ErrorInfo domain of every reason below.
ERROR_DOMAIN = "xfer.v1"


class Reason(enum.StrEnum):
    """Stable, machine-readable error reasons (google.rpc.ErrorInfo.reason)."""

    # INVALID_ARGUMENT
    INVALID_NAME = "INVALID_NAME"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_UPLOAD = "INVALID_UPLOAD"
    INVALID_CARD = "INVALID_CARD"
    INVALID_ARTIFACT = "INVALID_ARTIFACT"
    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    SIZE_MISMATCH = "SIZE_MISMATCH"
    INVALID_REPORT = "INVALID_REPORT"
    # FAILED_PRECONDITION
    PUBLISH_POLICY = "PUBLISH_POLICY"
    # NOT_FOUND
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    ALIAS_NOT_FOUND = "ALIAS_NOT_FOUND"
    ARTIFACT_NOT_FOUND = "ARTIFACT_NOT_FOUND"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    # ALREADY_EXISTS
    RUN_ID_CONFLICT = "RUN_ID_CONFLICT"
    # OUT_OF_RANGE
    OFFSET_OUT_OF_RANGE = "OFFSET_OUT_OF_RANGE"
    # RESOURCE_EXHAUSTED
    ARTIFACT_TOO_LARGE = "ARTIFACT_TOO_LARGE"
    MODEL_TOO_LARGE = "MODEL_TOO_LARGE"
    STREAM_LIMIT = "STREAM_LIMIT"
    RATE_LIMITED = "RATE_LIMITED"
    VALIDATION_LIMIT = "VALIDATION_LIMIT"
    # DATA_LOSS
    BLOB_CORRUPT = "BLOB_CORRUPT"
    BLOB_MISSING = "BLOB_MISSING"
    # UNAUTHENTICATED / PERMISSION_DENIED
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    ROLE_FORBIDDEN = "ROLE_FORBIDDEN"
    # UNAVAILABLE
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    STREAM_STALLED = "STREAM_STALLED"
    # INTERNAL
    INTERNAL = "INTERNAL"


class RequestError(XferError):
    """Base class of every error the server reports to callers.

    `reason` is the stable ErrorInfo reason; `field` names the request field a
    BadRequest violation points at; `metadata` is ErrorInfo metadata (short
    strings such as the model id); `retry_after` (seconds) becomes RetryInfo.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.field = field
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after


class InvalidArgument(RequestError, ValueError):
    """A malformed name, card, artifact, page token, or a digest/size mismatch."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_REQUEST


class FailedPrecondition(RequestError):
    """A well-formed request this server's configuration refuses (e.g. its publishing policy)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.PUBLISH_POLICY


class NotFound(RequestError, LookupError):
    """An unknown model, version, alias or artifact format."""

    code = grpc.StatusCode.NOT_FOUND
    reason = Reason.VERSION_NOT_FOUND


class AlreadyExists(RequestError):
    """A resource that exists already (e.g. a run id reported with other content)."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = Reason.RUN_ID_CONFLICT


class OutOfRange(RequestError):
    """A read offset past the end of an artifact."""

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = Reason.OFFSET_OUT_OF_RANGE


class ResourceExhausted(RequestError):
    """Above a server limit: artifact size, model size, concurrent streams, validation budget."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.ARTIFACT_TOO_LARGE


class DataLoss(RequestError):
    """A stored blob that is missing or whose bytes no longer match its digest."""

    code = grpc.StatusCode.DATA_LOSS
    reason = Reason.BLOB_CORRUPT


class Unauthenticated(RequestError):
    """A missing or unknown bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.TOKEN_INVALID


class PermissionDenied(RequestError):
    """A valid token whose role may not call the method."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.ROLE_FORBIDDEN


class Unavailable(RequestError):
    """Transient: the database is down, the server is shutting down, a stream stalled; retry."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.SHUTTING_DOWN


#: Message sent for anything unexpected; the traceback goes to the log only,
#: because internals (paths, SQL) are no business of the caller.
INTERNAL_MESSAGE = "internal server error; the server log has the details (search for request id {request_id})"
#: Seconds a client should wait before retrying when the database is unreachable.
DATABASE_RETRY_AFTER = 1.0
#: Seconds a caller should wait when the server is at its open-file limit.
FILE_LIMIT_RETRY_AFTER = 2.0


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One google.rpc.BadRequest.FieldViolation."""

    field: str
    description: str


@dataclasses.dataclass(frozen=True)
class Status:
    """What a caller sees for an exception: code and message plus the google.rpc details."""

    code: grpc.StatusCode
    message: str
    reason: str
    #: False for errors that were not expected (log the traceback).
    expected: bool
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    retry_after: float | None = None


def _database_status(exc: BaseException) -> Status | None:
    """UNAVAILABLE for a database that cannot be reached, INVALID_ARGUMENT for a value it refuses."""
    import sqlalchemy as sa

    if isinstance(exc, sa.exc.DataError):
        # A backstop: validation should refuse such values first (NUL in text, numbers out of range).
        logger.warning("the database refused a value from a request: %s", str(exc).splitlines()[0][:300])
        return Status(
            code=grpc.StatusCode.INVALID_ARGUMENT,
            reason=Reason.INVALID_REQUEST,
            expected=True,
            message="a value in the request cannot be stored (out of range or containing control "
            "characters); check the request's numbers and text",
        )
    unreachable = isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    )
    if unreachable:
        logger.warning("database unavailable: %s", str(exc).splitlines()[0][:300])
        return Status(
            code=grpc.StatusCode.UNAVAILABLE,
            reason=Reason.DATABASE_UNAVAILABLE,
            expected=True,
            message="the server's database is unavailable right now; retry shortly",
            retry_after=DATABASE_RETRY_AFTER,
        )
    return None


def _file_limit_status(exc: BaseException) -> Status | None:
    """RESOURCE_EXHAUSTED (STREAM_LIMIT, with a retry hint) when the process ran out of file descriptors.

    Each open stream holds descriptors; running out means too many streams at
    once for this server's limit, which clients wait out like a stream cap.
    """
    if not (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)):
        return None
    logger.warning("out of file descriptors (%s): raise the open-file limit or lower --max-reads/--max-uploads", exc)
    return Status(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        reason=Reason.STREAM_LIMIT,
        expected=True,
        message="the server has too many files open right now (its open-file limit); retry shortly",
        retry_after=FILE_LIMIT_RETRY_AFTER,
    )


def status_for(exc: BaseException, *, request_id: str = "-") -> Status:
    """The ONE mapping from an exception raised by server code to a gRPC status."""
    if isinstance(exc, RequestError):
        violations = (FieldViolation(field=exc.field, description=str(exc)),) if exc.field else ()
        return Status(
            code=exc.code,
            message=str(exc),
            reason=str(exc.reason),
            expected=True,
            metadata=exc.metadata,
            field_violations=violations,
            retry_after=exc.retry_after,
        )
    if isinstance(exc, ModelError):
        # models/ validates cards, configs and weights; its errors are the caller's input.
        return Status(
            code=grpc.StatusCode.INVALID_ARGUMENT, message=str(exc), reason=Reason.INVALID_CARD, expected=True
        )
    known = _database_status(exc) or _file_limit_status(exc)
    if known is not None:
        return known
    return Status(
        code=grpc.StatusCode.INTERNAL,
        message=INTERNAL_MESSAGE.format(request_id=request_id),
        reason=Reason.INTERNAL,
        expected=False,
    )


def shorten(value: str, limit: int = 80) -> str:
    """`value` quoted and cut to `limit` characters, for echoing hostile input in messages."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
