"""Prototype heads and class statistics: the head computes what the docstring says."""

from __future__ import annotations

import numpy as np
import pytest
from onnxhead_helpers import blobs

from xfer.client.onnxhead.head import log_softmax
from xfer.client.onnxhead.prototype import DEFAULT_SCALE, fit_prototype, fit_scale
from xfer.client.onnxhead.stats import class_stats, counts_share, prototypes, unit_features


def _naive(features, y, k):
    u = features / np.linalg.norm(features, axis=1, keepdims=True)
    m = u.mean(axis=0)
    means = np.stack([u[y == c].mean(axis=0) for c in range(k)])
    return u, m, means - m


def test_statistics_give_the_class_means_of_unit_features():
    f, y = blobs(n=60, dim=5, classes=3)
    u, m, centred = _naive(f, y, 3)
    protos = prototypes(class_stats(unit_features(f), y, num_classes=3))
    np.testing.assert_allclose(protos.mean, m)
    np.testing.assert_allclose(protos.centred, centred)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_head_logits_follow_their_definition(metric):
    f, y = blobs(n=60, dim=5, classes=3)
    test, _ = blobs(n=20, dim=5, classes=3, seed=9)
    u, m, centred = _naive(f, y, 3)
    stats = class_stats(unit_features(f), y, num_classes=3)
    head = fit_prototype(stats=stats, metric=metric, scale=7.0, private=False).head
    z = test / np.linalg.norm(test, axis=1, keepdims=True) - m
    if metric == "cosine":
        want = (
            7.0
            * (z / np.linalg.norm(z, axis=1, keepdims=True))
            @ (centred / np.linalg.norm(centred, axis=1, keepdims=True)).T
        )
    else:
        sq = ((z[:, None, :] - centred[None]) ** 2).sum(axis=2)
        want = -3.5 * sq + 3.5 * (z**2).sum(axis=1, keepdims=True)  # the class-independent term is dropped
        assert np.array_equal(head.logits(test).argmax(1), sq.argmin(1))  # nearest mean wins
    np.testing.assert_allclose(head.logits(test), want, atol=1e-10)


def test_scale_fit_finds_the_log_loss_minimum():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 4))
    y = (a + rng.gumbel(size=a.shape) / 2).argmax(axis=1)
    s = fit_scale(a, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(50), 4000))
    losses = [-np.mean(log_softmax(g * a)[np.arange(200), y]) for g in grid]
    assert s == pytest.approx(grid[int(np.argmin(losses))], rel=0.01)


def test_scale_is_fitted_on_val_then_by_leave_one_out_then_default():
    f, y = blobs(n=60, dim=5, classes=3, spread=3.0)
    stats = class_stats(unit_features(f), y, num_classes=3)
    exact = (unit_features(f), y, stats)
    assert fit_prototype(stats=stats, private=False, val=(f[:10], y[:10]), exact=exact).scale.method == "val"
    assert fit_prototype(stats=stats, private=False, exact=exact).scale.method == "loo"
    assert fit_prototype(stats=stats, private=True).scale.method == "default"
    assert fit_prototype(stats=stats, private=True).scale.scale == DEFAULT_SCALE["cosine"]


def test_leave_one_out_scale_is_not_fooled_by_tiny_classes():
    # With 3 examples per class, each in-sample mean is a third made of the example itself: an in-sample fit
    # would be far more confident than leave-one-out, which sees each example with its class mean
    # reduced to the other two.
    f, y = blobs(n=12, dim=40, classes=4, spread=8.0, seed=0)
    u = unit_features(f)
    stats = class_stats(u, y, num_classes=4)
    loo = fit_prototype(stats=stats, private=False, exact=(u, y, stats)).scale.scale
    unit = fit_prototype(stats=stats, private=False, scale=1.0).head
    in_sample = fit_scale(unit.logits(f), y)
    assert in_sample == pytest.approx(100.0)  # in-sample the classes look perfectly separated
    assert 1.0 < loo < 20.0


def test_counts_share_minimises_mean_error():
    d = 64
    share = counts_share(d)
    # D·σ_s² + σ_n² with 1/σ_s² = 1 − share, 1/σ_n² = share is minimal there.
    grid = np.linspace(0.001, 0.999, 9999)
    assert share == pytest.approx(grid[np.argmin(d / (1 - grid) + 1 / grid)], abs=1e-3)
