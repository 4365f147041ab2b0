"""Graph surgery: replace the subgraph that computes `logits` with a fitted head, keep `features`.

`replace_head` works on any ONNX model with `features` (batch, D) and
`logits` outputs, not only those xfer exports: it removes the nodes that
only `logits` needs (stopping at `logits`, so other outputs computed from
it are kept and then read the new logits), drops initializers and
value_info nobody uses any more, appends the head as plain ONNX operators
(ReduceL2/Max/Div for a normalisation, Sub for a centring, Gemm for the
linear map) in the features' float type, restores topological order and
runs `onnx.checker` with full shape inference. `write_model` saves one
self-contained file atomically; `verify_head` runs the written file with
onnxruntime and requires its logits to equal the numpy head on its own
features (and its features to equal the source model's), NaN failing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xfer.client.onnxhead.errors import HeadVerificationError, OnnxModelError
from xfer.client.onnxhead.features import FEATURES, LOGITS, SessionOptions, open_session
from xfer.client.onnxhead.head import Center, L2Normalize, LinearHead
from xfer.models.files import atomic_path

HEAD_PREFIX = "xfer_head"
#: Relative tolerance of onnxruntime (float32) against the numpy head (float64).
LOGITS_RTOL = 1e-4
FEATURES_RTOL = 1e-5
_MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one serialised message


@dataclasses.dataclass(frozen=True)
class SurgeryReport:
    """What `replace_head` changed."""

    removed_nodes: int
    removed_initializers: int
    added_nodes: int


def _subgraph_inputs(graph: Any) -> set[str]:
    """Names a subgraph reads from the enclosing scope."""
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used |= {name for name in _node_inputs(node) if name not in produced}
        produced |= set(node.output)
    return used


def _node_inputs(node: Any) -> set[str]:
    """Every name a node reads, including outer-scope names read by its subgraphs (If, Loop, Scan)."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        if attr.HasField("g"):
            names |= _subgraph_inputs(attr.g)
        for sub in attr.graphs:
            names |= _subgraph_inputs(sub)
    return names


def _ancestors(nodes: list[Any], targets: Iterable[str], *, stop: set[str]) -> set[int]:
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    seen: set[int] = set()
    pending = [t for t in targets if t not in stop]
    while pending:
        index = producer.get(pending.pop())
        if index is None or index in seen:
            continue
        seen.add(index)
        pending.extend(name for name in _node_inputs(nodes[index]) if name not in stop)
    return seen


def _descendants(nodes: list[Any], name: str) -> set[str]:
    """Every tensor computed, directly or not, from `name`."""
    reached, changed = {name}, True
    while changed:
        changed = False
        for node in nodes:
            if _node_inputs(node) & reached and not set(node.output) <= reached:
                reached |= {o for o in node.output if o}
                changed = True
    return reached - {name}


def _toposort(nodes: list[Any], available: set[str]) -> list[Any]:
    ready = set(available)
    remaining = list(nodes)
    ordered: list[Any] = []
    while remaining:
        progress = [n for n in remaining if _node_inputs(n) <= ready]
        if not progress:
            missing = sorted(set().union(*(_node_inputs(n) for n in remaining)) - ready)[:5]
            raise OnnxModelError(f"the graph is not a DAG over its inputs after surgery (unresolved: {missing})")
        for node in progress:
            ordered.append(node)
            ready |= set(node.output)
        ids = {id(n) for n in progress}
        remaining = [n for n in remaining if id(n) not in ids]
    return ordered


def _opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise OnnxModelError("the model imports no default-domain (ai.onnx) opset")


class _Names:
    def __init__(self, graph: Any) -> None:
        self.taken = {i.name for i in graph.input} | {o.name for o in graph.output}
        self.taken |= {t.name for t in graph.initializer} | {v.name for v in graph.value_info}
        for node in graph.node:
            self.taken |= set(node.output) | {node.name}

    def fresh(self, base: str) -> str:
        name, i = f"{HEAD_PREFIX}/{base}", 1
        while name in self.taken:
            name, i = f"{HEAD_PREFIX}/{base}_{i}", i + 1
        self.taken.add(name)
        return name


