"""Checks on everything an upload brings: card text, safetensors, torch state dicts, ONNX.

Each check raises InvalidArgument (reason INVALID_CARD or INVALID_ARTIFACT)
naming what is wrong and how to fix it. The hand-written safetensors parser
runs before any library touches the bytes, so a hostile header is rejected
without allocating what it claims. Everything below `check_card_text` runs
inside the validation sandbox (server/sandbox.py: a separate process with
memory, CPU-time and wall-time limits), never in the serving process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import re
import struct
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xfer.models.card import ModelCard
from xfer.models.errors import ModelError
from xfer.server.errors import InvalidArgument, Reason

if TYPE_CHECKING:
    from xfer.models.base import XferModel

logger = logging.getLogger(__name__)

#: Bytes per element of every dtype the safetensors format defines.
SAFETENSORS_DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
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
    return InvalidArgument(f"invalid safetensors artifact: {message}", reason=Reason.INVALID_ARTIFACT)


def _invalid_artifact(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_ARTIFACT)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _reject("the header repeats a key")
    return dict(pairs)


def parse_safetensors_header(
    path: str | os.PathLike, *, max_header_bytes: int = MAX_SAFETENSORS_HEADER
) -> SafetensorsHeader:
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
            raise _reject(
                f"the header claims {header_size} bytes but the file has only {file_size - 8} after "
                "the length prefix (truncated file?)"
            )
        raw = f.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise _reject(
            "the header nests JSON too deeply; a safetensors header is one flat object of tensor entries"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise _reject(f"the header is not UTF-8 JSON ({str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise _reject("the header must be a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _reject("__metadata__ must map strings to strings")
    data_size = file_size - 8 - header_size
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(name, entry)
    covered = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != covered:
            if info.begin < covered:
                raise _reject(
                    f"tensor {info.name!r} overlaps the previous tensor (data_offsets begin at "
                    f"{info.begin}, previous ends at {covered})"
                )
            raise _reject(
                f"{info.begin - covered} unused bytes before tensor {info.name!r}; the tensors must "
                "cover the data section without gaps"
            )
        covered = info.end
    if covered > data_size:
        raise _reject(
            f"tensor data_offsets run to byte {covered} but the data section has only {data_size} "
            "bytes (truncated file or forged offsets)"
        )
    if covered != data_size:
        raise _reject(
            f"{data_size - covered} trailing bytes after the last tensor; the tensors must cover the "
            "data section exactly"
        )
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_size=header_size, data_size=data_size)


def _tensor_info(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _reject(f"tensor {name!r} must have exactly the keys dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPE_SIZES:
        raise _reject(
            f"tensor {name!r} has unknown dtype {str(dtype)[:32]!r}; known: {sorted(SAFETENSORS_DTYPE_SIZES)}"
        )
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _reject(f"tensor {name!r} shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _reject(f"tensor {name!r} data_offsets must be [begin, end] with 0 <= begin <= end")
    expected = math.prod(shape) * SAFETENSORS_DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise _reject(
            f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes but shape {shape} of {dtype} needs {expected}"
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


# -- memory exhaustion -------------------------------------------------------------------------
#: How libraries report an allocation that failed under the sandbox's memory limit.
_MEMORY_MARKERS = (
    "Failed to allocate memory",
    "bad_alloc",
    "Could not allocate",
    "Failed to serialize proto",
    "out of memory",
    "Cannot allocate memory",
)


def is_memory_error(exc: BaseException | None) -> bool:
    """Whether `exc` (or anything in its cause chain) is an allocation failure, whatever library raised it.

    Under the sandbox's memory limit, onnx says "Failed to serialize proto",
    torch "Could not allocate bytes object", onnxruntime "Failed to allocate
    memory": a limit reached, not a malformed artifact.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MemoryError) or any(marker in str(exc) for marker in _MEMORY_MARKERS):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _reraise_memory(exc: BaseException) -> None:
    if is_memory_error(exc):
        raise MemoryError(str(exc)[:300]) from None


# -- card text (plain data; runs in the serving process) ------------------------------
#: Card fields that may span lines (newline and tab allowed); every other text field is one line.
MULTILINE_CARD_FIELDS = ("description", "source_task", "preprocessing")
# Bidirectional overrides and isolates reorder what a terminal shows (a "Trojan Source" trick).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def first_control_character(text: str, *, multiline: bool) -> str | None:
    """The first control character (or bidi override) in `text`, or None; `multiline` allows newline and tab."""
    for char in text:
        if multiline and char in "\n\t":
            continue
        if unicodedata.category(char) in ("Cc", "Cs") or char in _BIDI_CONTROLS:
            return char
    return None


