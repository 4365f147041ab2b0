"""Domain logic of ReadArtifact: resolve, bound-check, and read a blob in chunks that grow to the configured size.

`open_read` does the blocking part (catalog lookup, opening and, once per
process, hashing the blob); `ArtifactRead.chunk_reader` reads one chunk with
`os.pread`, so the asyncio servicer can run each read in a worker thread and
wait for the client between chunks without holding one.

Chunk sizes start small and double with every chunk the client takes, up to
the configured chunk size (`ChunkSizer`, like TCP's slow start): a client
that opens a stream and never reads holds a few dozen KiB of server memory
instead of several chunk sizes, while a reading client reaches full-size
chunks after about 2 MiB.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import BinaryIO

from xfer.server.domain import ArtifactFormat
from xfer.server.errors import DataLoss, InvalidArgument, NotFound, OutOfRange, Reason
from xfer.server.registry import Registry

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Bytes of an artifact starting at `offset`."""

    offset: int
    data: bytes


#: Size of the first chunk of every read (or the chunk size, if smaller).
FIRST_CHUNK = 64 * 1024


class ChunkSizer:
    """Slow start: FIRST_CHUNK, then twice the previous size after each chunk the client took, up to `limit`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.size = min(FIRST_CHUNK, limit)

    @property
    def next_size(self) -> int:
        """The size after the next `taken()`."""
        return min(self.size * 2, self._limit)

    def taken(self) -> None:
        """The client accepted a chunk: the next may be twice as large."""
        self.size = self.next_size


class ArtifactRead:
    """An open read: what the first response announces, and the chunks to send. Close it when done."""

    def __init__(
        self,
        *,
        model_version: str,
        total_size_bytes: int,
        sha256: str,
        read_offset: int,
        end: int,
        chunk_size: int,
        file: BinaryIO,
    ) -> None:
        self.model_version = model_version
        self.total_size_bytes = total_size_bytes
        self.sha256 = sha256
        self.read_offset = read_offset
        self._next = read_offset
        self._end = end
        self._chunk_size = chunk_size
        self._file = file

    def next_span(self, size: int) -> tuple[int, int] | None:
        """(offset, length) of the next chunk, at most `size` and the chunk size; None at the end."""
        if self._next >= self._end:
            return None
        return self._next, min(size, self._chunk_size, self._end - self._next)

    def advance(self, length: int) -> None:
        """Counts `length` more bytes as sent."""
        self._next += length

    def chunk_reader(self, offset: int, length: int) -> Callable[[], Chunk]:
        """A blocking read of `length` bytes at `offset`, for a worker thread.

        It reads through its own duplicate of the file descriptor, taken here
        on the caller's thread: other streams may wait for this read (see
        chunk_cache), and it must stay valid when this stream ends first.
        """
        fd = os.dup(self._file.fileno())

        def read() -> Chunk:
            try:
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
            if len(data) != length:
                raise DataLoss(
                    "the stored artifact ended early while being read; ask the operator to re-upload it",
                    reason=Reason.BLOB_CORRUPT,
                )
            return Chunk(offset=offset, data=data)

        return read

    def close(self) -> None:
        """Closes the blob file (safe to call twice)."""
        self._file.close()


def open_read(
    registry: Registry, *, name: str, fmt: ArtifactFormat | None, read_offset: int, read_limit: int, chunk_size: int
) -> ArtifactRead:
    """Resolves `name`, checks the range and opens the blob (verifying it) for streaming."""
    if fmt is None:
        raise InvalidArgument("format is unspecified; ask for SAFETENSORS or ONNX", field="format")
    if fmt == ArtifactFormat.TORCH_STATE_DICT:
        raise InvalidArgument(
            "TORCH_STATE_DICT is an upload-only format (stored as SAFETENSORS); ask for SAFETENSORS or ONNX",
            field="format",
        )
    if read_offset < 0 or read_limit < 0:
        raise InvalidArgument(
            f"read_offset and read_limit must not be negative (got {read_offset}, {read_limit})",
            field="read_offset" if read_offset < 0 else "read_limit",
        )
    record = registry.get_version(name)
    artifact = record.artifact(fmt)
    if artifact is None:
        raise NotFound(
            f"{record.name} has no {fmt.name} artifact; it has {[a.format.name for a in record.artifacts]}",
            reason=Reason.ARTIFACT_NOT_FOUND,
            metadata={"model_version": record.name, "format": fmt.name},
        )
    if read_offset > artifact.size_bytes:
        raise OutOfRange(
            f"read_offset {read_offset} is past the end of the {fmt.name} artifact of {record.name} "
            f"({artifact.size_bytes} bytes); resume from an offset at most the size",
            reason=Reason.OFFSET_OUT_OF_RANGE,
            field="read_offset",
            metadata={"size_bytes": str(artifact.size_bytes)},
        )
    end = artifact.size_bytes if read_limit == 0 else min(artifact.size_bytes, read_offset + read_limit)
    f = registry.blobs.open(artifact.sha256, size=artifact.size_bytes)
    return ArtifactRead(
        model_version=record.name,
        total_size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        read_offset=read_offset,
        end=end,
        chunk_size=chunk_size,
        file=f,
    )
