"""Converters between xfer.v1 messages and server domain types (registry and transfer).

One of the few modules allowed to import *_pb2 (servicers and converters only).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from google.protobuf import timestamp_pb2

from xfer.models.card_proto import card_from_proto, card_to_proto
from xfer.models.errors import ModelError
from xfer.server.domain import (ArtifactDeclaration, ArtifactFormat, ArtifactRecord, ModelRecord, UploadChunk,
                           UploadHeader, VersionRecord)
from xfer.server.errors import InvalidArgument
from xfer.server.transfer import ArtifactRead
from xfer.v1 import model_pb2, registry_service_pb2, transfer_service_pb2

_FORMATS = {
    model_pb2.ARTIFACT_FORMAT_SAFETENSORS: ArtifactFormat.SAFETENSORS,
    model_pb2.ARTIFACT_FORMAT_ONNX: ArtifactFormat.ONNX,
    model_pb2.ARTIFACT_FORMAT_TORCH_STATE_DICT: ArtifactFormat.TORCH_STATE_DICT,
}
_FORMATS_BACK = {v: k for k, v in _FORMATS.items()}


def format_from_proto(value: int) -> ArtifactFormat | None:
    """ARTIFACT_FORMAT_* -> ArtifactFormat; None for UNSPECIFIED; InvalidArgument for unknown numbers."""
    if value == model_pb2.ARTIFACT_FORMAT_UNSPECIFIED:
        return None
    try:
        return _FORMATS[value]
    except KeyError:
        raise InvalidArgument(f"unknown artifact format {value}; use SAFETENSORS, ONNX or "
                              "TORCH_STATE_DICT") from None


def format_to_proto(fmt: ArtifactFormat) -> int:
    """ArtifactFormat -> ARTIFACT_FORMAT_*."""
    return _FORMATS_BACK[fmt]


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a protobuf Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


# -- versions and models ---------------------------------------------------------
def artifact_to_proto(artifact: ArtifactRecord) -> model_pb2.Artifact:
    """ArtifactRecord -> xfer.v1.Artifact."""
    return model_pb2.Artifact(format=format_to_proto(artifact.format), size_bytes=artifact.size_bytes,
                              sha256=artifact.sha256, derived=artifact.derived)


def version_to_proto(record: VersionRecord) -> model_pb2.ModelVersion:
    """VersionRecord -> xfer.v1.ModelVersion."""
    return model_pb2.ModelVersion(
        name=record.name, version=record.version, card=card_to_proto(record.card),
        artifacts=[artifact_to_proto(a) for a in record.artifacts], aliases=list(record.aliases),
        create_time=timestamp(record.create_time), deprecated=record.deprecated,
        deprecation_message=record.deprecation_message,
    )


def model_to_proto(record: ModelRecord) -> model_pb2.Model:
    """ModelRecord -> xfer.v1.Model."""
    message = model_pb2.Model(
        name=record.name, version_count=record.version_count, aliases=dict(record.aliases),
        create_time=timestamp(record.create_time), update_time=timestamp(record.update_time),
    )
    if record.latest_version is not None:
        message.latest_version = f"{record.name}/versions/{record.latest_version}"
    if record.latest_card is not None:
        message.latest_card.CopyFrom(card_to_proto(record.latest_card))
    return message


# -- upload stream -----------------------------------------------------------------
def upload_from_proto(
        requests: Iterable[registry_service_pb2.CreateModelVersionRequest]) -> Iterator[UploadHeader | UploadChunk]:
    """Lazily converts the request stream; the registry checks the order of header and chunks."""
    for request in requests:
        kind = request.WhichOneof("payload")
        if kind == "header":
            yield header_from_proto(request.header)
        elif kind == "chunk":
            fmt = format_from_proto(request.chunk.format)
            if fmt is None:
                raise InvalidArgument("a chunk has format UNSPECIFIED; set it to the declared artifact's format")
            yield UploadChunk(format=fmt, data=request.chunk.data)
        else:
            raise InvalidArgument("an upload message carries neither a header nor a chunk")


def header_from_proto(header: registry_service_pb2.CreateModelVersionHeader) -> UploadHeader:
    """The upload header; the card is required."""
    if not header.HasField("card"):
        raise InvalidArgument("the header has no card; every version needs a model card")
    declarations = []
    for declared in header.artifacts:
        fmt = format_from_proto(declared.format)
        if fmt is None:
            raise InvalidArgument("an artifact declaration has format UNSPECIFIED; use SAFETENSORS, ONNX or "
                                  "TORCH_STATE_DICT")
        declarations.append(ArtifactDeclaration(format=fmt, size_bytes=declared.size_bytes, sha256=declared.sha256))
    try:
        card = card_from_proto(header.card)
    except ModelError as exc:
        raise InvalidArgument(f"invalid model card: {exc}") from None
    return UploadHeader(parent=header.parent, card=card, artifacts=tuple(declarations))


# -- transfer ---------------------------------------------------------------------------
def read_responses(read: ArtifactRead) -> Iterator[transfer_service_pb2.ReadArtifactResponse]:
    """The ReadArtifact stream: the first response announces size, digest and version."""
    first = transfer_service_pb2.ReadArtifactResponse(total_size_bytes=read.total_size_bytes, sha256=read.sha256,
                                                      model_version=read.model_version, offset=read.read_offset)
    try:
        chunk = next(read.chunks, None)
        if chunk is not None:
            first.data = chunk.data
        yield first
        for chunk in read.chunks:
            yield transfer_service_pb2.ReadArtifactResponse(offset=chunk.offset, data=chunk.data)
    finally:
        # A client that stops reading must not keep the blob file open until garbage collection.
        read.chunks.close()
