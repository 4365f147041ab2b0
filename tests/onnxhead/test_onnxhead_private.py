"""The private fits: noise calibrated to the accountant, clipping bounds, ε spent == target."""

from __future__ import annotations

import numpy as np
import pytest
from onnxhead_helpers import blobs

from xfer.client.dp_delta import default_delta
from xfer.client.onnxhead.accounting import GaussianAccountant, split_budget
from xfer.client.onnxhead.errors import HeadPrivacyError
from xfer.client.onnxhead.private import (
    NoisyGDConfig,
    PrivacyConfig,
    clipped_gradient_sum,
    private_logreg,
    private_prototype,
)
from xfer.client.onnxhead.stats import class_stats, counts_share, privatise, unit_features


def test_default_delta_depends_on_the_bucket_only():
    assert default_delta(64) == 1e-5
    assert default_delta(65536) == pytest.approx(65536**-1.1)
    assert default_delta(65536) < 1 / 40000**1.1  # below 1/n^1.1 for every n in the bucket


def test_noise_has_the_standard_deviation_the_accountant_assumes():
    f, y = blobs(n=50, dim=16, classes=3)
    u = unit_features(f)
    exact = class_stats(u, y, num_classes=3)
    share = counts_share(16)
    noise = split_budget(epsilon=2.0, delta=1e-5, shares={"s": (1 - share, 1), "c": (share, 1)})
    rng = np.random.default_rng(0)
    draws = [privatise(exact, sums_noise=noise["s"], counts_noise=noise["c"], rng=rng) for _ in range(400)]
    sums = np.stack([d.sums - exact.sums for d in draws])
    counts = np.stack([d.counts - exact.counts for d in draws])
    assert sums.std() == pytest.approx(noise["s"], rel=0.02)  # 400·48 draws
    assert counts.std() == pytest.approx(noise["c"], rel=0.1)  # 400·3 draws
    assert abs(sums.mean()) < 0.05 * noise["s"]


def test_each_example_sensitivity_is_one_because_features_are_unit_normalised():
    f, _ = blobs(n=30, dim=8, classes=2)
    f[0] *= 1e6
    f[1] = 0.0  # a dead feature vector stays zero, norm 0 <= 1
    norms = np.linalg.norm(unit_features(f), axis=1)
    assert np.all(norms <= 1 + 1e-12) and norms[1] == 0.0


def test_clipped_gradient_sum_equals_the_sum_of_clipped_per_example_gradients():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(25, 6)) * 3
    y = rng.integers(0, 4, 25)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    got_w, got_b = clipped_gradient_sum(z, y, weight=w, bias=b, clip=0.7)
    want_w, want_b = np.zeros_like(w), np.zeros_like(b)
    for zi, yi in zip(z, y):
        logits = w @ zi + b
        p = np.exp(logits - logits.max())
        p /= p.sum()
        p[yi] -= 1.0
        gw, gb = np.outer(p, zi), p
        norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
        scale = min(1.0, 0.7 / norm)
        assert np.sqrt(np.sum((scale * gw) ** 2) + np.sum((scale * gb) ** 2)) <= 0.7 + 1e-12
        want_w += scale * gw
        want_b += scale * gb
    np.testing.assert_allclose(got_w, want_w, atol=1e-12)
    np.testing.assert_allclose(got_b, want_b, atol=1e-12)


@pytest.mark.parametrize("head", ["prototype", "logreg"])
def test_epsilon_spent_is_the_target_and_large_epsilon_recovers_the_clean_fit(head):
    f, y = blobs(n=300, dim=10, classes=3, spread=2.0)
    u = unit_features(f)
    results = {}
    for epsilon in (0.5, 500.0):
        acc = GaussianAccountant()
        config = PrivacyConfig(epsilon=epsilon, noise_seed=3)
        if head == "prototype":
            fitted = private_prototype(
                u,
                y,
                num_classes=3,
                metric="cosine",
                scale=None,
                val=None,
                epsilon=epsilon,
                delta=1e-5,
                config=config,
                accountant=acc,
            ).head
        else:
            fitted = private_logreg(
                u,
                y,
                num_classes=3,
                gd=NoisyGDConfig(steps=50),
                epsilon=epsilon,
                delta=1e-5,
                config=config,
                accountant=acc,
            )
        assert acc.epsilon(1e-5) == pytest.approx(epsilon, rel=1e-9)
        assert fitted.is_finite()
        results[epsilon] = np.mean(fitted.logits(f).argmax(axis=1) == y)
    assert results[500.0] >= 0.95  # the blobs are well separated: almost no noise, almost no errors


def test_noise_is_fresh_unless_a_seed_is_given():
    f, y = blobs(n=40, dim=6, classes=2)
    u = unit_features(f)

    def fit(seed):
        return private_prototype(
            u,
            y,
            num_classes=2,
            metric="euclidean",
            scale=1.0,
            val=None,
            epsilon=1.0,
            delta=1e-5,
            config=PrivacyConfig(epsilon=1.0, noise_seed=seed),
            accountant=GaussianAccountant(),
        ).head.weight

    assert not np.array_equal(fit(None), fit(None))
    assert np.array_equal(fit(5), fit(5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0},
        {"epsilon": float("inf")},
        {"epsilon": 1.0, "delta": 1.0},
        {"epsilon": 1.0, "max_grad_norm": 0.0},
    ],
)
def test_bad_privacy_configs_raise(kwargs):
    with pytest.raises(HeadPrivacyError):
        PrivacyConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"lr": 0.0}, {"stats_share": 1.0}])
def test_bad_gradient_descent_configs_raise(kwargs):
    with pytest.raises(HeadPrivacyError):
        NoisyGDConfig(**kwargs)
