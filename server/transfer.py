"""Domain logic of ReadArtifact: resolve, bound-check, and stream a blob in fixed-size chunks."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import BinaryIO

from xfer.server.domain import ArtifactFormat
from xfer.server.errors import DataLoss, InvalidArgument, NotFound, OutOfRange
from xfer.server.registry import Registry

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Bytes of an artifact starting at `offset`."""

    offset: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class ArtifactRead:
    """An open read: what the first response announces, and the chunks to send."""

    model_version: str
    total_size_bytes: int
    sha256: str
    read_offset: int
    #: Yields chunks lazily, one file read each; closes the blob when exhausted or closed.
    chunks: Iterator[Chunk]


def open_read(registry: Registry, *, name: str, fmt: ArtifactFormat | None, read_offset: int, read_limit: int,
              chunk_size: int) -> ArtifactRead:
    """Resolves `name`, checks the range and opens the blob (verifying it) for streaming."""
    if fmt is None:
        raise InvalidArgument("format is unspecified; ask for SAFETENSORS or ONNX")
    if fmt == ArtifactFormat.TORCH_STATE_DICT:
        raise InvalidArgument("TORCH_STATE_DICT is an upload-only format (stored as SAFETENSORS); ask for "
                              "SAFETENSORS or ONNX")
    if read_offset < 0 or read_limit < 0:
        raise InvalidArgument(f"read_offset and read_limit must not be negative (got {read_offset}, {read_limit})")
    record = registry.get_version(name)
    artifact = record.artifact(fmt)
    if artifact is None:
        raise NotFound(f"{record.name} has no {fmt.name} artifact; it has "
                       f"{[a.format.name for a in record.artifacts]}")
    if read_offset > artifact.size_bytes:
        raise OutOfRange(f"read_offset {read_offset} is past the end of the {fmt.name} artifact of {record.name} "
                         f"({artifact.size_bytes} bytes); resume from an offset at most the size")
    end = artifact.size_bytes if read_limit == 0 else min(artifact.size_bytes, read_offset + read_limit)
    f = registry.blobs.open(artifact.sha256, size=artifact.size_bytes)
    return ArtifactRead(model_version=record.name, total_size_bytes=artifact.size_bytes, sha256=artifact.sha256,
                        read_offset=read_offset, chunks=_chunks(f, start=read_offset, end=end, chunk_size=chunk_size))


def _chunks(f: BinaryIO, *, start: int, end: int, chunk_size: int) -> Iterator[Chunk]:
    # Reads one chunk per step, so memory stays at one chunk whatever the artifact's size.
    with f:
        f.seek(start)
        offset = start
        while offset < end:
            data = f.read(min(chunk_size, end - offset))
            if not data:
                raise DataLoss("the stored artifact ended early while being read; ask the operator to re-upload it")
            yield Chunk(offset=offset, data=data)
            offset += len(data)
