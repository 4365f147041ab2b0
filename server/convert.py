"""Converters between xfer.v1 messages and server domain types (registry, transfer, runs).

One of the few modules allowed to import *_pb2: the servicers convert with
these and delegate; domain code never sees a message.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from typing import cast

from google.protobuf import timestamp_pb2

from xfer.models.card_proto import card_from_proto, card_to_proto
from xfer.models.errors import ModelError
from xfer.server.domain import (
    ArtifactDeclaration,
    ArtifactFormat,
    ArtifactRecord,
    ModelRecord,
    Signature,
    UploadChunk,
    UploadHeader,
    VersionRecord,
)
from xfer.server.errors import InvalidArgument, Reason
from xfer.server.runs import LeaderboardRow, RunPrivacy, RunReport, StoredRun
from xfer.server.transfer import ArtifactRead, Chunk
from xfer.v1 import metrics_service_pb2, model_pb2, registry_service_pb2, transfer_service_pb2

_FORMATS: dict[int, ArtifactFormat] = {
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
        raise InvalidArgument(
            f"unknown artifact format {value}; use SAFETENSORS, ONNX or TORCH_STATE_DICT", field="format"
        ) from None


def format_to_proto(fmt: ArtifactFormat) -> model_pb2.ArtifactFormat:
    """ArtifactFormat -> ARTIFACT_FORMAT_*."""
    return cast(model_pb2.ArtifactFormat, _FORMATS_BACK[fmt])  # the generated stubs type enums as classes


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a protobuf Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


# -- versions and models ---------------------------------------------------------
def artifact_to_proto(artifact: ArtifactRecord) -> model_pb2.Artifact:
    """ArtifactRecord -> xfer.v1.Artifact."""
    return model_pb2.Artifact(
        format=format_to_proto(artifact.format),
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        derived=artifact.derived,
    )


def version_to_proto(record: VersionRecord) -> model_pb2.ModelVersion:
    """VersionRecord -> xfer.v1.ModelVersion."""
    return model_pb2.ModelVersion(
        name=record.name,
        version=record.version,
        card=card_to_proto(record.card),
        artifacts=[artifact_to_proto(a) for a in record.artifacts],
        aliases=list(record.aliases),
        create_time=timestamp(record.create_time),
        deprecated=record.deprecated,
        deprecation_message=record.deprecation_message,
        signatures=[
            model_pb2.ManifestSignature(key_id=s.key_id, algorithm=s.algorithm, signature=s.signature)
            for s in record.signatures
        ],
    )


def model_to_proto(record: ModelRecord) -> model_pb2.Model:
    """ModelRecord -> xfer.v1.Model."""
    message = model_pb2.Model(
        name=record.name,
        version_count=record.version_count,
        aliases=dict(record.aliases),
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )
    if record.latest_version is not None:
        message.latest_version = f"{record.name}/versions/{record.latest_version}"
    if record.latest_card is not None:
        message.latest_card.CopyFrom(card_to_proto(record.latest_card))
    return message


# -- upload stream -----------------------------------------------------------------
def upload_from_proto(
    requests: Iterable[registry_service_pb2.CreateModelVersionRequest],
) -> Iterator[UploadHeader | UploadChunk]:
    """Lazily converts the request stream; the registry checks the order of header and chunks."""
    for request in requests:
        yield upload_message_from_proto(request)


def upload_message_from_proto(request: registry_service_pb2.CreateModelVersionRequest) -> UploadHeader | UploadChunk:
    """One CreateModelVersion message: the header or a chunk."""
    kind = request.WhichOneof("payload")
    if kind == "header":
        return header_from_proto(request.header)
    if kind == "chunk":
        fmt = format_from_proto(request.chunk.format)
        if fmt is None:
            raise InvalidArgument(
                "a chunk has format UNSPECIFIED; set it to the declared artifact's format",
                reason=Reason.INVALID_UPLOAD,
                field="chunk.format",
            )
        return UploadChunk(format=fmt, data=request.chunk.data)
    raise InvalidArgument("an upload message carries neither a header nor a chunk", reason=Reason.INVALID_UPLOAD)


def header_from_proto(header: registry_service_pb2.CreateModelVersionHeader) -> UploadHeader:
    """The upload header; the card is required."""
    if not header.HasField("card"):
        raise InvalidArgument(
            "the header has no card; every version needs a model card", reason=Reason.INVALID_CARD, field="header.card"
        )
    declarations = []
    for declared in header.artifacts:
        fmt = format_from_proto(declared.format)
        if fmt is None:
            raise InvalidArgument(
                "an artifact declaration has format UNSPECIFIED; use SAFETENSORS, ONNX or TORCH_STATE_DICT",
                reason=Reason.INVALID_UPLOAD,
                field="header.artifacts.format",
            )
        declarations.append(ArtifactDeclaration(format=fmt, size_bytes=declared.size_bytes, sha256=declared.sha256))
    try:
        card = card_from_proto(header.card)
    except ModelError as exc:
        raise InvalidArgument(f"invalid model card: {exc}", reason=Reason.INVALID_CARD, field="header.card") from None
    return UploadHeader(
        parent=header.parent,
        card=card,
        artifacts=tuple(declarations),
        signatures=signatures_from_proto(header.signatures),
    )


#: Ed25519 is the one algorithm clients verify; anything else could only ever fail verification.
SIGNATURE_ALGORITHMS = {"ed25519": 64}
MAX_SIGNATURES = 8


def signatures_from_proto(signatures: Iterable[model_pb2.ManifestSignature]) -> tuple[Signature, ...]:
    """Upload signatures, checked for form only (clients verify them against the keys they trust)."""
    found = list(signatures)
    if len(found) > MAX_SIGNATURES:
        raise InvalidArgument(
            f"{len(found)} signatures; at most {MAX_SIGNATURES} are allowed per version",
            reason=Reason.INVALID_UPLOAD,
            field="header.signatures",
        )
    checked = []
    for i, sig in enumerate(found):
        field = f"header.signatures[{i}]"
        size = SIGNATURE_ALGORITHMS.get(sig.algorithm)
        if size is None:
            raise InvalidArgument(
                f"signature {i}: algorithm {sig.algorithm[:32]!r} is not supported; use "
                f"{', '.join(SIGNATURE_ALGORITHMS)}",
                reason=Reason.INVALID_UPLOAD,
                field=f"{field}.algorithm",
            )
        if not re.fullmatch(r"[0-9a-f]{16}", sig.key_id):
            raise InvalidArgument(
                f"signature {i}: key_id must be 16 lower-case hex digits",
                reason=Reason.INVALID_UPLOAD,
                field=f"{field}.key_id",
            )
        if len(sig.signature) != size:
            raise InvalidArgument(
                f"signature {i}: an {sig.algorithm} signature has {size} bytes, got {len(sig.signature)}",
                reason=Reason.INVALID_UPLOAD,
                field=f"{field}.signature",
            )
        checked.append(Signature(key_id=sig.key_id, algorithm=sig.algorithm, signature=bytes(sig.signature)))
    return tuple(checked)


# -- transfer ---------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def read_response_bytes(chunk: Chunk | None, *, first: ArtifactRead | None = None) -> bytes:
    """A serialized ReadArtifactResponse: `chunk` (offset, data), plus size, digest and version if `first`.

    Encoded by hand, because building the message and serializing it would
    copy each chunk twice; this copies it once. Byte for byte what
    `ReadArtifactResponse(...).SerializeToString()` gives, fields in number
    order and defaults omitted (tests/server/test_server_convert.py checks it).
    """
    parts: list[bytes] = []
    if first is not None and first.total_size_bytes:
        parts.append(_varint(1 << 3) + _varint(first.total_size_bytes))
    if first is not None and first.sha256:
        parts.append(_length_delimited(2, first.sha256.encode()))
    offset = chunk.offset if chunk is not None else (first.read_offset if first is not None else 0)
    if offset:
        parts.append(_varint(3 << 3) + _varint(offset))
    if chunk is not None and chunk.data:
        parts += [_varint(4 << 3 | 2), _varint(len(chunk.data)), chunk.data]
    if first is not None and first.model_version:
        parts.append(_length_delimited(5, first.model_version.encode()))
    return b"".join(parts)


def serialize_read_response(response: transfer_service_pb2.ReadArtifactResponse | bytes) -> bytes:
    """The ReadArtifact response serializer: passes pre-encoded bytes through, serializes messages."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


