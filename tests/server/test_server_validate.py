"""The hand-written safetensors parser, card checks, .pt conversion and ONNX checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import onnx
import pytest
import server_testkit
import torch

from xfer.models import card_for_model, create_model
from xfer.models.weights import save_safetensors
from xfer.server import validate
from xfer.server.errors import InvalidArgument


def _write(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_parses_a_real_file(tmp_path: Path) -> None:
    model = create_model("mlp", in_features=4, hidden=[8], num_classes=3)
    save_safetensors(model, tmp_path / "m.safetensors", metadata={"k": "v"})
    header = validate.parse_safetensors_header(tmp_path / "m.safetensors")
    assert header.metadata == {"k": "v"}
    assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == {
        n: spec for n, spec in __import__("xfer.models.weights", fromlist=["x"]).tensor_specs(model).items()
    }


@pytest.mark.parametrize(
    "header,data,message",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "run to byte 8"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]},
            },
            b"\0" * 6,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "unused bytes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "trailing bytes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "begin <= end"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}, b"\0" * 4, "exactly the keys"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
    ],
)
def test_rejects_malformed_headers(tmp_path: Path, header: dict, data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate.parse_safetensors_header(_write(tmp_path / "x.safetensors", header, data))


def test_rejects_forged_lengths_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\1\2")
    with pytest.raises(InvalidArgument, match="fewer than the 8-byte"):
        validate.parse_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 100) + b"{}")
    with pytest.raises(InvalidArgument, match="truncated"):
        validate.parse_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 64 * 1024 * 1024) + b"{}")
    with pytest.raises(InvalidArgument, match="above the limit"):
        validate.parse_safetensors_header(path)
    raw = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0")
    with pytest.raises(InvalidArgument, match="repeats a key"):
        validate.parse_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 3) + b"\xff\xfe[")
    with pytest.raises(InvalidArgument, match="not UTF-8 JSON"):
        validate.parse_safetensors_header(path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("description", "fine\x1b[2Jwiped"),
        ("description", "bell\x07"),
        ("source_task", "nul\x00"),
        ("license", "MIT\nsecond line"),
        ("label_names", ("zero", "\u202eevil")),
        ("framework_versions", {"torch": "2.13\x1b]0;title\x07"}),
    ],
)
def test_card_text_with_control_characters_is_refused(field: str, value) -> None:
    card = card_for_model(create_model("mlp", in_features=4, hidden=[8], num_classes=2))
    hostile = card.__class__(**{**card.__dict__, field: value})
    with pytest.raises(InvalidArgument, match="control character U\\+") as caught:
        validate.check_card_text(hostile)
    assert caught.value.reason == "INVALID_CARD"


def test_card_text_may_span_lines_where_that_is_natural() -> None:
    card = card_for_model(create_model("mlp", in_features=4, hidden=[8], num_classes=2))
    validate.check_card_text(card.__class__(**{**card.__dict__, "description": "line one\n\tline two ü"}))


def test_memory_errors_are_recognised_whoever_raises_them() -> None:
    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise RuntimeError("Could not allocate bytes object!") from inner
    except RuntimeError as outer:
        assert validate.is_memory_error(outer)
    assert validate.is_memory_error(Exception("[ONNXRuntimeError] ... Failed to allocate memory for requested buffer"))
    assert not validate.is_memory_error(ValueError("shape mismatch"))


def test_header_nested_100000_deep_is_invalid_not_a_crash(tmp_path: Path) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(InvalidArgument, match="nests JSON too deeply"):
        validate.parse_safetensors_header(path)


def test_tensors_must_match_the_card(tmp_path: Path) -> None:
    card = card_for_model(create_model("mlp", in_features=4, hidden=[8], num_classes=3))
    other = create_model("mlp", in_features=4, hidden=[8, 8], num_classes=3)
    save_safetensors(other, tmp_path / "o.safetensors")
    header = validate.parse_safetensors_header(tmp_path / "o.safetensors")
    with pytest.raises(InvalidArgument, match="unexpected tensors"):
        validate.check_tensors_match(header, card)


def test_state_dict_conversion(tmp_path: Path) -> None:
    model = create_model("mlp", in_features=4, hidden=[8], num_classes=3)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    validate.convert_torch_state_dict(tmp_path / "m.pt", tmp_path / "m.safetensors")
    header = validate.parse_safetensors_header(tmp_path / "m.safetensors")
    assert set(header.tensors) == set(model.state_dict())
    torch.save({"nested": {"a": torch.zeros(1)}}, tmp_path / "nested.pt")
    with pytest.raises(InvalidArgument, match="must map names to tensors"):
        validate.convert_torch_state_dict(tmp_path / "nested.pt", tmp_path / "n.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(InvalidArgument, match="flat dict of tensors"):
        validate.convert_torch_state_dict(tmp_path / "list.pt", tmp_path / "l.safetensors")


def _weights(source_model_dir: Path):
    from server_testkit import load_card

    from xfer.models.weights import load_safetensors, model_from_card

    return load_safetensors(model_from_card(load_card(source_model_dir)), source_model_dir / "model.safetensors")


def test_probe_plan_covers_many_batch_sizes_with_fresh_seeds() -> None:
    first, second = validate.probe_plan(), validate.probe_plan()
    assert {p.batch for p in first} >= {1, 2, 3, 4, 5, 8, 16}
    assert {p.seed for p in first} != {p.seed for p in second}
    assert {p.distribution for p in first} == {"normal", "uniform"}


@pytest.mark.parametrize(
    "builder,message",
    [
        (lambda d: server_testkit.onnx_nan_features(d), "output 'features' is not finite"),
        (lambda d: server_testkit.onnx_only_at_batch_4(d, control_flow=False), "output 'logits' is not finite"),
        (lambda d: server_testkit.onnx_only_at_batch_4(d, control_flow=True), "contains \\['If'\\]"),
        (lambda d: server_testkit.onnx_random(d), "RandomNormalLike"),
    ],
    ids=["nan-features", "batch-4-where", "batch-4-if", "random-op"],
)
def test_onnx_that_only_looks_right_is_refused(tmp_path: Path, source_model_dir: Path, builder, message) -> None:
    path = tmp_path / "hostile.onnx"
    path.write_bytes(builder(source_model_dir))
    with pytest.raises(InvalidArgument, match=message):
        validate.check_onnx(path, model=_weights(source_model_dir))


def test_the_old_single_probe_would_have_passed_the_batch_4_graph(tmp_path: Path, source_model_dir: Path) -> None:
    """The trick works against one batch of 4: the test above is not vacuous."""
    graph = server_testkit.onnx_only_at_batch_4(source_model_dir, control_flow=False)
    worst = validate.probe_parity(
        _weights(source_model_dir), graph, probes=[validate.Probe(batch=4, seed=1, distribution="normal")]
    )
    assert worst <= validate.PARITY_ATOL


def test_nonfinite_weights_are_refused(tmp_path: Path) -> None:
    model = create_model("mlp", in_features=4, hidden=[8], num_classes=3)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    save_safetensors(model, tmp_path / "nan.safetensors")
    fresh = create_model("mlp", in_features=4, hidden=[8], num_classes=3)
    with pytest.raises(InvalidArgument, match="contains NaN or infinite values"):
        validate.load_weights(fresh, tmp_path / "nan.safetensors")


def test_onnx_checks(tmp_path: Path, source_model_dir: Path) -> None:
    model = _weights(source_model_dir)
    report = validate.check_onnx(source_model_dir / "model.onnx", model=model)
    assert report.opset >= 17 and report.max_abs_diff <= report.atol == 1e-4 and report.probes >= 9

    proto = onnx.load(str(source_model_dir / "model.onnx"))
    renamed = onnx.ModelProto()
    renamed.CopyFrom(proto)
    for node in renamed.graph.node:
        node.output[:] = ["out_logits" if o == "logits" else o for o in node.output]
    renamed.graph.output[0].name = "out_logits"
    onnx.save(renamed, str(tmp_path / "renamed.onnx"))
    with pytest.raises(InvalidArgument, match="lack \\['logits'\\]"):
        validate.check_onnx(tmp_path / "renamed.onnx", model=model)

    old = onnx.ModelProto()
    old.CopyFrom(proto)
    old.opset_import[0].version = 13
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.raises(InvalidArgument, match="opset 13 is below 17"):
        validate.check_onnx(tmp_path / "old.onnx", model=model)

    (tmp_path / "junk.onnx").write_bytes(b"not a model at all \xff\xff")
    with pytest.raises(InvalidArgument, match="invalid ONNX artifact"):
        validate.check_onnx(tmp_path / "junk.onnx", model=model)

    # External data hidden inside a Constant node's attribute is found too.
    sneaky = onnx.ModelProto()
    sneaky.CopyFrom(proto)
    tensor = onnx.helper.make_tensor("c", onnx.TensorProto.FLOAT, [1], [1.0])
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")
    sneaky.graph.node.append(onnx.helper.make_node("Constant", [], ["c_out"], value=tensor))
    assert validate.external_data_tensors(sneaky) == ["c"]
