import dataclasses
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from xfer import models
from xfer.models.card import ModelCard, validate_card
from xfer.models.errors import InvalidCardError, WeightsMismatchError
from xfer.models.export import check_parity, export_onnx
from xfer.models.weights import (
    load_safetensors,
    model_from_card,
    require_weights_fit,
    save_safetensors,
    tensor_specs,
)


@pytest.fixture
def card():
    return models.card_for_model(
        models.create_model("convnet", width=8, depth=2, num_classes=4), input_mean=(0.3,), input_std=(0.4,)
    )


def test_card_round_trips_through_a_dict(card):
    again = ModelCard.from_dict(card.to_dict())
    assert again == card
    validate_card(again)


def test_card_rejects_unknown_and_missing_fields(card):
    data = card.to_dict()
    with pytest.raises(InvalidCardError, match="unknown model card field"):
        ModelCard.from_dict({**data, "raw_examples": [1, 2]})
    del data["blocks"]
    with pytest.raises(InvalidCardError, match="missing required field"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"blocks": ("stem", "head")}, "do not match"),
        ({"num_classes": 7}, "disagrees with the config"),
        ({"input_shape": (3, 8, 8)}, "input_shape"),
        ({"architecture": "gpt"}, "unknown architecture"),
        ({"dp_epsilon": 1.0}, "together"),
        ({"dp_epsilon": -1.0, "dp_delta": 1e-5}, "positive"),
        ({"input_std": (0.0,)}, "positive"),
        ({"label_names": ("a",)}, "label_names"),
        ({"description": "x" * 5000}, "longer than"),
    ],
)
def test_card_checks_name_the_bad_field(card, change, message):
    # Field rules are checked on the plain card; the architecture when a module is built from it.
    bad = dataclasses.replace(card, **change)
    with pytest.raises(InvalidCardError, match=message):
        validate_card(bad)
        model_from_card(bad)


def test_card_module_imports_no_torch():
    code = (
        "import sys, xfer.models, xfer.models.card as c; "
        "c.validate_card(c.ModelCard.from_dict({'architecture': 'x', 'architecture_config': {}, "
        "'input_shape': [1, 8, 8], 'num_classes': 2, 'blocks': ['stem', 'head']})); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_safetensors_round_trip_is_exact(tmp_path, card):
    model = model_from_card(card)
    save_safetensors(model, tmp_path / "w.safetensors")
    again = load_safetensors(model_from_card(card), tmp_path / "w.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert not list(tmp_path.glob(".*.tmp"))


def test_loading_weights_of_another_shape_names_the_tensor(tmp_path):
    save_safetensors(models.create_model("convnet", width=8), tmp_path / "w.safetensors")
    with pytest.raises(WeightsMismatchError, match="has shape"):
        load_safetensors(models.create_model("convnet", width=16), tmp_path / "w.safetensors")
    with pytest.raises(WeightsMismatchError, match="missing"):
        load_safetensors(models.create_model("convnet", width=8, depth=4), tmp_path / "w.safetensors")


def test_a_card_larger_than_its_artifact_is_refused_before_allocating(tmp_path, card):
    save_safetensors(model_from_card(card), tmp_path / "w.safetensors")
    require_weights_fit(card, artifact_bytes=(tmp_path / "w.safetensors").stat().st_size)
    # A hostile server's card for two 16,384-wide layers (1 GiB of weights) beside a 1 KB file: sized on the
    # meta device and refused, where building the module first would have allocated it all.
    small = models.card_for_model(models.create_model("mlp", in_features=4, hidden=[2, 2], num_classes=3))
    huge = dataclasses.replace(small, architecture_config={**small.architecture_config, "hidden": [16384, 16384]})
    weights = 4 * (4 * 16384 + 16384 + 16384 * 16384 + 16384 + 16384 * 3 + 3)
    with pytest.raises(WeightsMismatchError, match=f"describes {weights:,} bytes of weights but .* holds 1,000"):
        require_weights_fit(huge, artifact_bytes=1000)


def test_tensor_specs_use_safetensors_dtype_names():
    specs = tensor_specs(models.create_model("mlp", hidden=[4]))
    assert specs["head.weight"] == ("F32", (10, 4))


@pytest.mark.parametrize("name", ["mlp", "convnet", "vit_tiny"])
def test_onnx_export_has_logits_features_and_a_dynamic_batch(tmp_path, name):
    model = models.create_model(name)
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.ok and report.max_abs_diff_logits < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    x = np.random.default_rng(0).standard_normal((7, *model.input_shape())).astype(np.float32)
    logits, features = session.run(None, {"input": x})
    assert logits.shape == (7, model.num_classes) and features.shape == (7, model.feature_dim)


def test_parity_detects_different_weights(tmp_path):
    model = models.create_model("mlp")
    export_onnx(model, tmp_path / "m.onnx")
    other = models.create_model("mlp")
    assert not check_parity(other, tmp_path / "m.onnx").ok


def test_card_round_trips_through_the_wire_form(card):
    from xfer.models.card_proto import card_from_proto, card_to_proto

    private = dataclasses.replace(card, dp_epsilon=2.0, dp_delta=1e-5, label_names=("a", "b", "c", "d"))
    assert card_from_proto(card_to_proto(private)) == private
    wire = card_to_proto(card)
    assert isinstance(card_from_proto(wire).architecture_config["width"], int)  # Struct doubles come back whole


def test_wire_card_with_contradictory_privacy_is_refused(card):
    from xfer.models.card_proto import card_from_proto, card_to_proto

    wire = card_to_proto(card)
    wire.source_privacy.epsilon = 3.0  # dp stays false
    with pytest.raises(InvalidCardError, match="dp=false"):
        card_from_proto(wire)
