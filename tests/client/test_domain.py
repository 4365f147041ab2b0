"""client/domain.py and client/convert.py: the SDK's dataclasses and their wire forms."""

from __future__ import annotations

import json

import pytest

from xfer.client import convert
from xfer.client.domain import ArtifactFormat, DeviceKind, Run, RunPrivacy, pow2_at_least
from xfer.client.errors import InvalidArgumentError
from xfer.models import card_for_model, create_model
from xfer.models.card_proto import card_from_proto, card_to_proto


def test_formats_and_devices_parse_leniently_but_reject_unknowns():
    assert ArtifactFormat.parse("ONNX") is ArtifactFormat.ONNX
    assert ArtifactFormat.parse("torch_state_dict") is ArtifactFormat.TORCH_STATE_DICT
    assert DeviceKind.parse("cuda:1") is DeviceKind.CUDA
    assert DeviceKind.parse("DEVICE_KIND_MPS") is DeviceKind.MPS
    assert DeviceKind.parse(None) is DeviceKind.UNSPECIFIED
    with pytest.raises(InvalidArgumentError):
        ArtifactFormat.parse("pickle")
    with pytest.raises(InvalidArgumentError):
        DeviceKind.parse("tpu")


def test_run_from_the_finetune_report_fields():
    fields = {
        "strategy": {"name": "surgical:block1", "hyperparameters": {"lr": 0.01, "epochs": 5}},
        "metrics": {"accuracy": 0.9, "loss": 0.3},
        "privacy": {"dp": True, "epsilon_spent": 2.5, "delta": 1e-5, "noise_multiplier": 1.2, "max_grad_norm": 1.0},
        "train_examples_pow2": 256,
        "device_kind": "DEVICE_KIND_CPU",
        "wall_seconds": 4.0,
    }
    run = Run.from_report_fields(fields, run_id="r-1", model_version="models/m1/versions/2")
    assert run.strategy == "surgical:block1" and run.hyperparameters == {"lr": "0.01", "epochs": "5"}
    assert run.privacy == RunPrivacy(dp=True, epsilon_spent=2.5, delta=1e-5, noise_multiplier=1.2, max_grad_norm=1.0)
    assert run.device_kind is DeviceKind.CPU and run.train_examples_pow2 == 256
    wire = convert.run_to_pb(run, model_version=run.model_version)
    back = convert.run_from_pb(wire)
    assert (back.run_id, back.strategy, back.metrics, back.privacy) == (
        run.run_id,
        run.strategy,
        run.metrics,
        run.privacy,
    )
    json.dumps(back.to_dict())  # JSON-able for --json


def test_card_round_trips_through_the_wire_form():
    model = create_model("convnet", width=8, depth=2)
    card = card_for_model(
        model,
        source_task="digits",
        dp_epsilon=3.0,
        dp_delta=1e-5,
        label_names=tuple("abcdefghij"),
        input_mean=(0.5,),
        input_std=(0.25,),
        framework_versions={"torch": "2.13.0"},
    )
    assert card_from_proto(card_to_proto(card)) == card
    plain = card_for_model(model)
    back = card_from_proto(card_to_proto(plain))
    assert back == plain and back.dp_epsilon is None
    assert isinstance(back.architecture_config["width"], int)  # Struct doubles come back as ints


def test_pow2():
    assert [pow2_at_least(n) for n in (0, 1, 2, 3, 100, 128, 129)] == [1, 1, 2, 4, 128, 128, 256]
