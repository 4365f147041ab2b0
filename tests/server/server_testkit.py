"""Helpers for server tests: uploads, reads, token metadata, channels. Real gRPC, no mocks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc

from xfer.models.card import ModelCard
from xfer.server.convert import card_to_proto
from xfer.v1 import model_pb2, registry_service_pb2 as rs, registry_service_pb2_grpc, transfer_service_pb2 as ts
from xfer.v1 import transfer_service_pb2_grpc

SAFETENSORS = model_pb2.ARTIFACT_FORMAT_SAFETENSORS
ONNX = model_pb2.ARTIFACT_FORMAT_ONNX
TORCH = model_pb2.ARTIFACT_FORMAT_TORCH_STATE_DICT


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_card(model_dir: Path) -> ModelCard:
    """The ModelCard in a models.train output folder."""
    return ModelCard.from_dict(json.loads((Path(model_dir) / "card.json").read_text()))


def bearer(token: str | None) -> list[tuple[str, str]] | None:
    return None if token is None else [("authorization", f"Bearer {token}")]


@dataclasses.dataclass
class Artifact:
    """Bytes to upload as one format, with what the header declares (defaults: the truth)."""

    format: int
    data: bytes
    declared_sha256: str | None = None
    declared_size: int | None = None


def upload_requests(*, parent: str, card: ModelCard | model_pb2.ModelCard, artifacts: list[Artifact],
                    chunk_size: int = 64 * 1024) -> Iterator[rs.CreateModelVersionRequest]:
    """The CreateModelVersion stream: header, then each artifact in chunks."""
    card_proto = card if isinstance(card, model_pb2.ModelCard) else card_to_proto(card)
    header = rs.CreateModelVersionHeader(parent=parent, card=card_proto, artifacts=[
        rs.ArtifactDeclaration(format=a.format,
                               size_bytes=len(a.data) if a.declared_size is None else a.declared_size,
                               sha256=a.declared_sha256 or sha256_of(a.data))
        for a in artifacts])
    yield rs.CreateModelVersionRequest(header=header)
    for a in artifacts:
        for start in range(0, len(a.data), chunk_size):
            yield rs.CreateModelVersionRequest(chunk=rs.ArtifactChunk(format=a.format, data=a.data[start:start + chunk_size]))


def model_artifacts(model_dir: Path, *, onnx: bool = True) -> list[Artifact]:
    """The safetensors (and ONNX) of a models.train folder."""
    found = [Artifact(SAFETENSORS, (Path(model_dir) / "model.safetensors").read_bytes())]
    if onnx:
        found.append(Artifact(ONNX, (Path(model_dir) / "model.onnx").read_bytes()))
    return found


@dataclasses.dataclass
class Stubs:
    """Stubs on one channel, sending `token` with every call."""

    channel: grpc.Channel
    registry: registry_service_pb2_grpc.RegistryServiceStub
    transfer: transfer_service_pb2_grpc.TransferServiceStub
    token: str | None

    @classmethod
    def on(cls, channel: grpc.Channel, token: str | None = None) -> "Stubs":
        return cls(channel=channel, registry=registry_service_pb2_grpc.RegistryServiceStub(channel),
                   transfer=transfer_service_pb2_grpc.TransferServiceStub(channel), token=token)

    @property
    def md(self):
        return bearer(self.token)

    def upload(self, *, model: str, card, artifacts: list[Artifact], chunk_size: int = 64 * 1024) -> model_pb2.ModelVersion:
        requests = upload_requests(parent=f"models/{model}", card=card, artifacts=artifacts, chunk_size=chunk_size)
        return self.registry.CreateModelVersion(requests, metadata=self.md, timeout=60).model_version

    def register(self, model: str, model_dir: Path, *, onnx: bool = True) -> model_pb2.ModelVersion:
        return self.upload(model=model, card=load_card(model_dir), artifacts=model_artifacts(model_dir, onnx=onnx))

    def get(self, name: str) -> model_pb2.ModelVersion:
        return self.registry.GetModelVersion(rs.GetModelVersionRequest(name=name), metadata=self.md,
                                             timeout=10).model_version

    def read(self, name: str, fmt: int, *, offset: int = 0, limit: int = 0) -> "ReadResult":
        responses = list(self.transfer.ReadArtifact(
            ts.ReadArtifactRequest(name=name, format=fmt, read_offset=offset, read_limit=limit),
            metadata=self.md, timeout=30))
        return ReadResult(first=responses[0], responses=responses, data=b"".join(r.data for r in responses))


@dataclasses.dataclass
class ReadResult:
    first: ts.ReadArtifactResponse
    responses: list[ts.ReadArtifactResponse]
    data: bytes


def rpc_error(call) -> grpc.RpcError:
    """Runs `call()` and returns the RpcError it must raise."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but was expected to fail")
