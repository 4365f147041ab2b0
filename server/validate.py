"""Checks on everything an upload brings: card, safetensors, torch state dicts, ONNX.

Each check raises InvalidArgument naming what is wrong and how to fix it; the
hand-written safetensors parser runs before any library touches the bytes, so
a hostile header is rejected without allocating what it claims.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import struct
from pathlib import Path

from xfer.models.base import XferModel
from xfer.models.card import ModelCard, validate_card
from xfer.models.errors import ModelError
from xfer.models.export import OUTPUT_NAMES, PARITY_ATOL, check_parity
from xfer.models.weights import load_safetensors, model_from_card, tensor_specs
from xfer.server.errors import InvalidArgument

logger = logging.getLogger(__name__)

#: Bytes per element of every dtype the safetensors format defines.
SAFETENSORS_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
#: The format's own reference implementation refuses headers above 100 MB; ours are tiny.
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024
MIN_ONNX_OPSET = 17


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclasses.dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed and checked safetensors header."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_size: int
    data_size: int


def _reject(message: str) -> InvalidArgument:
    return InvalidArgument(f"invalid safetensors artifact: {message}")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _reject("the header repeats a key")
    return dict(pairs)


def parse_safetensors_header(path: str | os.PathLike, *,
                             max_header_bytes: int = MAX_SAFETENSORS_HEADER) -> SafetensorsHeader:
    """Parses and checks a safetensors file's header by hand.

    Checks: 8-byte little-endian header length within bounds and the file; a
    UTF-8 JSON object without duplicate keys; every tensor has a known dtype,
    a shape of non-negative ints and `data_offsets` [begin, end] whose length
    is shape x dtype size; the tensors' byte ranges do not overlap and exactly
    cover the data section.
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _reject(f"the file has {file_size} bytes, fewer than the 8-byte header length")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > max_header_bytes:
            raise _reject(f"the header claims {header_size} bytes, above the limit of {max_header_bytes}")
        if 8 + header_size > file_size:
            raise _reject(f"the header claims {header_size} bytes but the file has only {file_size - 8} after "
                          "the length prefix (truncated file?)")
        raw = f.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise _reject(f"the header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _reject("the header must be a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _reject("__metadata__ must map strings to strings")
    data_size = file_size - 8 - header_size
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(name, entry)
    covered = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != covered:
            if info.begin < covered:
                raise _reject(f"tensor {info.name!r} overlaps the previous tensor (data_offsets begin at "
                              f"{info.begin}, previous ends at {covered})")
            raise _reject(f"{info.begin - covered} unused bytes before tensor {info.name!r}; the tensors must "
                          "cover the data section without gaps")
        covered = info.end
    if covered > data_size:
        raise _reject(f"tensor data_offsets run to byte {covered} but the data section has only {data_size} "
                      "bytes (truncated file or forged offsets)")
    if covered != data_size:
        raise _reject(f"{data_size - covered} trailing bytes after the last tensor; the tensors must cover the "
                      "data section exactly")
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_size=header_size, data_size=data_size)