# -- runs ------------------------------------------------------------------------------------
_DEVICE_KINDS: dict[int, str] = {
    metrics_service_pb2.DEVICE_KIND_CPU: "cpu",
    metrics_service_pb2.DEVICE_KIND_CUDA: "cuda",
    metrics_service_pb2.DEVICE_KIND_MPS: "mps",
}
_DEVICE_ENUMS = {kind: number for number, kind in _DEVICE_KINDS.items()}
_GOALS: dict[int, str] = {
    # Unspecified means the common case: a higher metric is better.
    metrics_service_pb2.METRIC_GOAL_UNSPECIFIED: "maximize",
    metrics_service_pb2.METRIC_GOAL_MAXIMIZE: "maximize",
    metrics_service_pb2.METRIC_GOAL_MINIMIZE: "minimize",
}


def run_from_proto(run: metrics_service_pb2.Run) -> RunReport:
    """The domain report of a wire `Run` (output-only fields are ignored)."""
    return RunReport(
        run_id=run.run_id,
        model_version=run.model_version,
        strategy=run.strategy.name,
        hyperparameters=dict(run.strategy.hyperparameters),
        metrics=dict(run.metrics),
        privacy=RunPrivacy(
            dp=run.privacy.dp,
            epsilon_spent=run.privacy.epsilon_spent,
            delta=run.privacy.delta,
            noise_multiplier=run.privacy.noise_multiplier,
            max_grad_norm=run.privacy.max_grad_norm,
        ),
        train_examples_pow2=run.train_examples_pow2,
        device_kind=_device_kind_of(run.device_kind),
        wall_seconds=run.wall_seconds,
    )


