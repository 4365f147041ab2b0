"""The RPC boundary (grpc.aio): request ids, authentication, stream limits, status details, metrics, access log.

One interceptor wraps every method handler (coroutines and async generators,
all four streaming shapes) so that auth failures, limit refusals, domain
errors and crashes all go through `errors.status_for`, leave with
`google.rpc.Status` details, are counted in Prometheus and logged with
method, status, reason and duration — never with metadata, which carries
tokens.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import grpc
import grpc.aio

from xfer.server import rpc_status
from xfer.server.errors import status_for
from xfer.server.limits import CallRateLimiter, StreamLimiter, StreamSlot
from xfer.server.observability import REQUEST_ID, REQUEST_ID_HEADER, ServerMetrics, request_id_from

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("xfer.server.access")

UPLOAD_METHOD = "/xfer.v1.RegistryService/CreateModelVersion"
#: gRPC's retry pushback trailer (gRFC A6): milliseconds before the client's next attempt.
RETRY_PUSHBACK_HEADER = "grpc-retry-pushback-ms"


class Authorizer(Protocol):
    """Decides whether a call may proceed; raises Unauthenticated / PermissionDenied."""

    def authorize(self, method: str, metadata: Any) -> Any: ...


@dataclasses.dataclass
class _Call:
    """Book-keeping of one RPC."""

    method: str
    request_id: str
    started: float
    code: grpc.StatusCode | None = None
    reason: str = ""
    slot: StreamSlot | None = None
    recorded: bool = False


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, limits streams, maps exceptions to rich statuses, measures and logs every RPC."""

    def __init__(
        self,
        authorizer: Authorizer,
        *,
        limiters: Mapping[str, StreamLimiter] | None = None,
        call_rate: CallRateLimiter | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._authorizer = authorizer
        #: method -> limiter of its concurrent streams, keyed by the caller's token.
        self._limiters = dict(limiters or {})
        #: The rate of every call that carries a token (health and reflection carry none).
        self._call_rate = call_rate
        self._metrics = metrics

    async def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if handler.request_streaming and handler.response_streaming:
            factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
        elif handler.request_streaming:
            factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
        elif handler.response_streaming:
            factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        else:
            factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        wrapped = self._wrap(method, metadata, behavior)
        return factory(
            wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    # -- the wrappers -----------------------------------------------------------------------
    def _wrap(self, method: str, metadata: Any, behavior: Callable) -> Callable:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call = self._begin(method, metadata, context)
                token = REQUEST_ID.set(call.request_id)
                try:
                    self._admit(call, metadata)
                    async for response in behavior(request, context):
                        yield response
                    self._succeeded(call)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await self._fail(call, context, exc)
                finally:
                    self._end(call)
                    REQUEST_ID.reset(token)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, metadata, context)
            token = REQUEST_ID.set(call.request_id)
            try:
                self._admit(call, metadata)
                result = await behavior(request, context)
                self._succeeded(call)
                return result
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(call, context, exc)
            finally:
                self._end(call)
                REQUEST_ID.reset(token)

        return unary

    # -- steps --------------------------------------------------------------------------------
    def _begin(self, method: str, metadata: Any, context: grpc.aio.ServicerContext) -> _Call:
        call = _Call(method=method, request_id=request_id_from(metadata), started=time.perf_counter())
        context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))
        return call

    def _admit(self, call: _Call, metadata: Any) -> None:
        """Authenticates, spends one call of the token's rate, then takes a stream slot for limited methods
        (raising a refusal as a RequestError)."""
        principal = self._authorizer.authorize(call.method, metadata)
        if principal is None:
            return
        key = principal.key or principal.name
        if self._call_rate is not None:
            self._call_rate.take(key)
        limiter = self._limiters.get(call.method)
        if limiter is not None:
            call.slot = limiter.acquire(key)
            if self._metrics is not None:
                self._metrics.active_streams.labels(method=call.method).inc()

    def _release(self, call: _Call) -> None:
        if call.slot is not None:
            call.slot.release()
            call.slot = None
            if self._metrics is not None:
                self._metrics.active_streams.labels(method=call.method).dec()

    def _succeeded(self, call: _Call) -> None:
        call.code = grpc.StatusCode.OK
        self._release(call)
        self._record(call)

    async def _fail(self, call: _Call, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        """Aborts the call with the rich status `exc` maps to (always raises)."""
        status = status_for(exc, request_id=call.request_id)
        if not status.expected:
            logger.error("unexpected error in %s (request id %s)", call.method, call.request_id, exc_info=exc)
        call.code, call.reason = status.code, status.reason
        # Slot, gauge and log first: for a client that stopped reading, `abort` returns only once the
        # connection drains or closes, and its slot must not wait for that.
        self._release(call)
        self._record(call)
        if self._metrics is not None and call.method == UPLOAD_METHOD:
            self._metrics.upload_rejections.labels(reason=status.reason).inc()
        trailers = (*rpc_status.trailing_metadata(status), (REQUEST_ID_HEADER, call.request_id))
        if status.retry_after is not None:
            # gRPC's own retry (the SDK's service config) waits exactly this long instead of its backoff.
            trailers += ((RETRY_PUSHBACK_HEADER, str(math.ceil(status.retry_after * 1000))),)
        await context.abort(status.code, status.message, trailing_metadata=trailers)

    def _end(self, call: _Call) -> None:
        if call.code is None:
            # Neither returned nor raised an Exception: the client cancelled or its deadline passed.
            call.code = grpc.StatusCode.CANCELLED
        self._release(call)
        self._record(call)

    def _record(self, call: _Call) -> None:
        if call.recorded:
            return
        call.recorded = True
        seconds = time.perf_counter() - call.started
        code = call.code.name if call.code is not None else "UNKNOWN"
        if self._metrics is not None:
            self._metrics.rpcs.labels(method=call.method, code=code).inc()
            self._metrics.latency.labels(method=call.method, code=code).observe(seconds)
        reason = f" {call.reason}" if call.reason and code != "OK" else ""
        access_logger.info("rpc %s %s%s %.1fms", call.method, code, reason, seconds * 1000)
