"""Exact statistics of the audits, numpy and math only (no scipy, no torch).

- ROC AUC of membership scores (Mann-Whitney, ties count one half) with a
  DeLong confidence interval;
- TPR at a fixed FPR (the threshold admits at most that fraction of
  non-members) with a Clopper-Pearson interval on the TPR;
- binomial tails computed in log space, exact for the sizes audits use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval."""

    value: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class TprPoint:
    """The TPR an attack reaches while its FPR on non-members stays at or below `fpr`."""

    fpr: float
    tpr: Interval
    #: The FPR the chosen threshold actually has on the non-members (<= fpr).
    achieved_fpr: float
    #: Members above the threshold (the TPR's numerator) out of `members`.
    true_positives: int
    members: int


def _finite_scores(scores: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"no {name} scores: an audit needs members and non-members")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} scores contain NaN or infinity; the attack failed on some examples")
    return array


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # Boundaries of runs of equal values.
    starts = np.r_[0, np.nonzero(np.diff(sorted_values))[0] + 1]
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def roc_auc(members: np.ndarray, non_members: np.ndarray, *, confidence: float = 0.95) -> Interval:
    """AUC of `members` scoring above `non_members`, with DeLong's (1988) normal-approximation interval.

    Higher scores mean "more likely a member". Ties count one half. The
    interval is clipped to [0, 1]; with one example on a side its variance
    term is 0 (DeLong needs at least two per side to say anything).
    """
    x = _finite_scores(members, "member")
    y = _finite_scores(non_members, "non-member")
    n1, n2 = len(x), len(y)
    ranks = _midranks(np.concatenate([x, y]))
    ranks_x, ranks_y = _midranks(x), _midranks(y)
    auc = (ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n2)
    # DeLong's structural components through ranks (Sun & Xu 2014): V10 per member, V01 per non-member.
    v10 = (ranks[:n1] - ranks_x) / n2
    v01 = 1.0 - (ranks[n1:] - ranks_y) / n1
    variance = (np.var(v10, ddof=1) / n1 if n1 > 1 else 0.0) + (np.var(v01, ddof=1) / n2 if n2 > 1 else 0.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    half = z * math.sqrt(max(float(variance), 0.0))
    return Interval(value=float(auc), low=max(0.0, float(auc) - half), high=min(1.0, float(auc) + half))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, *, fpr: float, confidence: float = 0.95) -> TprPoint:
    """The largest TPR whose threshold flags at most `fpr` of the non-members, with a Clopper-Pearson interval.

    A member counts as flagged when its score is strictly above the
    threshold; the threshold is the score of the non-member at rank
    floor(fpr * n) from the top, so ties never push the FPR above `fpr`.
    The interval covers the sampling of members only (the threshold is
    taken as given), which is how the literature reports it.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    x = _finite_scores(members, "member")
    y = np.sort(_finite_scores(non_members, "non-member"))[::-1]
    allowed = math.floor(fpr * len(y) + 1e-9)
    # Flag scores strictly above the (allowed+1)-th highest non-member score: at most `allowed` false positives.
    threshold = y[allowed] if allowed < len(y) else -math.inf
    false_positives = int(np.sum(y > threshold))
    hits = int(np.sum(x > threshold))
    low, high = clopper_pearson(hits, len(x), confidence=confidence)
    return TprPoint(
        fpr=fpr,
        tpr=Interval(value=hits / len(x), low=low, high=high),
        achieved_fpr=false_positives / len(y),
        true_positives=hits,
        members=len(x),
    )


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def binom_pmf(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) = k]."""
    if k < 0 or k > n:
        return 0.0
    return math.exp(_log_pmf(k, n, p))


def _log_sum(logs: list[float]) -> float:
    finite = [v for v in logs if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


def binom_sf(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) >= k] (1 for k <= 0, 0 for k > n), summed exactly in log space."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, math.exp(_log_sum([_log_pmf(i, n, p) for i in range(k, n + 1)])))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) <= k]."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, math.exp(_log_sum([_log_pmf(i, n, p) for i in range(0, k + 1)])))


def _bisect(predicate_true_low: Callable[[float], bool], *, iterations: int = 60) -> float:
    """The boundary in [0, 1] between where `predicate` holds (below) and where it does not (above)."""
    low, high = 0.0, 1.0
    for _ in range(iterations):
        mid = (low + high) / 2.0
        if predicate_true_low(mid):
            low = mid
        else:
            high = mid
    return low if predicate_true_low(low) else 0.0


def clopper_pearson(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion.

    Lower end: the p with P[Bin(n, p) >= k] = (1-c)/2 (0 for k = 0); upper
    end: the p with P[Bin(n, p) <= k] = (1-c)/2 (1 for k = n). Found by
    bisection on the exact tails, so it never depends on a beta quantile
    approximation.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    low = 0.0 if successes == 0 else _bisect(lambda p: binom_sf(successes, trials, p) <= alpha)
    if successes == trials:
        high = 1.0
    else:
        # binom_cdf(k, n, p) falls as p grows: the upper end is the largest p where it is still >= alpha.
        high = _bisect(lambda p: binom_cdf(successes, trials, p) >= alpha)
    return low, high
