"""A report narrows the training-set size no further than its power-of-two bucket."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnxhead_helpers import blobs

from xfer.client.domain import pow2_at_least
from xfer.client.onnxhead import PrivacyConfig, fit_head
from xfer.client.onnxhead.data import min_eval_for_split, own_bucket_floor, split_indices
from xfer.client.onnxhead.report import metric_step, round_to_step, significant
from xfer.names import METRIC_NAME, STRATEGY


def consistent_sizes(value: float, *, step: float, sizes: range) -> list[int]:
    """Every test-split size m for which some k/m rounds to `value` (what an observer can still believe).

    Only the k nearest value·m can round to it, so a few candidates per m are enough.
    """

    def fits(m: int) -> bool:
        near = math.floor(value * m)
        return any(round_to_step(k / m, step) == value for k in range(max(0, near - 2), min(m, near + 3) + 1))

    return [m for m in sizes if fits(m)]


def test_metric_step_is_a_power_of_two_no_finer_than_one_over_the_floor():
    for m in range(1, 600):
        step = metric_step(m)
        assert math.log2(step).is_integer() and step >= 1 / m and step < 2 / m
    assert round_to_step(52 / 92, metric_step(85)) == 0.5625  # not 52/92: the fraction that named n in issue 8


@pytest.mark.parametrize("train_pow2,classes", [(32, 2), (128, 5), (512, 5), (1024, 10), (4096, 3)])
def test_the_split_floor_holds_for_every_class_mix_in_the_bucket(train_pow2, classes):
    rng = np.random.default_rng(train_pow2 + classes)
    floor = min_eval_for_split(train_pow2=train_pow2, num_classes=classes)
    hits = 0
    for _ in range(300):
        total = int(rng.integers(train_pow2 // 2, train_pow2 * 2))
        y = rng.choice(classes, size=total, p=rng.dirichlet(np.ones(classes) * 0.7))
        split = split_indices(y, seed=int(rng.integers(1 << 30)))
        train, test = split.train, split.test
        if pow2_at_least(len(train)) != train_pow2:
            continue
        hits += 1
        assert len(test) >= floor
    assert hits > 30


@pytest.mark.parametrize("train_pow2,classes", [(64, 5), (512, 5), (256, 10)])
def test_every_size_in_the_bucket_stays_consistent_with_every_reported_accuracy(train_pow2, classes):
    floor = min_eval_for_split(train_pow2=train_pow2, num_classes=classes)
    step = metric_step(floor)
    sizes = range(floor, train_pow2 + 1)  # test splits of data sets anywhere in the bucket
    for m in (floor, (floor + train_pow2) // 2, train_pow2):
        for k in range(0, m + 1, max(1, m // 17)):
            assert consistent_sizes(round_to_step(k / m, step), step=step, sizes=sizes) == list(sizes)


def test_two_private_runs_in_one_bucket_report_the_same_privacy_and_size(convnet_source, digits_59):
    d = digits_59
    reports = []
    for n in (260, 277):  # both in the bucket (256, 512]
        rows = np.arange(n)
        result = fit_head(
            convnet_source.onnx,
            train=(d.train.x[rows], d.train.y[rows]),
            test=d.test,
            strategy="logreg",
            privacy=PrivacyConfig(epsilon=3.0, noise_seed=1),
        )
        reports.append(
            result.to_run(run_id=f"r{n}", model_version="models/m/versions/1", min_eval_examples=d.min_eval_examples)
        )
    a, b = reports
    assert a.privacy == b.privacy and a.train_examples_pow2 == b.train_examples_pow2 == 512
    assert a.hyperparameters == b.hyperparameters
    step = metric_step(d.min_eval_examples)
    for run in reports:
        assert set(run.metrics) == {"accuracy", "macro_f1", "loss", "ece"}  # no per-class counts or accuracies
        assert all(METRIC_NAME.fullmatch(name) for name in run.metrics) and STRATEGY.fullmatch(run.strategy)
        assert all((value / step).is_integer() for value in run.metrics.values())
        assert run.wall_seconds == significant(run.wall_seconds)


def test_an_independent_test_set_rounds_to_its_own_bucket(convnet_source):
    x, y = blobs(n=100, dim=64, classes=2)
    images = np.repeat(x[:, None, None, :8], 8, axis=2).astype(np.float32)
    result = fit_head(convnet_source.onnx, train=(images[:60], y[:60]), test=(images[60:], y[60:]))
    run = result.to_run(run_id="r", model_version="models/m/versions/1")
    assert own_bucket_floor(40) == 33
    assert all((v / metric_step(33)).is_integer() for v in run.metrics.values())
    assert "selection" in run.hyperparameters and "l2" in run.hyperparameters
    assert run.hyperparameters["l2"] == "auto"  # never the λ the data chose
