"""Converters between xfer.v1 messages and server domain types (registry and transfer).

One of the few modules allowed to import *_pb2 (DESIGN convention 1).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from xfer.models.card import ModelCard
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


# -- model card ----------------------------------------------------------------
def card_from_proto(card: model_pb2.ModelCard) -> ModelCard:
    """xfer.v1.ModelCard -> ModelCard. Struct numbers arrive as doubles; `check_card` coerces them."""
    privacy = card.source_privacy
    return ModelCard(
        architecture=card.architecture,
        architecture_config=json_format.MessageToDict(card.architecture_config),
        input_shape=tuple(card.input.shape),
        num_classes=card.output.num_classes,
        blocks=tuple(card.blocks),
        head=card.head,
        input_dtype=card.input.dtype or "float32",
        input_mean=tuple(card.input.mean),
        input_std=tuple(card.input.std),
        preprocessing=card.input.preprocessing,
        label_names=tuple(card.output.label_names),
        source_task=card.source_task,
        dp_epsilon=privacy.epsilon if privacy.dp else None,
        dp_delta=privacy.delta if privacy.dp else None,
        license=card.license,
        framework_versions=dict(card.framework_versions),
        description=card.description,
    )


def card_to_proto(card: ModelCard) -> model_pb2.ModelCard:
    """ModelCard -> xfer.v1.ModelCard (the config becomes a Struct)."""
    config = struct_pb2.Struct()
    config.update(card.architecture_config)
    return model_pb2.ModelCard(
        architecture=card.architecture,
        architecture_config=config,
        input=model_pb2.InputSpec(shape=list(card.input_shape), dtype=card.input_dtype, mean=list(card.input_mean),
                                  std=list(card.input_std), preprocessing=card.preprocessing),
        output=model_pb2.OutputSpec(num_classes=card.num_classes, label_names=list(card.label_names)),
        blocks=list(card.blocks),
        head=card.head,
        source_task=card.source_task,
        source_privacy=model_pb2.PrivacyGuarantee(dp=card.dp_epsilon is not None, epsilon=card.dp_epsilon or 0.0,
                                                  delta=card.dp_delta or 0.0),
        license=card.license,
        framework_versions=dict(card.framework_versions),
        description=card.description,
    )


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
    return UploadHeader(parent=header.parent, card=card_from_proto(header.card), artifacts=tuple(declarations))


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