def _head_nodes(head: LinearHead, *, names: _Names, dtype: np.dtype, opset: int) -> tuple[list[Any], list[Any]]:
    from onnx import helper, numpy_helper

    nodes, inits = [], []

    def const(base: str, value: np.ndarray) -> str:
        name = names.fresh(base)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    current = FEATURES
    for i, step in enumerate(head.steps):
        if isinstance(step, L2Normalize):
            norm, safe, out = names.fresh(f"norm{i}"), names.fresh(f"safe_norm{i}"), names.fresh(f"normalized{i}")
            if opset >= 18:  # ReduceL2 takes axes as an input from opset 18 on, an attribute before
                axes = const(f"axes{i}", np.asarray([1], dtype=np.int64))
                nodes.append(
                    helper.make_node("ReduceL2", [current, axes], [norm], name=names.fresh(f"ReduceL2_{i}"), keepdims=1)
                )
            else:
                nodes.append(
                    helper.make_node(
                        "ReduceL2", [current], [norm], name=names.fresh(f"ReduceL2_{i}"), axes=[1], keepdims=1
                    )
                )
            eps = const(f"eps{i}", np.asarray(step.eps, dtype=dtype))
            nodes.append(helper.make_node("Max", [norm, eps], [safe], name=names.fresh(f"Max_{i}")))
            nodes.append(helper.make_node("Div", [current, safe], [out], name=names.fresh(f"Div_{i}")))
        elif isinstance(step, Center):
            out = names.fresh(f"centered{i}")
            mean = const(f"mean{i}", step.mean.astype(dtype))
            nodes.append(helper.make_node("Sub", [current, mean], [out], name=names.fresh(f"Sub_{i}")))
        else:  # pragma: no cover - the Step union is closed
            raise TypeError(f"unknown head step {step!r}")
        current = out
    weight = const("weight", head.weight.astype(dtype))
    bias = const("bias", head.bias.astype(dtype))
    nodes.append(helper.make_node("Gemm", [current, weight, bias], [LOGITS], name=names.fresh("Gemm"), transB=1))
    return nodes, inits


def replace_head(
    model: Any, head: LinearHead, *, metadata: Mapping[str, str] | None = None
) -> tuple[Any, SurgeryReport]:
    """A copy of `model` (an onnx.ModelProto) whose `logits` come from `head`; checked by onnx.checker."""
    import onnx
    from onnx import TensorProto, helper

    if not head.is_finite():
        raise HeadVerificationError("the fitted head has NaN or infinite parameters; nothing was written")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    outputs = {o.name: o for o in graph.output}
    missing = [name for name in (FEATURES, LOGITS) if name not in outputs]
    if missing:
        raise OnnxModelError(f"the model has no output(s) {missing}; it must output 'features' and 'logits'")
    feature_type = outputs[FEATURES].type.tensor_type
    dtypes = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
    if feature_type.elem_type not in dtypes:
        raise OnnxModelError(
            f"'features' must be float or double, got {TensorProto.DataType.Name(feature_type.elem_type)}"
        )
    dims = feature_type.shape.dim
    if len(dims) != 2:
        raise OnnxModelError(f"'features' must be (batch, D), got rank {len(dims)}")
    if dims[1].HasField("dim_value") and dims[1].dim_value != head.in_features:
        raise OnnxModelError(
            f"the head reads {head.in_features} features but the model's 'features' has {dims[1].dim_value}"
        )
    nodes = list(graph.node)
    if not any(LOGITS in node.output for node in nodes):
        raise OnnxModelError("no node computes 'logits' (it is an input or initializer); nothing to replace")
    keep = _ancestors(nodes, [o.name for o in graph.output if o.name != LOGITS], stop={LOGITS})
    if any(LOGITS in nodes[i].output for i in keep):
        raise OnnxModelError(
            "the node that computes 'logits' also computes tensors the model's other outputs "
            "need, so it cannot be replaced; export 'logits' from its own node"
        )
    drop = _ancestors(nodes, [LOGITS], stop=set()) - keep
    names = _Names(graph)
    head_nodes, head_inits = _head_nodes(
        head, names=names, dtype=np.dtype(dtypes[feature_type.elem_type]), opset=_opset(out)
    )
    remaining = [node for i, node in enumerate(nodes) if i not in drop] + head_nodes
    used = set().union(*(_node_inputs(n) for n in remaining)) | {o.name for o in graph.output}
    initializers = [t for t in graph.initializer if t.name in used]
    removed_inits = len(graph.initializer) - len(initializers)
    inputs = [i for i in graph.input if i.name in used or i.name not in {t.name for t in graph.initializer}]
    produced = set().union(*(set(n.output) for n in remaining))
    # Shapes recorded downstream of the old logits (a softmax output, say) may hold the old class count.
    stale = _descendants(remaining, LOGITS)
    value_info = [v for v in graph.value_info if v.name in produced and v.name not in stale]
    available = {i.name for i in inputs} | {t.name for t in initializers} | {t.name for t in head_inits}
    ordered = _toposort(remaining, available)

    del graph.node[:]
    graph.node.extend(ordered)
    del graph.initializer[:]
    graph.initializer.extend(initializers + head_inits)
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    batch = dims[0].dim_param if dims[0].HasField("dim_param") else (dims[0].dim_value or None)
    logits_info = helper.make_tensor_value_info(LOGITS, feature_type.elem_type, [batch, head.num_classes])
    for i, o in enumerate(graph.output):
        if o.name == LOGITS:
            graph.output[i].CopyFrom(logits_info)
        elif o.name in stale and o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")
    props = {p.key: p.value for p in out.metadata_props}
    props.update(metadata or {})
    del out.metadata_props[:]
    for key, value in sorted(props.items()):
        out.metadata_props.add(key=key, value=value)
    if stale:
        out = onnx.shape_inference.infer_shapes(out)  # fills the cleared shapes in from the new head
    try:
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxModelError(f"the model with the new head fails onnx.checker: {exc}") from None
    return out, SurgeryReport(len(drop), removed_inits, len(head_nodes))


