"""The hand-written safetensors parser, card checks, .pt conversion and ONNX checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import onnx
import pytest
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
        n: spec for n, spec in __import__("xfer.models.weights", fromlist=["x"]).tensor_specs(model).items()}


@pytest.mark.parametrize("header,data,message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "run to byte 8"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 6, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "unused bytes"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "trailing bytes"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "begin <= end"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}, b"\0" * 4, "exactly the keys"),
    ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
])
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


def test_card_is_canonicalised_and_checked() -> None:
    card = card_for_model(create_model("convnet", width=8))
    floaty = card.__class__(**{**card.__dict__, "architecture_config": {"width": 8.0, "num_classes": 10.0}})
    canonical = validate.check_card(floaty)
    assert canonical.architecture_config["width"] == 8 and type(canonical.architecture_config["width"]) is int
    assert canonical.architecture_config["depth"] == 3  # defaults filled in
    bad = card.__class__(**{**card.__dict__, "blocks": ("stem", "head")})
    with pytest.raises(InvalidArgument, match="invalid model card: .*blocks"):
        validate.check_card(bad)
    unknown = card.__class__(**{**card.__dict__, "architecture": "resnet9000"})
    with pytest.raises(InvalidArgument, match="unknown architecture 'resnet9000'; valid ones"):
        validate.check_card(unknown)


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


def test_onnx_checks(tmp_path: Path, source_model_dir: Path) -> None:
    from xfer.models.weights import load_safetensors, model_from_card
    from server_testkit import load_card

    model = load_safetensors(model_from_card(load_card(source_model_dir)), source_model_dir / "model.safetensors")
    report = validate.check_onnx(source_model_dir / "model.onnx", model=model)
    assert report.opset >= 17 and report.max_abs_diff <= report.atol == 1e-4

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