def _tensor_info(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _reject(f"tensor {name!r} must have exactly the keys dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPE_SIZES:
        raise _reject(f"tensor {name!r} has unknown dtype {str(dtype)[:32]!r}; known: "
                      f"{sorted(SAFETENSORS_DTYPE_SIZES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _reject(f"tensor {name!r} shape must be a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        raise _reject(f"tensor {name!r} data_offsets must be [begin, end] with 0 <= begin <= end")
    expected = math.prod(shape) * SAFETENSORS_DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise _reject(f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes but shape {shape} of {dtype} "
                      f"needs {expected}")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def check_card(card: ModelCard) -> ModelCard:
    """Validates the card and returns it with its architecture config in canonical form.

    Protobuf Structs carry every number as a double; the canonical config has
    the architecture's own types and every default filled in.
    """
    try:
        validate_card(card)
        model = model_from_card(card)
    except ModelError as exc:
        raise InvalidArgument(f"invalid model card: {exc}") from None
    return dataclasses.replace(card, architecture_config=model.config_dict())


def check_tensors_match(header: SafetensorsHeader, card: ModelCard) -> XferModel:
    """Compares tensor names, dtypes and shapes with the card's architecture; returns a fresh module."""
    model = model_from_card(card)
    expected = tensor_specs(model)
    missing = sorted(set(expected) - set(header.tensors))
    extra = sorted(set(header.tensors) - set(expected))
    if missing or extra:
        raise InvalidArgument(f"the weights do not fit architecture {card.architecture!r} with the card's config: "
                              f"missing tensors {missing[:5]}, unexpected tensors {[e[:64] for e in extra[:5]]}; "
                              "export the state dict of the model the card describes")
    for name, (dtype, shape) in expected.items():
        got = header.tensors[name]
        if got.dtype != dtype or got.shape != shape:
            raise InvalidArgument(f"tensor {name!r} is {got.dtype}{list(got.shape)} but architecture "
                                  f"{card.architecture!r} with the card's config needs {dtype}{list(shape)}")
    return model


def load_weights(model: XferModel, path: str | os.PathLike) -> XferModel:
    """Loads checked safetensors into `model` strictly."""
    try:
        return load_safetensors(model, path)
    except ModelError as exc:
        raise InvalidArgument(f"invalid safetensors artifact: {exc}") from None


def convert_torch_state_dict(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Reads a `.pt` state dict with torch.load(weights_only=True) and writes it as safetensors.

    weights_only=True uses torch's restricted unpickler: no arbitrary callables,
    so a pickle that would run code (os.system, open, ...) fails to load
    instead of executing. Plain pickle is never used.
    """
    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for hostile or broken files
        raise InvalidArgument("the TORCH_STATE_DICT artifact could not be read with torch.load(weights_only=True) "
                              f"({_torch_load_reason(exc)}); upload a plain state dict (torch.save(model.state_dict())) or, "
                              "better, safetensors") from None
    if not isinstance(state, dict) or not state:
        raise InvalidArgument("the TORCH_STATE_DICT artifact must be a non-empty flat dict of tensors "
                              "(torch.save(model.state_dict())), got " + type(state).__name__)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidArgument(f"the TORCH_STATE_DICT artifact must map names to tensors; entry {str(key)[:64]!r} "
                                  f"is a {type(value).__name__}")
    # clone(): tensors that share storage (tied weights, views) cannot be saved as safetensors.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(dst))
    with open(dst, "rb") as f:
        os.fsync(f.fileno())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# torch's boilerplate around the real reason, including advice to retry with
# weights_only=False, which must never reach an uploader as a suggestion.
_TORCH_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue",
                      "In PyTorch", "WeightsUnpickler error")


def _torch_load_reason(exc: Exception) -> str:
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines()]
    for line in lines:
        # The sentence naming the refused global or opcode, e.g. "Unsupported global: GLOBAL io.open ...".
        line = line.removeprefix("WeightsUnpickler error:").strip()
        if line.startswith(("Unsupported", "Trying to load")):
            return line.split(" Please")[0][:300]
    useful = [line for line in lines if line and not line.startswith(_TORCH_BOILERPLATE)
              and "weights_only" not in line]
    return (useful[0] if useful else type(exc).__name__)[:300]


@dataclasses.dataclass(frozen=True)
class OnnxReport:
    """What the ONNX checks found."""

    opset: int
    max_abs_diff: float
    atol: float


def _tensors_in_graph(graph) -> list:
    found = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        found += [sparse.values, sparse.indices]
    for node in graph.node:
        found += _tensors_in_attributes(node.attribute)
    return found


def _tensors_in_attributes(attributes) -> list:
    found = []
    for attr in attributes:
        if attr.HasField("t"):
            found.append(attr.t)
        found += list(attr.tensors)
        if attr.HasField("sparse_tensor"):
            found += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
        for sparse in attr.sparse_tensors:
            found += [sparse.values, sparse.indices]
        if attr.HasField("g"):
            found += _tensors_in_graph(attr.g)
        for graph in attr.graphs:
            found += _tensors_in_graph(graph)
    return found


def external_data_tensors(model) -> list[str]:
    """Names of tensors anywhere in the model (subgraphs, functions included) that point at external files."""
    import onnx

    tensors = _tensors_in_graph(model.graph)
    for function in model.functions:
        for node in function.node:
            tensors += _tensors_in_attributes(node.attribute)
    return [t.name or "<unnamed>" for t in tensors
            if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0]


def check_onnx(path: str | os.PathLike, *, model: XferModel, atol: float = PARITY_ATOL) -> OnnxReport:
    """Checks an ONNX artifact: self-contained, valid, opset >= 17, outputs logits/features, runs in
    onnxruntime, and agrees with `model` (the uploaded weights) on a probe input within `atol`."""
    import onnx

    try:
        # load_external_data=False: never follow a path the uploader chose.
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidArgument(f"invalid ONNX artifact: it does not parse as an ONNX model ({str(exc)[:200]})") from None
    external = external_data_tensors(proto)
    if external:
        raise InvalidArgument(f"invalid ONNX artifact: tensor(s) {external[:5]} reference external data; upload a "
                              "self-contained model (onnx.save_model(..., save_as_external_data=False))")
    opsets = [imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")]
    if not opsets or max(opsets) < MIN_ONNX_OPSET:
        raise InvalidArgument(f"invalid ONNX artifact: opset {max(opsets) if opsets else 'none'} is below "
                              f"{MIN_ONNX_OPSET}; export with opset_version={MIN_ONNX_OPSET} or later")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise InvalidArgument(f"invalid ONNX artifact: onnx.checker rejected it ({str(exc)[:300]})") from None
    outputs = [o.name for o in proto.graph.output]
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        raise InvalidArgument(f"invalid ONNX artifact: outputs {outputs[:8]} lack {missing}; it must output "
                              f"{list(OUTPUT_NAMES)}")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InvalidArgument(f"invalid ONNX artifact: it must take exactly one input, takes {inputs[:8]}")
    try:
        report = check_parity(model, proto.SerializeToString(), atol=atol)
    except ModelError as exc:
        raise InvalidArgument(f"invalid ONNX artifact: {exc}") from None
    except Exception as exc:  # onnxruntime raises its own types for graphs it cannot run
        raise InvalidArgument(f"invalid ONNX artifact: onnxruntime could not run it on a probe input of shape "
                              f"[batch, {', '.join(map(str, model.input_shape()))}] ({str(exc)[:300]})") from None
    diff = max(report.max_abs_diff_logits, report.max_abs_diff_features)
    if not report.ok:
        raise InvalidArgument(f"invalid ONNX artifact: its outputs differ from the uploaded weights' by up to {diff:.3g} "
                              f"on a probe input (tolerance {atol:g} absolute); export the ONNX from the same weights")
    return OnnxReport(opset=max(opsets), max_abs_diff=diff, atol=atol)


def remove_quietly(path: Path | None) -> None:
    """Deletes a temp file if it exists."""
    if path is not None:
        Path(path).unlink(missing_ok=True)
