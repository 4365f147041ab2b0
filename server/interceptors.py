"""The RPC boundary: authentication, the exception -> status mapping, and access logging.

One interceptor wraps every method handler (all four streaming shapes) so that
auth failures, domain errors and crashes all go through `errors.status_for`
and are logged with method, status and duration — never with metadata, which
carries tokens.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from xfer.server.errors import XferError, status_for

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("xfer.server.access")


class Authorizer(Protocol):
    """Decides whether a call may proceed; raises Unauthenticated / PermissionDenied."""

    def authorize(self, method: str, metadata: Any) -> Any:
        ...


class RpcInterceptor(grpc.ServerInterceptor):
    """Authenticates, maps exceptions to statuses, and logs every RPC."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        try:
            self._authorizer.authorize(method, handler_call_details.invocation_metadata)
            denial: XferError | None = None
        except XferError as exc:
            # Raised inside the call below, so it is logged and mapped like any other error.
            denial = exc
        if handler.request_streaming and handler.response_streaming:
            factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
        elif handler.request_streaming:
            factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
        elif handler.response_streaming:
            factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        else:
            factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        wrap = self._wrap_stream if handler.response_streaming else self._wrap_unary
        return factory(wrap(method, behavior, denial), request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)

    def _wrap_unary(self, method: str, behavior: Callable, denial: XferError | None) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                if denial is not None:
                    raise denial
                return behavior(request, context)
            except Exception as exc:
                _fail(context, exc, method)
            finally:
                _log(method, context, started)

        return call

    def _wrap_stream(self, method: str, behavior: Callable, denial: XferError | None) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            try:
                if denial is not None:
                    raise denial
                yield from behavior(request, context)
            except Exception as exc:
                _fail(context, exc, method)
            finally:
                _log(method, context, started)

        return call


def _fail(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    """Aborts the call with the status `exc` maps to (always raises)."""
    if context.code() is not None and not isinstance(exc, XferError):
        # The handler (or grpc itself) already chose a status, e.g. via context.abort().
        raise exc
    if not context.is_active():
        # The client cancelled or the deadline passed; nobody is listening for a status.
        logger.info("%s ended early: the client cancelled or its deadline passed (%s)", method,
                    type(exc).__name__)
        raise exc
    request_id = uuid.uuid4().hex[:12]
    status = status_for(exc, request_id=request_id)
    if not status.expected:
        logger.error("unexpected error in %s (request id %s)", method, request_id, exc_info=exc)
    context.abort(status.code, status.message)


def _log(method: str, context: grpc.ServicerContext, started: float) -> None:
    code = context.code()
    if code is None:
        code = grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED
    access_logger.info("rpc %s %s %.1fms", method, code.name, (time.perf_counter() - started) * 1000)