def check_card_text(card: ModelCard) -> None:
    """Refuses control characters (ESC, BEL, NUL, ...) and bidi overrides in every text field of the card.

    A card is shown by `xfer show` and other people's tools; text that moves
    the cursor, rings the bell or reorders characters is never legitimate
    there, and PostgreSQL cannot store NUL at all.
    """
    fields: list[tuple[str, str, bool]] = [
        ("architecture", card.architecture, False),
        ("head", card.head, False),
        ("license", card.license, False),
        ("input_dtype", card.input_dtype, False),
    ]
    fields += [
        (name, getattr(card, name), name in MULTILINE_CARD_FIELDS)
        for name in ("description", "source_task", "preprocessing")
    ]
    fields += [(f"blocks[{i}]", b, False) for i, b in enumerate(card.blocks)]
    fields += [(f"label_names[{i}]", label, False) for i, label in enumerate(card.label_names)]
    for key, value in card.framework_versions.items():
        fields += [
            (f"framework_versions key {key[:32]!r}", key, False),
            (f"framework_versions[{key[:32]}]", value, False),
        ]
    fields += [(f"architecture_config key {key[:32]!r}", key, False) for key in card.architecture_config]
    fields += [
        (f"architecture_config[{key[:32]}]", value, False)
        for key, value in card.architecture_config.items()
        if isinstance(value, str)
    ]
    for name, value, multiline in fields:
        if not isinstance(value, str):
            continue
        bad = first_control_character(value, multiline=multiline)
        if bad is not None:
            allowed = " (newline and tab are allowed here)" if multiline else ""
            raise InvalidArgument(
                f"invalid model card: {name} contains the control character U+{ord(bad):04X}; "
                f"use printable text only{allowed}",
                reason=Reason.INVALID_CARD,
                field=f"header.card.{name.split(' ')[0].split('[')[0]}",
            )


# -- weights (sandbox) -----------------------------------------------------------------------
def check_tensors_match(header: SafetensorsHeader, card: ModelCard) -> XferModel:
    """Compares tensor names, dtypes and shapes with the card's architecture; returns a fresh module."""
    from xfer.models.weights import model_from_card, tensor_specs

    model = model_from_card(card)
    expected = tensor_specs(model)
    missing = sorted(set(expected) - set(header.tensors))
    extra = sorted(set(header.tensors) - set(expected))
    if missing or extra:
        raise _invalid_artifact(
            f"the weights do not fit architecture {card.architecture!r} with the card's config: "
            f"missing tensors {missing[:5]}, unexpected tensors {[e[:64] for e in extra[:5]]}; "
            "export the state dict of the model the card describes"
        )
    for name, (dtype, shape) in expected.items():
        got = header.tensors[name]
        if got.dtype != dtype or got.shape != shape:
            raise _invalid_artifact(
                f"tensor {name!r} is {got.dtype}{list(got.shape)} but architecture "
                f"{card.architecture!r} with the card's config needs {dtype}{list(shape)}"
            )
    return model


def load_weights(model: XferModel, path: str | os.PathLike) -> XferModel:
    """Loads checked safetensors into `model` strictly; refuses NaN or infinite weights."""
    import torch

    from xfer.models.weights import load_safetensors

    try:
        load_safetensors(model, path)
    except ModelError as exc:
        raise _invalid_artifact(f"invalid safetensors artifact: {exc}") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _invalid_artifact(
                f"invalid safetensors artifact: tensor {name!r} contains NaN or infinite "
                "values; a source model's weights must be finite"
            )
    return model


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
        _reraise_memory(exc)
        raise _invalid_artifact(
            "the TORCH_STATE_DICT artifact could not be read with torch.load(weights_only=True) "
            f"({_torch_load_reason(exc)}); upload a plain state dict "
            "(torch.save(model.state_dict())) or, better, safetensors"
        ) from None
    if not isinstance(state, dict) or not state:
        raise _invalid_artifact(
            "the TORCH_STATE_DICT artifact must be a non-empty flat dict of tensors "
            "(torch.save(model.state_dict())), got " + type(state).__name__
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _invalid_artifact(
                f"the TORCH_STATE_DICT artifact must map names to tensors; entry "
                f"{str(key)[:64]!r} is a {type(value).__name__}"
            )
    # clone(): tensors that share storage (tied weights, views) cannot be saved as safetensors.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(dst))
    with open(dst, "rb") as f:
        os.fsync(f.fileno())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# torch's boilerplate around the real reason, including advice to retry with
# weights_only=False, which must never reach an uploader as a suggestion.
_TORCH_BOILERPLATE = (
    "Weights only load failed",
    "Check the documentation",
    "Please file an issue",
    "In PyTorch",
    "WeightsUnpickler error",
)


def _torch_load_reason(exc: Exception) -> str:
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines()]
    for line in lines:
        # The sentence naming the refused global or opcode, e.g. "Unsupported global: GLOBAL io.open ...".
        line = line.removeprefix("WeightsUnpickler error:").strip()
        if line.startswith(("Unsupported", "Trying to load")):
            return line.split(" Please")[0][:300]
    useful = [line for line in lines if line and not line.startswith(_TORCH_BOILERPLATE) and "weights_only" not in line]
    return (useful[0] if useful else type(exc).__name__)[:300]


