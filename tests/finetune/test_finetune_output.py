"""Outputs: safetensors + ONNX (onnxruntime parity), metrics.json; the command, its config and its report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re

import onnxruntime as ort
import pytest
import torch

from xfer.client.domain import DeviceKind, Run, pow2_at_least
from xfer.client.finetune import command
from xfer.client.finetune.config import FinetuneConfig
from xfer.models.card import ModelCard, validate_card
from xfer.models.export import check_parity
from xfer.models.weights import load_safetensors, model_from_card

METRIC_NAME = re.compile(r"^[a-z][a-z0-9_./-]{0,63}$")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_add_arguments_declares_every_flag():
    args = parse("digits")
    for flag in (
        "strategy",
        "lr",
        "steps",
        "epochs",
        "batch_size",
        "eval_every",
        "search",
        "folds",
        "trials",
        "dp_epsilon",
        "dp_delta",
        "max_grad_norm",
        "accountant",
        "ghost_clipping",
        "privacy_budget",
        "dataset_id",
        "device",
        "seed",
        "out",
        "schedule",
        "weight_decay",
        "patience",
        "reinit_head",
    ):
        assert hasattr(args, flag), flag


def test_flags_become_one_frozen_config():
    config = command.config_from_args(
        parse("digits", "--steps", "30", "--dp-epsilon", "2", "--privacy-budget", "8", "--device", "cpu")
    )
    assert isinstance(config, FinetuneConfig) and config.steps == 30 and config.privacy.budget == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3  # type: ignore[misc]
    searched = command.config_from_args(
        parse("digits", "--search", "--strategy", "linear-probe,full", "--lr", "1e-2,1e-3", "--folds", "4")
    )
    assert searched.search.strategies == ("linear-probe", "full") and searched.search.lrs == (1e-2, 1e-3)
    assert command.config_from_args(parse("digits", "--search")).search.strategies == ("linear-probe", "lp-ft")


def test_run_writes_outputs_and_report(tmp_path, model, card, capsys):
    args = parse(
        "digits:classes=5-9", "--strategy", "lp-ft", "--steps", "6", "--device", "cpu", "--out", str(tmp_path / "out")
    )
    outcome = command.run(args, model=model, card=card, cache_dir=tmp_path / "cache", progress=True)
    printed = capsys.readouterr().out
    assert "step" in printed and "test accuracy" in printed

    paths = outcome.paths
    new_card = ModelCard.from_dict(json.loads(paths.card.read_text()))
    validate_card(new_card)
    assert new_card.num_classes == 5 and new_card.label_names == ("5", "6", "7", "8", "9")
    reloaded = load_safetensors(model_from_card(new_card), paths.weights).eval()
    assert all(
        torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), outcome.result.model.state_dict().values())
    )
    assert check_parity(reloaded, paths.onnx).ok
    session = ort.InferenceSession(str(paths.onnx), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]

    metrics = json.loads(paths.metrics.read_text())
    for key in ("accuracy", "macro_f1", "loss", "ece", "per_class_accuracy", "steps_applied"):
        assert key in metrics
    assert set(metrics["per_class_accuracy"]) <= {"5", "6", "7", "8", "9"}
    assert metrics["accuracy"] == pytest.approx(outcome.test_metrics.accuracy)  # exact locally

    run = outcome.to_run(run_id="r-1", model_version="models/m/versions/1")
    assert isinstance(run, Run) and run.run_id == "r-1" and run.strategy == "lp-ft"
    assert run.device_kind is DeviceKind.CPU
    assert all(isinstance(v, str) for v in run.hyperparameters.values()) and len(run.hyperparameters) <= 32
    assert set(run.metrics) == {"accuracy", "macro_f1", "loss", "ece"}  # no per-class or validation accuracy
    assert all(METRIC_NAME.match(k) and math.isfinite(v) for k, v in run.metrics.items())
    assert not run.privacy.dp and run.privacy.epsilon_spent == 0
    n = len(outcome.result.model.state_dict()) and outcome.result.train_examples
    assert run.train_examples_pow2 == pow2_at_least(n) and run.train_examples_pow2 != n
    # The wall time is a power of two; the test accuracy sits on the size bucket's grid.
    assert math.log2(run.wall_seconds).is_integer()
    grid = 1 / int(run.hyperparameters["metric_grid"].split("/")[1])
    assert (run.metrics["accuracy"] / grid) == pytest.approx(round(run.metrics["accuracy"] / grid))
    assert outcome.report_fields()["metrics"] == run.metrics
    assert "tensor" not in json.dumps(outcome.report_fields())


def test_run_parses_into_the_wire_message(tmp_path, model, card):
    json_format = pytest.importorskip("google.protobuf.json_format")
    pb = pytest.importorskip("xfer.v1.metrics_service_pb2")
    from xfer.client.convert import run_to_pb

    args = parse(
        "digits:shift=blur,per_class=10",
        "--strategy",
        "linear-probe",
        "--steps",
        "4",
        "--device",
        "cpu",
        "--dp-epsilon",
        "2",
        "--accountant",
        "rdp",
        "--out",
        str(tmp_path / "o"),
    )
    outcome = command.run(args, model=model, card=card, cache_dir=tmp_path / "cache", progress=False)
    message = run_to_pb(
        outcome.to_run(run_id="r", model_version="models/m/versions/1"), model_version="models/m/versions/1"
    )
    assert isinstance(message, pb.Run)
    assert message.privacy.dp and 0 < message.privacy.epsilon_spent <= 2.0 + 1e-6
    assert message.privacy.noise_multiplier > 0 and message.privacy.max_grad_norm == 1.0
    assert message.device_kind == pb.DEVICE_KIND_CPU
    assert message.train_examples_pow2 == 128 and "trainExamplesPow2" in json_format.MessageToDict(message)


def test_run_refuses_bad_flag_combinations(tmp_path, model, card):
    from xfer.client.finetune.errors import FinetuneError, SearchError

    with pytest.raises(FinetuneError, match="need --dp-epsilon"):
        command.run(
            parse("digits", "--privacy-budget", "3"), model=model, card=card, cache_dir=tmp_path, progress=False
        )
    with pytest.raises(SearchError, match="need --search"):
        command.run(
            parse("digits", "--strategy", "full,linear-probe"),
            model=model,
            card=card,
            cache_dir=tmp_path,
            progress=False,
        )


def test_pow2():
    assert [pow2_at_least(n) for n in (1, 2, 3, 5, 6, 100, 538, 1024, 1025)] == [1, 2, 4, 8, 8, 128, 1024, 1024, 2048]


def test_run_with_search_prints_the_cv_table(tmp_path, model, card, capsys):
    args = parse(
        "digits:shift=blur,per_class=10",
        "--search",
        "--strategy",
        "linear-probe,lp-ft",
        "--lr",
        "1e-2",
        "--folds",
        "2",
        "--steps",
        "4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "o"),
    )
    outcome = command.run(args, model=model, card=card, cache_dir=tmp_path / "cache", progress=True)
    printed = capsys.readouterr().out
    assert "mean acc" in printed and "linear-probe" in printed and "lp-ft" in printed and "best:" in printed
    run = outcome.to_run(run_id="r", model_version="m")
    assert run.strategy == outcome.search.best.strategy
    assert run.hyperparameters["search_folds"] == "2" and run.hyperparameters["search"] == "k-fold"
    # The CV accuracy is over the n training examples: on the grid of the smallest n of the bucket.
    assert run.metrics["cv/accuracy"] == pytest.approx(round(outcome.search.best.mean * 64) / 64)
    metrics = json.loads(outcome.paths.metrics.read_text())
    assert len(metrics["search"]["rows"]) == 2