def load_model(path: str | os.PathLike) -> Any:
    """Loads an ONNX file (and any external data beside it) into memory."""
    import onnx

    try:
        return onnx.load(os.fspath(path), load_external_data=True)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for unreadable files
        raise OnnxModelError(f"{path}: not a readable ONNX model ({exc})") from None


def write_model(model: Any, path: str | os.PathLike, *, check: Callable[[Path], Any] | None = None) -> Any:
    """Writes one self-contained ONNX file atomically; `check(temp_path)` runs before it is moved into place.

    If `check` raises, the file at `path` (a previous result, say) is left as it was.
    Returns what `check` returned.
    """
    import onnx

    size = model.ByteSize()
    if size > _MAX_PROTO_BYTES:
        raise OnnxModelError(f"the model is {size} bytes, over protobuf's 2 GiB limit for one file")
    with atomic_path(path, mode=0o644) as tmp:
        onnx.save_model(model, os.fspath(tmp))
        return check(tmp) if check is not None else None


@dataclasses.dataclass(frozen=True)
class VerificationReport:
    """onnxruntime vs numpy on the probe examples (NaN in either makes `ok` false)."""

    examples: int
    max_abs_diff_logits: float
    max_abs_diff_features: float
    logits_tolerance: float
    features_tolerance: float
    finite: bool

    @property
    def ok(self) -> bool:
        """Finite outputs within both tolerances."""
        return (
            self.finite
            and self.max_abs_diff_logits <= self.logits_tolerance
            and self.max_abs_diff_features <= self.features_tolerance
        )


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def verify_head(
    model: str | os.PathLike | bytes,
    head: LinearHead,
    *,
    x: np.ndarray,
    features: np.ndarray,
    options: SessionOptions = SessionOptions(),
) -> VerificationReport:
    """Runs the new model on examples `x` whose source-model features are `features`; raises unless it agrees."""
    session = open_session(model, options=options)
    name = session.get_inputs()[0].name
    got_logits, got_features = session.run([LOGITS, FEATURES], {name: np.ascontiguousarray(x)})
    want_logits = head.logits(got_features)
    finite = bool(
        np.all(np.isfinite(got_logits)) and np.all(np.isfinite(got_features)) and np.all(np.isfinite(want_logits))
    )
    scale = max(1.0, float(np.max(np.abs(want_logits)))) if finite and want_logits.size else 1.0
    feature_scale = max(1.0, float(np.max(np.abs(features)))) if features.size else 1.0
    report = VerificationReport(
        examples=int(len(x)),
        max_abs_diff_logits=_max_abs_diff(got_logits, want_logits) if finite else float("nan"),
        max_abs_diff_features=_max_abs_diff(got_features, features) if finite else float("nan"),
        logits_tolerance=LOGITS_RTOL * scale,
        features_tolerance=FEATURES_RTOL * feature_scale,
        finite=finite,
    )
    if got_logits.shape != (len(x), head.num_classes) or not report.ok:
        raise HeadVerificationError(f"the written model does not compute the fitted head: {report}")
    return report
