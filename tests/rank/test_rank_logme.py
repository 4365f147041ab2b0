"""LogME against the evidence written out directly, at its maximum, and as a transferability score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xfer.client.rank.logme import logme


def direct_log_evidence(f: np.ndarray, y: np.ndarray, *, alpha: float, beta: float) -> float:
    """log N(y; 0, F Fᵀ/α + I/β) / n: the marginal likelihood of the Bayesian linear model, no SVD tricks."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return float(-0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y)) / n)


@pytest.mark.parametrize("n, d", [(40, 6), (12, 30)])  # more examples than features, and fewer
def test_per_class_values_are_the_log_evidence_at_its_maximum(n, d):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = np.arange(n) % 3
    fit = logme(f, y)
    for c, value, alpha, beta in zip(range(3), fit.per_class, fit.alphas, fit.betas):
        yc = (y == c).astype(np.float64)
        assert value == pytest.approx(direct_log_evidence(f, yc, alpha=alpha, beta=beta), rel=1e-6, abs=1e-9)
        # A fixed point of the evidence: moving α or β either way does not raise it (beyond the tolerance).
        for da, db in ((1.3, 1), (1 / 1.3, 1), (1, 1.3), (1, 1 / 1.3)):
            assert direct_log_evidence(f, yc, alpha=alpha * da, beta=beta * db) <= value + 1e-3
    assert fit.score == pytest.approx(np.mean(fit.per_class))


def test_features_that_explain_the_labels_score_higher():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 25)
    centres = rng.normal(size=(4, 8)) * 3
    informative = centres[y] + rng.normal(size=(100, 8))
    noise = rng.normal(size=(100, 8)) * 3
    half = np.concatenate([informative[:, :4], noise[:, :4]], axis=1)
    scores = [logme(f, y).score for f in (informative, half, noise)]
    assert scores[0] > scores[1] > scores[2]


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        logme(np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        logme(np.zeros((3, 2)), np.array([0, 1]))