def _device_kind_of(number: int) -> str:
    # Unspecified and unknown numbers pass through as names the store
    # rejects, so the caller hears which kinds are valid.
    if number == metrics_service_pb2.DEVICE_KIND_UNSPECIFIED:
        return ""
    return _DEVICE_KINDS.get(number, f"DeviceKind({number})")


def goal_from_proto(number: int) -> str:
    """MetricGoal -> "maximize"/"minimize"; an unknown number becomes a name the store rejects."""
    return _GOALS.get(number, f"MetricGoal({number})")


def run_to_proto(stored: StoredRun) -> metrics_service_pb2.Run:
    """The wire `Run` of a stored run."""
    report = stored.report
    return metrics_service_pb2.Run(
        name=stored.name,
        run_id=report.run_id,
        model_version=report.model_version,
        strategy=metrics_service_pb2.Strategy(name=report.strategy, hyperparameters=report.hyperparameters),
        metrics=report.metrics,
        privacy=metrics_service_pb2.RunPrivacy(
            dp=report.privacy.dp,
            epsilon_spent=report.privacy.epsilon_spent,
            delta=report.privacy.delta,
            noise_multiplier=report.privacy.noise_multiplier,
            max_grad_norm=report.privacy.max_grad_norm,
        ),
        train_examples_pow2=report.train_examples_pow2,
        device_kind=cast(metrics_service_pb2.DeviceKind, _DEVICE_ENUMS[report.device_kind]),
        wall_seconds=report.wall_seconds,
        create_time=timestamp(stored.create_time),
    )


def leaderboard_to_proto(row: LeaderboardRow) -> metrics_service_pb2.LeaderboardEntry:
    """The wire entry of one leaderboard row."""
    return metrics_service_pb2.LeaderboardEntry(
        model_version=row.model_version,
        strategy=row.strategy,
        dp=row.dp,
        count=row.count,
        mean=row.mean,
        std=row.std,
        best=row.best,
        best_run_id=row.best_run_id,
    )
