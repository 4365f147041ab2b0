"""`google.rpc.Status` details for a failed call: ErrorInfo, BadRequest, RetryInfo.

The rich status travels in the `grpc-status-details-bin` trailer (the gRPC
convention grpcio-status, grpc-go and grpc-java read); code and message stay
in the plain status too, so clients that ignore details lose nothing.
"""

from __future__ import annotations

import math

from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from xfer.server.errors import ERROR_DOMAIN, Status

#: gRPC refuses trailers above its metadata limit (8 KiB by default on the
#: receiving side), so messages repeated inside the details are cut here.
_MAX_DETAIL_TEXT = 1024


def status_proto(status: Status) -> status_pb2.Status:
    """The google.rpc.Status of `status`, with an ErrorInfo always and the other details when known."""
    message = status.message[:_MAX_DETAIL_TEXT]
    proto = status_pb2.Status(code=status.code.value[0], message=message)
    info = error_details_pb2.ErrorInfo(
        reason=status.reason, domain=ERROR_DOMAIN, metadata={k: v[:256] for k, v in status.metadata.items()}
    )
    proto.details.add().Pack(info)
    if status.field_violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description[:_MAX_DETAIL_TEXT])
                for v in status.field_violations
            ]
        )
        proto.details.add().Pack(bad)
    if status.retry_after is not None and math.isfinite(status.retry_after):
        seconds = max(0.0, status.retry_after)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
        proto.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return proto


def trailing_metadata(status: Status) -> tuple[tuple[str, str | bytes], ...]:
    """The `grpc-status-details-bin` trailer carrying `status_proto(status)`."""
    return tuple(rpc_status.to_status(status_proto(status)).trailing_metadata)
