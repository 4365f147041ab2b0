"""fit_head end to end on a real exported convnet and the digits target."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from xfer.client.finetune.errors import PrivacyBudgetExceededError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.onnxhead import HeadConfig, PrivacyConfig, fit_head
from xfer.client.onnxhead.errors import HeadDataError, HeadError, HeadPrivacyError, UnknownHeadError
from xfer.client.onnxhead.features import open_session
from xfer.models.card import ModelCard, validate_card


@pytest.mark.parametrize("strategy", ["logreg", "onnx-prototype"])
def test_fit_writes_a_verified_model_card_and_metrics(convnet_source, digits_59, tmp_path, strategy):
    d = digits_59
    result = fit_head(
        convnet_source.onnx,
        train=d.train,
        val=d.val,
        test=d.test,
        strategy=strategy,
        label_names=d.label_names,
        card=convnet_source.card,
        out_dir=tmp_path,
    )
    assert result.strategy in ("onnx-logreg", "onnx-prototype")
    assert result.test_metrics.accuracy > 0.6  # five classes: chance is 0.2
    assert result.verification.ok and result.surgery.removed_initializers == 2
    card = ModelCard.from_dict(json.loads((tmp_path / "card.json").read_text()))
    validate_card(card)
    assert card.num_classes == 5 and card.label_names == ("5", "6", "7", "8", "9")
    assert card.architecture_config["num_classes"] == 5
    session = open_session(tmp_path / "model.onnx")
    logits = session.run(["logits"], {"input": d.test.x})[0]
    assert logits.shape == (len(d.test), 5)
    assert np.mean(logits.argmax(axis=1) == d.test.y) == pytest.approx(result.test_metrics.accuracy)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == result.test_metrics.accuracy and metrics["verification"]["finite"]
    assert len((tmp_path / "metrics.json").read_text()) < 20_000  # aggregates, never examples
    assert json.loads((tmp_path / "card.json").read_text())["artifacts"]["onnx"]["size_bytes"] > 0


def test_objects_with_x_and_y_and_plain_tuples_give_the_same_head(convnet_source, digits_59):
    d = digits_59
    a = fit_head(convnet_source.onnx, train=d.train, strategy="prototype", config=HeadConfig(scale=5.0))
    b = fit_head(convnet_source.onnx, train=(d.train.x, d.train.y), strategy="prototype", config=HeadConfig(scale=5.0))
    np.testing.assert_array_equal(a.head.weight, b.head.weight)
    assert a.outputs is None and a.test_metrics is None
    with pytest.raises(HeadDataError, match="nothing to report"):
        a.to_run(run_id="r", model_version="m:1")


def test_label_problems_are_clear_errors(convnet_source, digits_59):
    x, y = digits_59.train.x, digits_59.train.y
    with pytest.raises(HeadDataError, match="no training examples"):
        fit_head(convnet_source.onnx, train=(x, y), label_names=[str(i) for i in range(6)])
    with pytest.raises(HeadDataError, match=r"labels must be 0\.\.4"):
        fit_head(convnet_source.onnx, train=(x, y), test=(x[:3], np.array([0, 1, 9])), label_names="56789")
    with pytest.raises(HeadDataError, match="at least two classes"):
        fit_head(convnet_source.onnx, train=(x[y == 0], y[y == 0]))
    with pytest.raises(HeadDataError, match="one label per example"):
        fit_head(convnet_source.onnx, train=(x, y[:-1]))
    with pytest.raises(ValueError, match="train: found label 40000000000, but labels without names are class numbers"):
        fit_head(convnet_source.onnx, train=(x, y * 10**10))
    with pytest.raises(UnknownHeadError, match="logreg .*prototype"):
        fit_head(convnet_source.onnx, train=(x, y), strategy="svm")
    with pytest.raises(HeadDataError, match="privacy"):
        fit_head(convnet_source.onnx, train=(x, y), privacy_budget=3.0)


def test_private_fit_charges_and_settles_the_shared_ledger(convnet_source, digits_59, tmp_path):
    d = digits_59
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    result = fit_head(
        convnet_source.onnx,
        train=d.train,
        test=d.test,
        strategy="logreg",
        label_names=d.label_names,
        privacy=PrivacyConfig(epsilon=2.0),
        ledger=ledger,
        dataset_id="digits-target",
        privacy_budget=3.0,
    )
    assert result.privacy.epsilon_spent == pytest.approx(2.0, rel=1e-9)
    assert result.privacy.delta == 1e-5 and result.privacy.max_grad_norm == 1.0
    names = [r.name for r in result.privacy.releases]
    assert names == ["class_sums", "class_counts", "gradient_steps"]
    (entry,) = ledger.entries("digits-target")
    assert entry.epsilon == pytest.approx(2.0, rel=1e-9) and entry.note == "onnx-logreg"
    run = result.to_run(run_id="r1", model_version="models/m/versions/1")
    assert run.privacy.dp and run.privacy.epsilon_spent == pytest.approx(2.0, rel=1e-9)
    # A second run would pass the budget: refused before the model is even opened.
    with pytest.raises(PrivacyBudgetExceededError):
        fit_head(
            tmp_path / "no-such-model.onnx",
            train=d.train,
            strategy="prototype",
            privacy=PrivacyConfig(1.5),
            ledger=ledger,
            dataset_id="digits-target",
            out_dir=tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()
    assert ledger.status("digits-target").spent == pytest.approx(2.0, rel=1e-9)
    # A δ of 1/B or more (B: the training set's size rounded up to a power of two) guarantees nothing.
    with pytest.raises(HeadPrivacyError, match=r"delta 0.5 is not below 1/\d+"):
        fit_head(convnet_source.onnx, train=d.train, privacy=PrivacyConfig(epsilon=1.0, delta=0.5))


def test_a_fit_that_takes_no_step_is_an_error(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "zero"], ["features"]),
            helper.make_node("Identity", ["features"], ["logits"]),
        ],
        "dead",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4]),
        ],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    path = tmp_path / "dead.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    with pytest.raises(HeadError, match="no step"):
        fit_head(path, train=(x, np.arange(20) % 2), config=HeadConfig(l2=0.1))


def test_result_fields_are_frozen_and_local_counts_stay_local(convnet_source, digits_59):
    d = digits_59
    result = fit_head(convnet_source.onnx, train=d.train, test=d.test, strategy="logreg", config=HeadConfig(l2=0.01))
    assert result.train_examples == len(d.train) and result.train_examples_pow2 == 512
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.strategy = "x"  # type: ignore[misc]
    assert result.hyperparameters == {"l2": "0.01", "standardize": "true"}
