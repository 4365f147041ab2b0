"""Outputs: safetensors + ONNX (onnxruntime parity), metrics.json; the command and its report fields."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from xfer.client.finetune import command
from xfer.client.domain import pow2_at_least
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
    for flag in ("strategy", "lr", "epochs", "batch_size", "search", "folds", "dp_epsilon", "dp_delta",
                 "max_grad_norm", "accountant", "ghost_clipping", "privacy_budget", "dataset_id", "device", "seed",
                 "out", "schedule", "weight_decay", "patience", "reinit_head"):
        assert hasattr(args, flag), flag


def test_run_writes_outputs_and_report(tmp_path, model, card, capsys):
    args = parse("digits:classes=5-9", "--strategy", "lp-ft", "--epochs", "2", "--device", "cpu",
                 "--out", str(tmp_path / "out"))
    outcome = command.run(args, model=model, card=card, cache_dir=tmp_path / "cache", progress=True)
    printed = capsys.readouterr().out
    assert "epoch" in printed and "test accuracy" in printed

    paths = outcome.paths
    new_card = ModelCard.from_dict(json.loads(paths.card.read_text()))
    validate_card(new_card)
    assert new_card.num_classes == 5 and new_card.label_names == ("5", "6", "7", "8", "9")
    reloaded = load_safetensors(model_from_card(new_card), paths.weights).eval()
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(),
                                                  outcome.result.model.state_dict().values()))
    assert check_parity(reloaded, paths.onnx).ok
    session = ort.InferenceSession(str(paths.onnx), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]

    metrics = json.loads(paths.metrics.read_text())
    for key in ("accuracy", "macro_f1", "loss", "ece", "per_class_accuracy"):
        assert key in metrics
    assert set(metrics["per_class_accuracy"]) <= {"5", "6", "7", "8", "9"}
    assert metrics["accuracy"] == pytest.approx(outcome.test_metrics.accuracy)

    fields = outcome.report_fields()
    assert set(fields) == {"strategy", "metrics", "privacy", "train_examples_pow2", "device_kind", "wall_seconds"}
    assert fields["strategy"]["name"] == "lp-ft"
    assert all(isinstance(v, str) for v in fields["strategy"]["hyperparameters"].values())
    assert len(fields["strategy"]["hyperparameters"]) <= 32
    assert all(METRIC_NAME.match(k) and np.isfinite(v) for k, v in fields["metrics"].items())
    assert len(fields["metrics"]) <= 64
    assert fields["privacy"] == {"dp": False, "epsilon_spent": 0.0, "delta": 0.0, "noise_multiplier": 0.0,
                                 "max_grad_norm": 0.0}
    n = fields["train_examples_pow2"]
    assert n & (n - 1) == 0 and n != len(outcome.result.model.state_dict())
    assert fields["device_kind"] == "DEVICE_KIND_CPU"
    # Nothing in the report can hold an example: only short strings and numbers.
    assert "tensor" not in json.dumps(fields)


def test_report_fields_parse_into_the_run_message(tmp_path, model, card):
    json_format = pytest.importorskip("google.protobuf.json_format")
    pb = pytest.importorskip("xfer.v1.metrics_service_pb2")
    args = parse("digits:shift=blur,per_class=10", "--strategy", "linear-probe", "--epochs", "1",
                 "--device", "cpu", "--dp-epsilon", "2", "--accountant", "rdp", "--out", str(tmp_path / "o"))
    outcome = command.run(args, model=model, card=card, cache_dir=tmp_path / "cache", progress=False)
    run = json_format.ParseDict(outcome.report_fields(), pb.Run())
    assert run.privacy.dp and 0 < run.privacy.epsilon_spent <= 2.0 + 1e-6
    assert run.privacy.noise_multiplier > 0 and run.privacy.max_grad_norm == 1.0
    assert run.device_kind == pb.DEVICE_KIND_CPU


def test_run_refuses_several_strategies_without_search(tmp_path, model, card):
    from xfer.client.finetune.errors import FinetuneError, SearchError

    with pytest.raises(FinetuneError, match="need --dp-epsilon"):
        command.run(parse("digits", "--privacy-budget", "3"), model=model, card=card, cache_dir=tmp_path,
                    progress=False)
    with pytest.raises(SearchError, match="need --search"):
        command.run(parse("digits", "--strategy", "full,linear-probe"), model=model, card=card,
                    cache_dir=tmp_path, progress=False)


def test_pow2():
    assert [pow2_at_least(n) for n in (1, 2, 3, 5, 6, 100, 538, 1024, 1025)] == [1, 2, 4, 8, 8, 128, 1024, 1024, 2048]


def test_run_with_search_prints_the_cv_table(tmp_path, model, card, capsys):
    args = parse("digits:shift=blur,per_class=10", "--search", "--strategy", "linear-probe,lp-ft", "--lr", "1e-2",
                 "--folds", "2", "--epochs", "2", "--device", "cpu", "--out", str(tmp_path / "o"))
    outcome = command.run(args, model=model, card=card, cache_dir=tmp_path / "cache", progress=True)
    printed = capsys.readouterr().out
    assert "mean acc" in printed and "linear-probe" in printed and "lp-ft" in printed and "best:" in printed
    fields = outcome.report_fields()
    assert fields["strategy"]["name"] == outcome.search.best.strategy
    assert fields["strategy"]["hyperparameters"]["search_folds"] == "2"
    assert fields["metrics"]["cv/accuracy"] == pytest.approx(outcome.search.best.mean)
    metrics = json.loads(outcome.paths.metrics.read_text())
    assert len(metrics["cv"]) == 2
