"""The epsilon lower bound of a one-run canary audit (Steinke, Nasr & Jagielski, NeurIPS 2023).

Setting: m canaries, each included in training independently with
probability 1/2. After training, the auditor guesses "in" or "out" for r of
them (abstaining on the rest) and gets v right. Under the null hypothesis
that training is (eps, delta)-DP, their Theorem 5.2 bounds the chance of v
or more correct guesses by

    P[W >= v] <= P[Bin(r, q) >= v] + 2 m delta * max_{i=1..v} P[v > Bin(r, q) >= v - i] / i,
    q = e^eps / (1 + e^eps),

which is their Algorithm (p_value_DP_audit). The eps lower bound at
confidence 1 - p is the largest eps whose p-value is still below p: the
algorithm is *not* (eps, delta)-DP for any smaller eps, except with
probability p. The delta term is part of the bound and is never dropped
(dropping it overstates eps when delta > 0).

Choosing the number of guesses after looking at the scores would void the
guarantee; `best_lower_bound` instead tries a fixed list of guess counts and
divides p among them (Bonferroni), so the reported bound holds at the stated
confidence whichever count wins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from xfer.models.audit.stats import binom_pmf, binom_sf

#: Guess counts tried, as (fraction of m guessed "in", fraction guessed "out"); fixed before any score is seen.
GUESS_FRACTIONS: tuple[tuple[float, float], ...] = (
    (0.01, 0.0),
    (0.02, 0.0),
    (0.05, 0.0),
    (0.1, 0.0),
    (0.2, 0.0),
    (0.01, 0.01),
    (0.02, 0.02),
    (0.05, 0.05),
    (0.1, 0.1),
    (0.25, 0.25),
)


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses right] under (epsilon, delta)-DP (Steinke et al. 2023, Theorem 5.2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # the accuracy of eps-DP randomised response
    beta = binom_sf(v, r, q)
    alpha = 0.0
    running = 0.0  # P[v > Bin(r, q) >= v - i]
    for i in range(1, v + 1):
        running += binom_pmf(v - i, r, q)
        alpha = max(alpha, running / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, p: float, iterations: int = 40) -> float:
    """The largest eps (to bisection precision, rounded down) whose p-value is below `p`; 0 if none.

    The bound returned always has p_value(eps) < p, so it errs low, never high.
    """
    if not 0 < p < 1:
        raise ValueError(f"p (1 - confidence) must be in (0, 1), got {p}")
    if p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= p:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m=m, r=r, v=v, epsilon=high, delta=delta) < p:
        low, high = high, high * 2
        if high > 1e4:  # every guess right with many guesses: any finite eps is rejected
            return low
    for _ in range(iterations):
        mid = (low + high) / 2
        if p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < p:
            low = mid
        else:
            high = mid
    return low


@dataclasses.dataclass(frozen=True)
class OneRunBound:
    """The best of the pre-declared guess counts, with its numbers."""

    epsilon_lower_bound: float
    canaries: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    #: How many guess counts were tried (p was divided among them).
    hypotheses: int


def best_lower_bound(
    *,
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[tuple[float, float]] = GUESS_FRACTIONS,
) -> OneRunBound:
    """The eps lower bound from canary `scores` (higher: more likely included) and the true inclusion coins.

    For each (in, out) fraction the highest-scoring canaries are guessed "in"
    and the lowest "out"; the p of 1 - `confidence` is split evenly among
    the fractions, and the largest resulting bound is returned.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if m == 0 or len(included) != m:
        raise ValueError("need one score and one inclusion coin per canary")
    if not np.all(np.isfinite(scores)):
        raise ValueError("canary scores contain NaN or infinity")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    # A seeded tie-break: equal scores must not be ordered by inclusion (np.argsort is stable on index order).
    tie_break = np.random.default_rng(0).permutation(m)
    order = np.lexsort((tie_break, -scores))
    p = (1.0 - confidence) / len(fractions)
    best = OneRunBound(
        epsilon_lower_bound=0.0,
        canaries=m,
        guesses=0,
        correct=0,
        confidence=confidence,
        delta=delta,
        hypotheses=len(fractions),
    )
    for frac_in, frac_out in fractions:
        k_in = int(math.floor(frac_in * m))
        k_out = int(math.floor(frac_out * m))
        if k_in + k_out == 0 or k_in + k_out > m:
            continue
        correct = int(included[order[:k_in]].sum()) + int((~included[order[m - k_out :]]).sum() if k_out else 0)
        bound = epsilon_lower_bound(m=m, r=k_in + k_out, v=correct, delta=delta, p=p)
        if bound > best.epsilon_lower_bound:
            best = dataclasses.replace(best, epsilon_lower_bound=bound, guesses=k_in + k_out, correct=correct)
    return best
