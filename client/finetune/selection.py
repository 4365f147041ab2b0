"""Private hyperparameter selection: Papernot & Steinke (ICLR 2022), Theorem 2.

A private search runs K trials, K drawn from a truncated negative binomial
distribution D(η, γ) independently of the data, each trial a uniformly
random grid cell trained with DP-SGD on one part of the training set and
scored by a noisy count of correct predictions on the other part; only the
best trial (its model and its noisy score) is released. If one trial Q is
(λ, ε(λ))-RDP at every order λ, the selection is (λ, ε'(λ))-RDP with

    ε'(λ) = ε(λ) + (1+η)·min_λ̂ [ (1 − 1/λ̂)·ε(λ̂) + log(1/γ)/λ̂ ] + log(E[K])/(λ − 1)

(then monotonicity in λ), whatever K turns out to be. A trial's training
part and held-out part are disjoint (each example is assigned to one of
them independently of the others), so an example either enters DP-SGD or
the count, never both: ε(λ) = max(ε_DP-SGD(λ), ε_count(λ)). The count's
noise is chosen so that ε_count ≤ ε_DP-SGD at every order: the score costs
nothing on top of training. The RDP curve is converted to (ε, δ) with
Opacus' conversion. This module holds only the arithmetic (numpy + Opacus'
RDP analysis), so the tests can check it against the formulas.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from xfer.client.finetune.errors import PrivacyError

#: Rényi orders: integers (the subsampled Gaussian's RDP has a fast closed form there; fractional orders
#: need a slow series and change the (ε, δ) conversion by less than a percent in this regime).
ORDERS = tuple(float(o) for o in [*range(2, 65), 80, 96, 128, 192, 256])


def tnb_mean(gamma: float, shape: float) -> float:
    """E[K] of the truncated negative binomial D(η=shape, γ) on {1, 2, ...} (Definition 1)."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if gamma == 1:
        return 1.0
    if shape == 0:  # logarithmic distribution
        return (1 / gamma - 1) / math.log(1 / gamma)
    if shape == 1:  # geometric distribution
        return 1 / gamma
    return shape * (1 - gamma) / (gamma * (1 - gamma**shape))


def tnb_gamma(mean: float, shape: float) -> float:
    """The γ of D(η=shape, γ) whose mean is `mean` (bisection; the mean falls as γ grows)."""
    if mean < 1:
        raise ValueError(f"the mean number of trials must be >= 1, got {mean}")
    if mean == 1:
        return 1.0
    lo, hi = 1e-12, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if tnb_mean(mid, shape) > mean:
            lo = mid
        else:
            hi = mid
    return lo  # the smaller γ: a mean at least as large as asked, the conservative side


def tnb_pmf(k_max: int, *, gamma: float, shape: float) -> np.ndarray:
    """P[K = k] for k = 1..k_max: proportional to (1−γ)^k · Π_{l<k} (l+η)/(l+1)."""
    k = np.arange(1, k_max + 1)
    # log Π_{l=0}^{k-1} (l+η)/(l+1) = lgamma(k+η) − lgamma(η) − lgamma(k+1); η = 0 is the logarithmic limit.
    if shape == 0:
        log_weight = -np.log(k)
    else:
        log_weight = np.array([math.lgamma(i + shape) - math.lgamma(shape) - math.lgamma(i + 1) for i in k])
    log_p = k * math.log1p(-gamma) + log_weight if gamma < 1 else np.where(k == 1, 0.0, -np.inf)
    p = np.exp(log_p - np.max(log_p))
    return p / p.sum()


def sample_trials(rng: np.random.Generator, *, mean: float, shape: float) -> int:
    """Draws K ~ D(η=shape, γ) with E[K] = mean (the tail past 100x the mean is below 1e-12 and cut)."""
    gamma = tnb_gamma(mean, shape)
    if gamma >= 1:
        return 1
    k_max = int(max(10, 100 * mean))
    return int(rng.choice(np.arange(1, k_max + 1), p=tnb_pmf(k_max, gamma=gamma, shape=shape)))


