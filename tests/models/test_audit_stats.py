"""Exact statistics of the audits: AUC with DeLong intervals, TPR at FPR, Clopper-Pearson, the one-run bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from xfer.models.audit import one_run, stats


def test_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    members = rng.integers(0, 5, 40).astype(float)
    non_members = rng.integers(0, 4, 30).astype(float)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in members for b in non_members]
    assert stats.roc_auc(members, non_members).value == pytest.approx(np.mean(pairs))


def test_delong_interval_covers_and_shrinks_with_more_examples():
    rng = np.random.default_rng(1)
    small = stats.roc_auc(rng.normal(0.5, 1, 50), rng.normal(0, 1, 50))
    large = stats.roc_auc(rng.normal(0.5, 1, 5000), rng.normal(0, 1, 5000))
    true_auc = sps.norm.cdf(0.5 / math.sqrt(2))
    assert large.low <= true_auc <= large.high
    assert (large.high - large.low) < (small.high - small.low) / 5


def test_delong_interval_has_nominal_coverage_on_random_scores():
    rng = np.random.default_rng(2)
    true_auc = sps.norm.cdf(0.3 / math.sqrt(2))
    hits = 0
    for _ in range(200):
        interval = stats.roc_auc(rng.normal(0.3, 1, 200), rng.normal(0, 1, 200))
        hits += interval.low <= true_auc <= interval.high
    assert 0.90 <= hits / 200 <= 0.99


def test_tpr_at_fpr_never_exceeds_the_fpr_on_non_members():
    rng = np.random.default_rng(3)
    non_members = np.round(rng.normal(0, 1, 1000), 1)  # many ties
    members = np.round(rng.normal(1, 1, 1000), 1)
    for fpr in (0.001, 0.01, 0.1):
        point = stats.tpr_at_fpr(members, non_members, fpr=fpr)
        assert point.achieved_fpr <= fpr
        assert point.tpr.low <= point.tpr.value <= point.tpr.high
    assert (
        stats.tpr_at_fpr(members, non_members, fpr=0.1).tpr.value
        > stats.tpr_at_fpr(members, non_members, fpr=0.001).tpr.value
    )


def test_perfect_separation_and_blind_guessing():
    assert stats.roc_auc(np.arange(10, 20), np.arange(10)).value == 1.0
    assert stats.tpr_at_fpr(np.arange(10, 20), np.arange(10), fpr=0.01).tpr.value == 1.0
    same = stats.roc_auc(np.zeros(10), np.zeros(10))
    assert same.value == 0.5


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (7, 1000), (500, 1000)])
def test_clopper_pearson_matches_the_beta_quantiles(k, n):
    low, high = stats.clopper_pearson(k, n, confidence=0.95)
    expect_low = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
    expect_high = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
    assert low == pytest.approx(expect_low, abs=1e-9)
    assert high == pytest.approx(expect_high, abs=1e-9)


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        stats.roc_auc(np.array([0.1, np.nan]), np.array([0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        one_run.best_lower_bound(scores=np.array([np.nan, 1.0]), included=np.array([True, False]), delta=1e-5)


def _reference_p_value(m, r, v, eps, delta):
    """Steinke et al.'s published algorithm, with scipy's binomial (the reference we check against)."""
    q = 1 / (1 + math.exp(-eps))
    beta = sps.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += sps.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (1000, 100, 80, 1.0, 1e-5),
        (1000, 100, 80, 2.0, 0.0),
        (200, 50, 50, 4.0, 1e-3),
        (100, 10, 3, 0.5, 1e-5),
    ],
)
def test_p_value_is_the_papers_algorithm(m, r, v, eps, delta):
    assert one_run.p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(
        _reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15
    )


def test_the_delta_term_only_lowers_the_bound():
    without = one_run.epsilon_lower_bound(m=10000, r=1000, v=900, delta=0.0, p=0.05)
    with_delta = one_run.epsilon_lower_bound(m=10000, r=1000, v=900, delta=1e-5, p=0.05)
    assert 0 < with_delta < without
    # The returned bound is always rejected at level p: it errs low.
    assert one_run.p_value(m=10000, r=1000, v=900, epsilon=with_delta, delta=1e-5) < 0.05


def test_chance_guessing_gives_no_bound_and_perfect_guessing_a_large_one():
    assert one_run.epsilon_lower_bound(m=1000, r=100, v=50, delta=1e-5, p=0.05) == 0.0
    assert one_run.epsilon_lower_bound(m=1000, r=100, v=100, delta=0.0, p=0.05) > 2.5


def test_eps_dp_randomised_response_is_never_over_bounded():
    """Canaries whose membership leaks through eps-DP randomised response: the bound stays below eps."""
    rng = np.random.default_rng(5)
    eps = 2.0
    exceed = 0
    for _ in range(15):
        included = rng.random(1000) < 0.5
        truthful = rng.random(1000) < math.exp(eps) / (1 + math.exp(eps))
        scores = np.where(included == truthful, 1.0, -1.0) + rng.normal(0, 1e-3, 1000)
        bound = one_run.best_lower_bound(scores=scores, included=included, delta=0.0, confidence=0.95)
        exceed += bound.epsilon_lower_bound > eps
        assert bound.guesses >= bound.correct
    assert exceed <= 1  # at most ~5 % of runs may exceed at 95 % confidence; Bonferroni makes it rarer
