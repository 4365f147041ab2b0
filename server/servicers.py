"""Thin asyncio servicers: convert the request, delegate to the domain in a worker thread, convert back.

Blocking work (database, file reads, the validation sandbox) runs in the
loop's thread pool via `asyncio.to_thread` (which carries the request id
along); waiting for a client — to read the next chunk, to send the next
upload message — holds no thread at all, so no number of slow clients can
starve the others. A client that makes no progress for `stall_timeout`
seconds gets UNAVAILABLE (reason STREAM_STALLED). Errors are raised as
server.errors exceptions and mapped to statuses by the interceptor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from xfer.server import convert
from xfer.server.chunk_cache import ChunkCache
from xfer.server.domain import UploadHeader
from xfer.server.errors import InvalidArgument, Reason, Unavailable
from xfer.server.observability import ServerMetrics
from xfer.server.registry import Registry
from xfer.server.run_store import RunStore
from xfer.server.transfer import ArtifactRead, Chunk, ChunkSizer, open_read
from xfer.v1 import metrics_service_pb2 as ms
from xfer.v1 import metrics_service_pb2_grpc, registry_service_pb2_grpc, transfer_service_pb2
from xfer.v1 import registry_service_pb2 as rs

logger = logging.getLogger(__name__)


async def next_message(messages: AsyncIterator[Any], *, stall_timeout: float) -> Any | None:
    """The next request of a client stream, None at its end; UNAVAILABLE if the client sends nothing in time."""
    try:
        return await asyncio.wait_for(anext(messages, None), stall_timeout)
    except TimeoutError:
        raise Unavailable(
            f"no upload data arrived for {stall_timeout:g} s, so the server ended the upload; "
            "nothing was stored — send the chunks without pausing and upload again",
            reason=Reason.STREAM_STALLED,
            retry_after=1.0,
        ) from None


async def write_message(context: grpc.aio.ServicerContext, message: Any, *, stall_timeout: float) -> None:
    """Sends one response, waiting (without a thread) until flow control lets it go; UNAVAILABLE after the timeout."""
    try:
        await asyncio.wait_for(context.write(message), stall_timeout)
    except TimeoutError:
        raise Unavailable(
            f"the client read nothing for {stall_timeout:g} s, so the server ended the stream; "
            "resume from the bytes received (read_offset) and keep reading",
            reason=Reason.STREAM_STALLED,
            retry_after=1.0,
        ) from None
    except Exception as exc:
        # A send fails only when the call is already over (the client went away or the server is
        # stopping): that is a cancellation, not a server error.
        logger.debug("write to a finished call failed (%s); treating it as cancelled", type(exc).__name__)
        raise asyncio.CancelledError() from None


class RegistryServicer(registry_service_pb2_grpc.RegistryServiceServicer):
    """xfer.v1.RegistryService over a Registry."""

    def __init__(self, registry: Registry, *, stall_timeout: float, metrics: ServerMetrics | None = None) -> None:
        self._registry = registry
        self._stall_timeout = stall_timeout
        self._metrics = metrics

    async def CreateModelVersion(
        self, request_iterator: AsyncIterator[rs.CreateModelVersionRequest], context: grpc.aio.ServicerContext
    ) -> rs.CreateModelVersionResponse:
        messages = aiter(request_iterator)
        first = await next_message(messages, stall_timeout=self._stall_timeout)
        header = convert.upload_message_from_proto(first) if first is not None else None
        if not isinstance(header, UploadHeader):
            raise InvalidArgument(
                "the first message of CreateModelVersion must be the header (model, card, "
                "artifact declarations); send the header, then the chunks",
                reason=Reason.INVALID_UPLOAD,
            )
        session = await asyncio.to_thread(self._registry.begin_upload, header)
        try:
            while (message := await next_message(messages, stall_timeout=self._stall_timeout)) is not None:
                chunk = convert.upload_message_from_proto(message)
                await asyncio.to_thread(session.write, chunk)
                if self._metrics is not None and not isinstance(chunk, UploadHeader):
                    self._metrics.bytes_received.inc(len(chunk.data))
            record = await asyncio.to_thread(session.finish)
        finally:
            session.discard()
        return rs.CreateModelVersionResponse(model_version=convert.version_to_proto(record))

    async def GetModelVersion(self, request, context):
        record = await asyncio.to_thread(self._registry.get_version, request.name)
        return rs.GetModelVersionResponse(model_version=convert.version_to_proto(record))

    async def ListModels(self, request, context):
        page = await asyncio.to_thread(
            self._registry.list_models, page_size=request.page_size, page_token=request.page_token
        )
        return rs.ListModelsResponse(
            models=[convert.model_to_proto(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def ListModelVersions(self, request, context):
        page = await asyncio.to_thread(
            self._registry.list_versions, request.parent, page_size=request.page_size, page_token=request.page_token
        )
        return rs.ListModelVersionsResponse(
            model_versions=[convert.version_to_proto(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def SetAlias(self, request, context):
        record = await asyncio.to_thread(self._registry.set_alias, request.name, request.alias)
        return rs.SetAliasResponse(model_version=convert.version_to_proto(record))

    async def DeprecateModelVersion(self, request, context):
        record = await asyncio.to_thread(self._registry.deprecate, request.name, request.message)
        return rs.DeprecateModelVersionResponse(model_version=convert.version_to_proto(record))

    async def DeleteModelVersion(self, request, context):
        await asyncio.to_thread(self._registry.delete, request.name)
        return rs.DeleteModelVersionResponse()


class TransferServicer:
    """xfer.v1.TransferService: ReadArtifact streams blob bytes in growing chunks, one read ahead.

    Registered with `transfer_handler`, whose serializer passes the
    pre-encoded chunk responses (convert.read_response_bytes) through.
    Chunks after the first come through `chunks`, shared by every stream.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        chunk_size: int,
        stall_timeout: float,
        chunks: ChunkCache,
        metrics: ServerMetrics | None = None,
        reads: concurrent.futures.Executor | None = None,
    ) -> None:
        """`reads` runs the chunk reads: a pool of their own, so that metadata calls never queue behind
        the read-aheads of many pulls (None: the loop's default pool)."""
        self._registry = registry
        self._chunk_size = chunk_size
        self._stall_timeout = stall_timeout
        self._chunks = chunks
        self._metrics = metrics
        self._reads = reads

    async def ReadArtifact(
        self, request: transfer_service_pb2.ReadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> None:
        fmt = convert.format_from_proto(request.format)
        read = await asyncio.to_thread(
            open_read,
            self._registry,
            name=request.name,
            fmt=fmt,
            read_offset=request.read_offset,
            read_limit=request.read_limit,
            chunk_size=self._chunk_size,
        )
        served = self._metrics.bytes_served.labels(format=fmt.value) if self._metrics and fmt else None
        sizer = ChunkSizer(self._chunk_size)
        ahead: asyncio.Future | None = None
        try:
            # Headers go on their own (they are not flow-controlled), so that when a write to a client that
            # stopped reading is abandoned, the status that follows is not refused as a second header batch.
            await context.send_initial_metadata(())
            # The first response also announces size, digest and version: it is this stream's own.
            span = read.next_span(sizer.size)
            chunk = None if span is None else await self._run_read(read.chunk_reader(*span))
            message = convert.read_response_bytes(chunk, first=read)
            while True:
                length = 0 if span is None else span[1]
                read.advance(length)
                span = read.next_span(sizer.next_size)
                if span is not None:
                    # The next chunk is read (or found) while this one waits for the client.
                    ahead = asyncio.ensure_future(self._shared_message(read, span))
                await write_message(context, message, stall_timeout=self._stall_timeout)
                sizer.taken()
                if served is not None:
                    served.inc(length)
                if ahead is None:
                    break
                message, ahead = await ahead, None
        finally:
            if ahead is not None:
                # Reads run on their own file descriptors, so the file can close without waiting for this one.
                ahead.cancel()
                ahead.add_done_callback(_retrieve)
            read.close()

    async def _run_read(self, reader: Callable[[], Chunk]) -> Chunk:
        return await asyncio.get_running_loop().run_in_executor(self._reads, reader)

    async def _encoded(self, reader: Callable[[], Chunk]) -> bytes:
        return convert.read_response_bytes(await self._run_read(reader))

    async def _shared_message(self, read: ArtifactRead, span: tuple[int, int]) -> bytes:
        """The encoded response of the chunk at `span`, read once for every stream that wants it."""
        # chunk_reader duplicates the descriptor when called: here, on the loop's thread, while `read` is open.
        return await self._chunks.get_or_read((read.sha256, *span), lambda: self._encoded(read.chunk_reader(*span)))


def _retrieve(task: asyncio.Future) -> None:
    """Done-callback of an abandoned read-ahead: its outcome concerns nobody, so it is not logged as lost."""
    if not task.cancelled():
        task.exception()


def transfer_handler(servicer: TransferServicer) -> grpc.GenericRpcHandler:
    """The TransferService handler, with the pass-through response serializer."""
    return grpc.method_handlers_generic_handler(
        "xfer.v1.TransferService",
        {
            "ReadArtifact": grpc.unary_stream_rpc_method_handler(
                servicer.ReadArtifact,
                request_deserializer=transfer_service_pb2.ReadArtifactRequest.FromString,
                response_serializer=convert.serialize_read_response,
            ),
        },
    )


class RunsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    """xfer.v1.MetricsService (run reports) over a RunStore."""

    def __init__(self, store: RunStore) -> None:
        self._store = store

    async def ReportRun(self, request: ms.ReportRunRequest, context) -> ms.ReportRunResponse:
        """Stores a run report (idempotent on run_id)."""
        if not request.HasField("run"):
            raise InvalidArgument(
                "run is required: set ReportRunRequest.run", reason=Reason.INVALID_REPORT, field="run"
            )
        outcome = await asyncio.to_thread(self._store.report, convert.run_from_proto(request.run))
        return ms.ReportRunResponse(run=convert.run_to_proto(outcome.run), duplicate=outcome.duplicate)

    async def ListRuns(self, request: ms.ListRunsRequest, context) -> ms.ListRunsResponse:
        """One page of runs, newest first."""
        page = await asyncio.to_thread(
            self._store.list_runs,
            model=request.model,
            strategy=request.strategy,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ms.ListRunsResponse(
            runs=[convert.run_to_proto(run) for run in page.runs], next_page_token=page.next_page_token
        )

    async def SummarizeRuns(self, request: ms.SummarizeRunsRequest, context) -> ms.SummarizeRunsResponse:
        """The leaderboard of one metric."""
        rows = await asyncio.to_thread(
            self._store.summarize,
            metric=request.metric,
            model=request.model,
            goal=convert.goal_from_proto(request.goal),
        )
        return ms.SummarizeRunsResponse(
            metric=request.metric, entries=[convert.leaderboard_to_proto(row) for row in rows]
        )
