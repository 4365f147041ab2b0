"""Helpers for server tests: uploads, reads, token metadata, channels. Real gRPC, no mocks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc

from xfer.models.card import ModelCard
from xfer.server.convert import card_to_proto
from xfer.v1 import model_pb2, registry_service_pb2_grpc, transfer_service_pb2_grpc
from xfer.v1 import registry_service_pb2 as rs
from xfer.v1 import transfer_service_pb2 as ts

SAFETENSORS = model_pb2.ARTIFACT_FORMAT_SAFETENSORS
ONNX = model_pb2.ARTIFACT_FORMAT_ONNX
TORCH = model_pb2.ARTIFACT_FORMAT_TORCH_STATE_DICT


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_card(model_dir: Path) -> ModelCard:
    """The ModelCard in a models.train output folder."""
    return ModelCard.from_dict(json.loads((Path(model_dir) / "card.json").read_text()))


def store_artifact(running, model_dir: Path, model_id: str, blocks: Iterable[bytes], *, size: int) -> str:
    """Puts the bytes of `blocks` straight into storage as the SAFETENSORS artifact of `models/{model_id}/versions/1`.

    No upload and no validation: for tests of streaming, which need large or
    random artifacts. Returns the sha256.
    """
    from xfer.server.domain import ArtifactFormat, ArtifactRecord

    store = running.registry.blobs
    writer = store.writer(max_bytes=size)
    for block in blocks:
        writer.write(block)
    sha = store.commit(writer)
    running.registry.catalog.create_version(
        model_id=model_id,
        card=load_card(model_dir),
        artifacts=[ArtifactRecord(format=ArtifactFormat.SAFETENSORS, size_bytes=size, sha256=sha)],
    )
    return sha


def bearer(token: str | None) -> list[tuple[str, str]] | None:
    return None if token is None else [("authorization", f"Bearer {token}")]


@dataclasses.dataclass
class Artifact:
    """Bytes to upload as one format, with what the header declares (defaults: the truth)."""

    format: int
    data: bytes
    declared_sha256: str | None = None
    declared_size: int | None = None


def upload_requests(
    *, parent: str, card: ModelCard | model_pb2.ModelCard, artifacts: list[Artifact], chunk_size: int = 64 * 1024
) -> Iterator[rs.CreateModelVersionRequest]:
    """The CreateModelVersion stream: header, then each artifact in chunks."""
    card_proto = card if isinstance(card, model_pb2.ModelCard) else card_to_proto(card)
    header = rs.CreateModelVersionHeader(
        parent=parent,
        card=card_proto,
        artifacts=[
            rs.ArtifactDeclaration(
                format=a.format,
                size_bytes=len(a.data) if a.declared_size is None else a.declared_size,
                sha256=a.declared_sha256 or sha256_of(a.data),
            )
            for a in artifacts
        ],
    )
    yield rs.CreateModelVersionRequest(header=header)
    for a in artifacts:
        for start in range(0, len(a.data), chunk_size):
            yield rs.CreateModelVersionRequest(
                chunk=rs.ArtifactChunk(format=a.format, data=a.data[start : start + chunk_size])
            )


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
    def on(cls, channel: grpc.Channel, token: str | None = None) -> Stubs:
        return cls(
            channel=channel,
            registry=registry_service_pb2_grpc.RegistryServiceStub(channel),
            transfer=transfer_service_pb2_grpc.TransferServiceStub(channel),
            token=token,
        )

    @property
    def md(self):
        return bearer(self.token)

    def upload(
        self, *, model: str, card, artifacts: list[Artifact], chunk_size: int = 64 * 1024
    ) -> model_pb2.ModelVersion:
        requests = upload_requests(parent=f"models/{model}", card=card, artifacts=artifacts, chunk_size=chunk_size)
        return self.registry.CreateModelVersion(requests, metadata=self.md, timeout=60).model_version

    def register(self, model: str, model_dir: Path, *, onnx: bool = True) -> model_pb2.ModelVersion:
        return self.upload(model=model, card=load_card(model_dir), artifacts=model_artifacts(model_dir, onnx=onnx))

    def get(self, name: str) -> model_pb2.ModelVersion:
        return self.registry.GetModelVersion(
            rs.GetModelVersionRequest(name=name), metadata=self.md, timeout=10
        ).model_version

    def read(self, name: str, fmt: int, *, offset: int = 0, limit: int = 0) -> ReadResult:
        responses = list(
            self.transfer.ReadArtifact(
                ts.ReadArtifactRequest(name=name, format=fmt, read_offset=offset, read_limit=limit),
                metadata=self.md,
                timeout=30,
            )
        )
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


class AioServer:
    """A bare grpc.aio server on an event loop of its own thread, for testing one servicer through a real channel.

    `setup(server)` adds the services (called on the loop); `interceptors` wrap them.
    """

    def __init__(self, setup, *, interceptors=()) -> None:
        import asyncio
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def start():
            import grpc.aio

            server = grpc.aio.server(interceptors=list(interceptors))
            setup(server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self._server, self.port = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        self.target = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._server.stop(None), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- hostile ONNX graphs built from a real export ----------------------------------------------
def _onnx_with(model_dir: Path, edit) -> bytes:
    """The model's ONNX with `edit(graph)` applied to a copy; returns the serialized bytes."""
    import onnx

    proto = onnx.load(str(Path(model_dir) / "model.onnx"))
    edit(proto.graph)
    return proto.SerializeToString()


