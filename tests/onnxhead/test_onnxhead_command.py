"""`xfer fit-head` glue: flags, .npz and digits data, outputs, report fields, the ledger."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from xfer.client.finetune.errors import DataError, PrivacyBudgetExceededError
from xfer.client.onnxhead import command
from xfer.client.onnxhead.data import load_data
from xfer.client.onnxhead.errors import HeadDataError, HeadError
from xfer.v1 import metrics_service_pb2


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory) -> Path:
    from xfer.models.digits import load_pool, select_classes

    data = select_classes(load_pool("target"), [1, 3, 5, 7])
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    # Flat rows of 64 pixels in [0, 1]: the command reshapes to the card's (1, 8, 8) and normalises.
    np.savez(path, x=data.x.reshape(len(data.x), 64), y=data.y, label_names=np.array(["one", "three", "five", "seven"]))
    return path


def test_npz_run_writes_outputs_and_report_fields_parse_as_a_wire_run(convnet_source, npz_file, tmp_path):
    args = parse(str(npz_file), "--head", "logreg", "--out", str(tmp_path / "out"))
    outcome = command.run(
        args, onnx_path=convnet_source.onnx, card=convnet_source.card, cache_dir=tmp_path / "cache", progress=False
    )
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.onnx", "card.json", "metrics.json"}
    fields = outcome.report_fields()
    message = json_format.ParseDict(
        {**fields, "run_id": "r1", "model_version": "models/m/versions/1"}, metrics_service_pb2.Run()
    )
    assert message.strategy.name == "onnx-logreg" and message.train_examples_pow2 == 256
    assert fields["metrics"]["accuracy"] > 0.7
    assert outcome.dataset_id.startswith("npz-")
    assert "test accuracy" in outcome.summary()
    run = outcome.to_run(run_id="r1", model_version="models/m/versions/1")
    assert run.metrics == fields["metrics"]


def test_the_digits_split_is_the_one_xfer_finetune_makes(convnet_source):
    from xfer.client.finetune.data import load_target  # the torch path, only to compare

    for spec in ("digits:classes=5-9", "digits:shift=blur,per_class=5"):
        ours = load_data(spec, card=convnet_source.card, seed=3)
        theirs = load_target(spec, card=convnet_source.card, seed=3)
        assert (ours.val is None) == (theirs.val is None) == ("per_class" in spec)
        for a, b in ((ours.train, theirs.train), (ours.val, theirs.val), (ours.test, theirs.test)):
            if a is not None:
                np.testing.assert_array_equal(a.x, b.x.numpy())
                np.testing.assert_array_equal(a.y, b.y.numpy())
        assert ours.dataset_id == theirs.dataset_id  # one privacy-ledger key for both commands


def test_a_separate_test_file_and_its_checks(convnet_source, npz_file, tmp_path):
    data = load_data(str(npz_file), card=convnet_source.card, test=str(npz_file))
    assert len(data.train) + len(data.val) == len(data.test)  # DATA split 80/20, the test file whole
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros((4, 64)), y=np.array([0, 1, 0, 1]), label_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match="same label numbering"):
        load_data(str(npz_file), card=convnet_source.card, test=str(other))


@pytest.mark.parametrize(
    "spec,message",
    [
        ("missing.csv", "does not exist"),
        ("missing.npz", "does not exist"),
        ("digits:colour=red", "unknown option"),
        ("digits:per_class=0", "positive integer"),
        ("digits:shift=melt", "unknown digits shift"),
    ],
)
def test_bad_data_specs_say_what_to_do(convnet_source, spec, message):
    with pytest.raises(DataError, match=message):
        load_data(spec, card=convnet_source.card)


def test_unlabelled_data_cannot_fit_a_head(convnet_source, tmp_path):
    np.savez(tmp_path / "no_y.npz", x=np.zeros((8, 64)))
    with pytest.raises(HeadDataError, match="labelled examples"):
        load_data(str(tmp_path / "no_y.npz"), card=convnet_source.card)


def test_bad_npz_contents_are_clear_errors(convnet_source, tmp_path):
    cases = {
        "shape.npz": ({"x": np.zeros((6, 10)), "y": np.arange(6) % 2}, "wrong shape|model takes"),
        "nan.npz": ({"x": np.full((6, 64), np.nan), "y": np.arange(6) % 2}, "NaN"),
        "float_y.npz": ({"x": np.zeros((6, 64)), "y": np.array([0, 1, 0.5, 1, 0, 1])}, "integers"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=message):
            load_data(str(tmp_path / name), card=convnet_source.card)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable"):
        load_data(str(tmp_path / "junk.npz"), card=convnet_source.card)


def test_dp_runs_share_the_ledger_and_stop_at_the_budget(convnet_source, tmp_path):
    common = (
        "digits:classes=5-9,per_class=20",
        "--head",
        "prototype",
        "--privacy-budget",
        "3",
        "--out",
        str(tmp_path / "out"),
    )
    first = command.run(
        parse(*common, "--dp-epsilon", "2"),
        onnx_path=convnet_source.onnx,
        card=convnet_source.card,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert first.budget.spent == pytest.approx(2.0) and first.budget.remaining == pytest.approx(1.0)
    assert first.report_fields()["privacy"]["dp"] is True
    with pytest.raises(PrivacyBudgetExceededError) as refused:
        command.run(
            parse(*common, "--dp-epsilon", "1.5"),
            onnx_path=convnet_source.onnx,
            card=convnet_source.card,
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    assert refused.value.exit_code == 14


def test_privacy_flags_without_epsilon_are_refused(convnet_source, tmp_path):
    with pytest.raises(HeadError, match="need --dp-epsilon"):
        command.run(
            parse("digits", "--privacy-budget", "2"),
            onnx_path=convnet_source.onnx,
            card=convnet_source.card,
            cache_dir=tmp_path,
            progress=False,
        )


def test_progress_prints_a_summary(convnet_source, tmp_path, capsys):
    command.run(
        parse(
            "digits:classes=5-9,per_class=5",
            "--head",
            "prototype",
            "--metric",
            "euclidean",
            "--out",
            str(tmp_path / "o"),
        ),
        onnx_path=convnet_source.onnx,
        card=convnet_source.card,
        cache_dir=tmp_path,
        progress=True,
    )
    out = capsys.readouterr().out
    assert "fitting a prototype head on the features of 25 training examples" in out and "wrote" in out