# -- ONNX (sandbox) --------------------------------------------------------------------------
MIN_ONNX_OPSET = 17
#: Absolute tolerance between onnxruntime and torch (float32), as models.export uses.
PARITY_ATOL = 1e-4
#: Batch sizes every ONNX artifact is probed at (plus one random size per upload, see `probe_plan`):
#: a graph that behaves only at the batch size a fixed probe uses must not pass.
PROBE_BATCHES = (1, 2, 3, 4, 5, 8, 16)
#: Operators a faithful export of a known architecture never contains: data-dependent control flow
#: (a graph can branch on the batch size or on input values) and randomness (outputs that change
#: from run to run cannot be checked against the weights).
FORBIDDEN_OPS = frozenset(
    {
        "If",
        "Loop",
        "Scan",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe input: `batch` examples drawn with `seed` from `distribution`."""

    batch: int
    seed: int
    distribution: str  # "normal" or "uniform"


def probe_plan(rng: random.Random | None = None) -> tuple[Probe, ...]:
    """The probes of one validation: every size in PROBE_BATCHES and one random size, with fresh seeds.

    The seeds (and the extra size) are drawn per upload, so an uploader cannot
    tune a graph to the probe inputs it will be tested with.
    """
    rng = rng or random.Random(int.from_bytes(os.urandom(8), "little"))
    batches = (*PROBE_BATCHES, rng.randint(6, 64))
    probes = [Probe(batch=b, seed=rng.getrandbits(31), distribution="normal") for b in batches]
    probes.append(Probe(batch=4, seed=rng.getrandbits(31), distribution="uniform"))
    return tuple(probes)


@dataclasses.dataclass(frozen=True)
class OnnxReport:
    """What the ONNX checks found."""

    opset: int
    max_abs_diff: float
    atol: float
    probes: int


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
    return [
        t.name or "<unnamed>"
        for t in tensors
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0
    ]


def _all_nodes(model) -> list:
    """Every node of the model: main graph, subgraphs (If/Loop bodies) and model-local functions."""
    found: list = []
    pending = [model.graph]
    for function in model.functions:
        found += list(function.node)
    while pending:
        graph = pending.pop()
        for node in graph.node:
            found.append(node)
            for attr in node.attribute:
                if attr.HasField("g"):
                    pending.append(attr.g)
                pending += list(attr.graphs)
    return found


def forbidden_nodes(model) -> list[str]:
    """Descriptions of nodes a checked artifact may not contain (see FORBIDDEN_OPS, unknown domains)."""
    local = {(f.domain, f.name) for f in model.functions}
    bad = []
    for node in _all_nodes(model):
        if node.domain in _STANDARD_DOMAINS and node.op_type in FORBIDDEN_OPS:
            bad.append(node.op_type)
        elif node.domain not in _STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            bad.append(f"{node.domain}.{node.op_type}")
    return sorted(set(bad))


def _session(serialized: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    return ort.InferenceSession(serialized, sess_options=options, providers=["CPUExecutionProvider"])


def _probe_input(probe: Probe, shape: Sequence[int]):
    import torch

    generator = torch.Generator().manual_seed(probe.seed)
    size = (probe.batch, *shape)
    if probe.distribution == "uniform":
        return torch.rand(size, generator=generator)
    return torch.randn(size, generator=generator)


def _worst_difference(got: Any, want: Any) -> float:
    """max |got - want|, NaN-aware: any non-finite value in either makes it infinite."""
    import numpy as np

    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return math.inf
    return float(np.max(np.abs(got - want))) if got.size else 0.0


def probe_parity(model: XferModel, serialized: bytes, *, probes: Sequence[Probe], atol: float = PARITY_ATOL) -> float:
    """Runs every probe through onnxruntime and torch; returns the worst difference.

    Raises InvalidArgument when a graph cannot run at some batch size, when an
    output has the wrong shape, is not finite (NaN and infinity count as
    failures, never as "no difference"), or differs from the weights' by more
    than `atol`.
    """
    import numpy as np
    import torch

    session = _session(serialized)
    input_name = session.get_inputs()[0].name
    worst = 0.0
    model.eval()
    for probe in probes:
        x = _probe_input(probe, model.input_shape())
        with torch.no_grad():
            features = model.forward_features(x)
            logits = model.head_layer(features)
        want = {"logits": logits.numpy(), "features": features.numpy()}
        shape = f"[{probe.batch}, {', '.join(map(str, model.input_shape()))}]"
        for name, value in want.items():
            if not np.isfinite(value).all():
                raise _invalid_artifact(
                    f"invalid weights: the uploaded weights give non-finite {name} on a probe "
                    f"input of shape {shape}; upload weights that compute finite outputs"
                )
        try:
            outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {input_name: x.numpy()})))
        except Exception as exc:  # onnxruntime raises its own types for graphs it cannot run
            _reraise_memory(exc)
            text = str(exc)
            raise _invalid_artifact(
                f"invalid ONNX artifact: onnxruntime could not run it on a probe input of shape "
                f"{shape} ({text[:300]}); export with a dynamic batch dimension"
            ) from None
        for name, value in want.items():
            got = np.asarray(outputs[name])
            if got.shape != value.shape:
                raise _invalid_artifact(
                    f"invalid ONNX artifact: output {name!r} has shape {list(got.shape)} on a "
                    f"probe input of shape {shape}; the weights give {list(value.shape)}"
                )
            if not np.isfinite(got).all():
                raise _invalid_artifact(
                    f"invalid ONNX artifact: output {name!r} is not finite (NaN or infinity) "
                    f"on a probe input of shape {shape}; export the ONNX from the uploaded weights"
                )
            diff = _worst_difference(got, value)
            if not diff <= atol:
                raise _invalid_artifact(
                    f"invalid ONNX artifact: its {name} differ from the uploaded weights' by up to "
                    f"{diff:.3g} on a probe input of shape {shape} (tolerance {atol:g} absolute); "
                    "export the ONNX from the same weights"
                )
            worst = max(worst, diff)
    return worst


def check_onnx(
    path: str | os.PathLike, *, model: XferModel, probes: Sequence[Probe] | None = None, atol: float = PARITY_ATOL
) -> OnnxReport:
    """Checks an ONNX artifact: self-contained, valid, opset >= 17, no control flow or randomness, one input,
    outputs `logits` and `features`, and agrees with `model` (the uploaded weights) on every probe
    (`probe_plan()` by default) within `atol`, with finite outputs everywhere."""
    import onnx

    probes = probe_plan() if probes is None else probes
    try:
        # load_external_data=False: never follow a path the uploader chose.
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        _reraise_memory(exc)
        raise _invalid_artifact(
            f"invalid ONNX artifact: it does not parse as an ONNX model ({str(exc)[:200]})"
        ) from None
    external = external_data_tensors(proto)
    if external:
        raise _invalid_artifact(
            f"invalid ONNX artifact: tensor(s) {external[:5]} reference external data; upload a "
            "self-contained model (onnx.save_model(..., save_as_external_data=False))"
        )
    opsets = [imp.version for imp in proto.opset_import if imp.domain in _STANDARD_DOMAINS]
    if not opsets or max(opsets) < MIN_ONNX_OPSET:
        raise _invalid_artifact(
            f"invalid ONNX artifact: opset {max(opsets) if opsets else 'none'} is below "
            f"{MIN_ONNX_OPSET}; export with opset_version={MIN_ONNX_OPSET} or later"
        )
    forbidden = forbidden_nodes(proto)
    if forbidden:
        raise _invalid_artifact(
            f"invalid ONNX artifact: it contains {forbidden[:8]}; a source model's graph must be "
            "plain dataflow (no If/Loop/Scan control flow, no random operators, only standard "
            "ONNX domains) so that what is checked is what runs"
        )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        _reraise_memory(exc)
        raise _invalid_artifact(f"invalid ONNX artifact: onnx.checker rejected it ({str(exc)[:300]})") from None
    outputs = [o.name for o in proto.graph.output]
    missing = [name for name in ("logits", "features") if name not in outputs]
    if missing:
        raise _invalid_artifact(
            f"invalid ONNX artifact: outputs {outputs[:8]} lack {missing}; it must output ['logits', 'features']"
        )
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise _invalid_artifact(f"invalid ONNX artifact: it must take exactly one input, takes {inputs[:8]}")
    try:
        serialized = proto.SerializeToString()
    except Exception as exc:
        _reraise_memory(exc)
        raise
    del proto
    try:
        worst = probe_parity(model, serialized, probes=probes, atol=atol)
    except InvalidArgument:
        raise
    except Exception as exc:  # onnxruntime refusing the graph when the session is created
        _reraise_memory(exc)
        raise _invalid_artifact(f"invalid ONNX artifact: onnxruntime cannot load it ({str(exc)[:300]})") from None
    return OnnxReport(opset=max(opsets), max_abs_diff=worst, atol=atol, probes=len(probes))


def remove_quietly(path: Path | None) -> None:
    """Deletes a temp file if it exists."""
    if path is not None:
        Path(path).unlink(missing_ok=True)
