"""Multinomial logistic regression and L-BFGS: against scikit-learn, finite differences, and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from onnxhead_helpers import blobs

from xfer.client.onnxhead.head import softmax
from xfer.client.onnxhead.lbfgs import minimize_lbfgs
from xfer.client.onnxhead.logreg import (
    DEFAULT_L2,
    L2_GRID,
    Standardizer,
    fit_logreg,
    fit_multinomial,
    objective,
    select_l2,
    stratified_folds,
)


def test_lbfgs_minimises_rosenbrock():
    def rosenbrock(x):
        f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
        return f, g

    result = minimize_lbfgs(rosenbrock, np.array([-1.2, 1.0]), gtol=1e-8)
    assert result.converged
    np.testing.assert_allclose(result.x, [1.0, 1.0], atol=1e-5)


def test_gradient_matches_finite_differences():
    x, y = blobs(n=40, dim=6, classes=3, seed=1)
    xt = np.ascontiguousarray(x.T)
    theta = np.random.default_rng(0).normal(size=3 * 7)
    _, grad = objective(theta, xt=xt, y=y, num_classes=3, l2=0.1)
    eps = 1e-6
    numeric = np.array(
        [
            (
                objective(theta + eps * e, xt=xt, y=y, num_classes=3, l2=0.1)[0]
                - objective(theta - eps * e, xt=xt, y=y, num_classes=3, l2=0.1)[0]
            )
            / (2 * eps)
            for e in np.eye(len(theta))
        ]
    )
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


@pytest.mark.parametrize("n,dim,classes,l2", [(50, 20, 5, 1e-2), (600, 16, 4, 1e-3), (300, 8, 2, 1.0)])
def test_matches_scikit_learn(n, dim, classes, l2):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, dim))
    y = (x @ rng.normal(size=(classes, dim)).T + rng.gumbel(size=(n, classes))).argmax(axis=1)
    ours = fit_multinomial(x, y, num_classes=classes, l2=l2, gtol=1e-9)
    # scikit-learn minimises Σ loss + ‖W‖²/(2C): the same optimum as ours for C = 1/(nλ). With two
    # classes it fits one vector w = w₁ − w₂, and our optimum has w₁ = −w₂ = w/2, so C doubles.
    c = (2.0 if classes == 2 else 1.0) / (n * l2)
    ref = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x, y)
    assert ours.converged
    ours_p = softmax(x @ ours.weight.T + ours.bias)
    np.testing.assert_allclose(ours_p, ref.predict_proba(x), atol=1e-5)
    if classes > 2:  # scikit-learn stores a single weight vector for two classes
        np.testing.assert_allclose(ours.weight, ref.coef_, atol=1e-4)


def test_standardisation_is_folded_into_one_linear_layer():
    x, y = blobs(n=90, dim=5, classes=3, seed=2)
    x = x * np.array([1e3, 1.0, 1e-3, 5.0, 0.0]) + 7.0  # wildly different scales and a constant feature
    result = fit_logreg(x, y, num_classes=3, l2=1e-2)
    scaler = Standardizer.fit(x)
    direct = fit_multinomial(scaler.apply(x), y, num_classes=3, l2=1e-2)
    np.testing.assert_allclose(result.head.logits(x), scaler.apply(x) @ direct.weight.T + direct.bias, atol=1e-8)
    assert result.head.steps == () and result.head.is_finite()


def test_separable_data_stays_finite_and_fits():
    x, y = blobs(n=30, dim=4, classes=3, spread=0.01)
    result = fit_logreg(x, y, num_classes=3, l2=1e-5)
    assert result.head.is_finite() and result.converged
    assert np.mean(result.head.logits(x).argmax(axis=1) == y) == 1.0


def test_l2_is_chosen_by_cross_validation_or_on_val():
    x, y = blobs(n=200, dim=30, classes=4, spread=4.0, seed=3)
    picked = select_l2(x, y, num_classes=4)
    assert picked.method == "cv-5" and picked.l2 in L2_GRID
    assert picked.scores[picked.l2] == min(picked.scores.values())
    xv, yv = blobs(n=100, dim=30, classes=4, spread=4.0, seed=3)
    on_val = select_l2(x, y, num_classes=4, val=(xv, yv))
    assert on_val.method == "val" and on_val.scores[on_val.l2] == min(on_val.scores.values())


def test_noisy_high_dimensional_data_gets_more_regularisation_than_clean_data():
    clean = select_l2(*blobs(n=400, dim=10, classes=3, spread=0.5, seed=4), num_classes=3)
    noisy = select_l2(*blobs(n=40, dim=60, classes=3, spread=6.0, seed=4), num_classes=3)
    assert noisy.l2 > clean.l2


def test_single_example_classes_fall_back_to_the_default():
    x, y = blobs(n=3, dim=4, classes=3)
    assert select_l2(x, y, num_classes=3).method == "default"
    assert fit_logreg(x, y, num_classes=3).selection.l2 == DEFAULT_L2


def test_large_training_sets_hold_out_one_fold():
    x, y = blobs(n=6000, dim=4, classes=3, seed=5)
    assert select_l2(x, y, num_classes=3).method == "holdout-1/5"


def test_stratified_folds_balance_every_class():
    y = np.repeat(np.arange(3), [10, 7, 5])
    fold = stratified_folds(y, folds=5, seed=0)
    for c in range(3):
        counts = np.bincount(fold[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.bincount(fold).max() - np.bincount(fold).min() <= 1