def _reroute(graph, name: str) -> str:
    """Renames the graph output `name` at its producer to `<name>_raw`; returns the new internal name."""
    raw = f"{name}_raw"
    for node in graph.node:
        node.output[:] = [raw if o == name else o for o in node.output]
        node.input[:] = [raw if i == name else i for i in node.input]
    return raw


def onnx_nan_features(model_dir: Path) -> bytes:
    """Logits exact, `features` + NaN: max(diff, nan) used to hide it."""
    import onnx

    def edit(graph):
        raw = _reroute(graph, "features")
        graph.initializer.append(onnx.helper.make_tensor("nan", onnx.TensorProto.FLOAT, [], [float("nan")]))
        graph.node.append(onnx.helper.make_node("Add", [raw, "nan"], ["features"]))
        # logits are computed from the raw features, so they still match.

    return _onnx_with(model_dir, edit)


def onnx_only_at_batch_4(model_dir: Path, *, control_flow: bool) -> bytes:
    """Correct logits at batch size 4 (the old probe), NaN at any other batch size.

    With `control_flow`, an `If` on the batch size (refused as control flow);
    without, the same thing with `Where` (caught by probing several batch sizes).
    """
    from onnx import TensorProto, helper

    def edit(graph):
        raw = _reroute(graph, "logits")
        source = graph.input[0].name
        graph.initializer.extend(
            [
                helper.make_tensor("zero_i", TensorProto.INT64, [1], [0]),
                helper.make_tensor("four", TensorProto.INT64, [], [4]),
                helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Shape", [source], ["in_shape"]),
                helper.make_node("Gather", ["in_shape", "zero_i"], ["batch_1"], axis=0),
                helper.make_node("Squeeze", ["batch_1"], ["batch"]),
                helper.make_node("Equal", ["batch", "four"], ["is_four"]),
            ]
        )
        if control_flow:
            then_graph = helper.make_graph(
                [helper.make_node("Identity", [raw], ["then_out"])],
                "then",
                [],
                [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
            )
            else_graph = helper.make_graph(
                [helper.make_node("Mul", [raw, "nan"], ["else_out"])],
                "else",
                [],
                [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
            )
            graph.node.append(
                helper.make_node("If", ["is_four"], ["logits"], then_branch=then_graph, else_branch=else_graph)
            )
        else:
            graph.node.extend(
                [
                    helper.make_node("Mul", [raw, "nan"], ["poisoned"]),
                    helper.make_node("Where", ["is_four", raw, "poisoned"], ["logits"]),
                ]
            )

    return _onnx_with(model_dir, edit)


def onnx_constant_of_shape(model_dir: Path, *, gib: float = 1.0) -> bytes:
    """A few hundred KB of ONNX that asks onnxruntime for `gib` GiB (ConstantOfShape), feeding the logits."""
    from onnx import TensorProto, helper

    count = int(gib * (1 << 30) // 4)

    def edit(graph):
        raw = _reroute(graph, "logits")
        graph.initializer.append(helper.make_tensor("big_shape", TensorProto.INT64, [1], [count]))
        graph.node.extend(
            [
                helper.make_node(
                    "ConstantOfShape",
                    ["big_shape"],
                    ["big"],
                    value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]),
                ),
                helper.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0),
                helper.make_node("Add", [raw, "big_sum"], ["logits"]),
            ]
        )

    return _onnx_with(model_dir, edit)


def onnx_random(model_dir: Path) -> bytes:
    """Logits plus zero times RandomNormalLike noise: a random operator in the graph."""
    from onnx import TensorProto, helper

    def edit(graph):
        raw = _reroute(graph, "logits")
        graph.initializer.append(helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0]))
        graph.node.extend(
            [
                helper.make_node("RandomNormalLike", [raw], ["noise"]),
                helper.make_node("Mul", ["noise", "zero_f"], ["no_noise"]),
                helper.make_node("Add", [raw, "no_noise"], ["logits"]),
            ]
        )

    return _onnx_with(model_dir, edit)