def repeat_and_select_rdp(
    rdp: np.ndarray, *, mean: float, shape: float, orders: tuple[float, ...] = ORDERS
) -> np.ndarray:
    """ε'(λ) of releasing the best of K ~ D(η, γ) runs of a mechanism whose RDP curve is `rdp`."""
    orders_a = np.asarray(orders, dtype=np.float64)
    rdp = np.asarray(rdp, dtype=np.float64)
    gamma = tnb_gamma(mean, shape)
    constant = (1 + shape) * float(np.min((1 - 1 / orders_a) * rdp + math.log(1 / gamma) / orders_a))
    out = rdp + math.log(mean) / (orders_a - 1) + constant
    # RDP is monotone in the order: a bound at a higher order holds at every lower one.
    return np.minimum.accumulate(out[::-1])[::-1]


def _dpsgd_rdp(sample_rate: float, sigma: float, steps: int, orders: tuple[float, ...]) -> np.ndarray:
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=list(orders)))


def rdp_to_epsilon(rdp: np.ndarray, *, delta: float, orders: tuple[float, ...] = ORDERS) -> float:
    """(ε, δ) from an RDP curve (Opacus' conversion)."""
    import warnings

    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # While σ is being solved, trial values far from the answer put the optimum at an edge order.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = get_privacy_spent(orders=list(orders), rdp=list(rdp), delta=delta)
    return float(eps)


@dataclasses.dataclass(frozen=True)
class SelectionPlan:
    """The noise of a private search, solved before anything trains."""

    noise_multiplier: float  # DP-SGD σ of every trial
    score_noise: float  # std of the Gaussian noise on each trial's count of correct held-out predictions
    sample_rate: float
    steps: int
    mean_trials: float
    shape: float
    delta: float
    epsilon: float  # of the whole selection, at `delta`
    trial_epsilon: float  # of one trial alone, at `delta` (for comparison)


def score_noise_for(sample_rate: float, sigma: float, steps: int, orders: tuple[float, ...] = ORDERS) -> float:
    """The smallest Gaussian count noise whose RDP λ/(2s²) stays below DP-SGD's at every order."""
    return _score_noise(_dpsgd_rdp(sample_rate, sigma, steps, orders), orders)


def _score_noise(rdp: np.ndarray, orders: tuple[float, ...]) -> float:
    return float(math.sqrt(max(o / (2 * r) for o, r in zip(orders, rdp) if r > 0)))


def selection_epsilon(
    *, sigma: float, sample_rate: float, steps: int, mean: float, shape: float, delta: float
) -> tuple[float, float, float]:
    """(ε of the selection, ε of one trial, score noise) for DP-SGD noise `sigma`."""
    rdp_train = _dpsgd_rdp(sample_rate, sigma, steps, ORDERS)
    score = _score_noise(rdp_train, ORDERS)
    rdp_score = np.asarray(ORDERS) / (2 * score**2)
    trial = np.maximum(rdp_train, rdp_score)  # disjoint parts: parallel, not sequential, composition
    total = repeat_and_select_rdp(trial, mean=mean, shape=shape)
    return rdp_to_epsilon(total, delta=delta), rdp_to_epsilon(trial, delta=delta), score


@functools.lru_cache(maxsize=64)
def plan_selection(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, mean: float, shape: float
) -> SelectionPlan:
    """Solves the DP-SGD σ (and the score noise) that keeps the whole selection within (ε, δ)."""
    lo, hi = 0.3, 0.3
    while (
        selection_epsilon(sigma=hi, sample_rate=sample_rate, steps=steps, mean=mean, shape=shape, delta=delta)[0]
        > epsilon
    ):
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise PrivacyError(
                f"a private search cannot fit epsilon={epsilon} at delta={delta:.3g} with "
                f"{mean:g} trials on average: selecting among trials alone costs more. Raise "
                f"epsilon, lower the number of trials, or skip --search"
            )
    if hi == 0.3:
        lo = 0.05
    while hi - lo > 1e-3 * hi:  # σ to 0.1 %: rounding up keeps the target
        mid = (lo + hi) / 2
        if (
            selection_epsilon(sigma=mid, sample_rate=sample_rate, steps=steps, mean=mean, shape=shape, delta=delta)[0]
            > epsilon
        ):
            lo = mid
        else:
            hi = mid
    eps, trial_eps, score = selection_epsilon(
        sigma=hi, sample_rate=sample_rate, steps=steps, mean=mean, shape=shape, delta=delta
    )
    return SelectionPlan(
        noise_multiplier=hi,
        score_noise=score,
        sample_rate=sample_rate,
        steps=steps,
        mean_trials=mean,
        shape=shape,
        delta=delta,
        epsilon=eps,
        trial_epsilon=trial_eps,
    )
