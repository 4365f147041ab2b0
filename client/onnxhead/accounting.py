"""Exact privacy accounting for compositions of Gaussian mechanisms, in numpy and `math` only.

Every private release the head fit makes is a Gaussian mechanism: a
statistic with L2 sensitivity Δ under adding or removing one example, plus
N(0, σ²·I) noise, i.e. noise multiplier z = σ/Δ. Such a release is
μ-Gaussian-differentially private with μ = 1/z (Dong, Roth & Su 2019), and
an adaptive composition of releases with μ₁, μ₂, ... is exactly
sqrt(Σ μᵢ²)-GDP: the privacy-loss distributions of Gaussians compose into
a Gaussian, so nothing is lost in composing (no subsampling is involved).
A μ-GDP mechanism is (ε, δ)-DP exactly for

    δ(ε) = Φ(−ε/μ + μ/2) − e^ε · Φ(−ε/μ − μ/2)

(the analytic Gaussian mechanism, Balle & Wang 2018, Theorem 8), which is
the tight conversion: no smaller ε holds at that δ. `epsilon_for` inverts
it in ε, `mu_for` in μ; both bisect a monotone function and round towards
privacy (the ε returned is never below the true one, the μ never above).
The tests check this against a numerical integration of the privacy-loss
distribution and against Opacus' PRV and RDP accountants.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from xfer.client.onnxhead.errors import HeadPrivacyError

#: Bisection stops when the bracket is this narrow (relative).
_REL_TOL = 1e-12
_MAX_EPSILON = 1e4


def _phi(x: float) -> float:
    """Standard normal CDF, accurate in the far tails (erfc, not 1 - erf)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def delta_for(mu: float, epsilon: float) -> float:
    """δ of a μ-GDP mechanism at ε (Balle & Wang 2018); 0 <= δ < 1."""
    if mu <= 0:
        return 0.0
    if epsilon < 0:
        raise HeadPrivacyError(f"epsilon must be non-negative, got {epsilon}")
    first = _phi(-epsilon / mu + mu / 2)
    tail = _phi(-epsilon / mu - mu / 2)
    # e^ε · Φ(·) in log space: e^ε alone overflows for ε > 709 while the product stays tiny.
    second = math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0
    return max(0.0, first - second)


def epsilon_for(mu: float, delta: float) -> float:
    """The smallest ε at which a μ-GDP mechanism is (ε, δ)-DP (rounded up, never down)."""
    _check_delta(delta)
    if not math.isfinite(mu) or mu < 0:
        raise HeadPrivacyError(f"mu must be finite and non-negative, got {mu}")
    if delta_for(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_for(mu, hi) > delta:
        lo, hi = hi, hi * 2
        if hi > _MAX_EPSILON:
            raise HeadPrivacyError(f"mu={mu:.4g} gives epsilon above {_MAX_EPSILON:g} at delta={delta:.3g}")
    while hi - lo > _REL_TOL * hi:
        mid = (lo + hi) / 2
        if delta_for(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def mu_for(epsilon: float, delta: float) -> float:
    """The largest μ whose μ-GDP mechanism is (ε, δ)-DP (rounded down, never up)."""
    _check_delta(delta)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise HeadPrivacyError(f"target epsilon must be positive and finite, got {epsilon}")
    lo, hi = 0.0, 1.0
    while delta_for(hi, epsilon) <= delta:
        lo, hi = hi, hi * 2
    while hi - lo > _REL_TOL * hi:
        mid = (lo + hi) / 2
        if delta_for(mid, epsilon) <= delta:
            lo = mid
        else:
            hi = mid
    if lo <= 0:
        raise HeadPrivacyError(f"cannot reach epsilon={epsilon:g} at delta={delta:.3g}")
    return lo


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise HeadPrivacyError(f"delta must be in (0, 1), got {delta!r}")


@dataclasses.dataclass(frozen=True)
class GaussianRelease:
    """`repetitions` Gaussian mechanisms, each with noise std = noise_multiplier × L2 sensitivity."""

    name: str
    noise_multiplier: float
    repetitions: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise HeadPrivacyError(f"{self.name}: noise multiplier must be positive, got {self.noise_multiplier}")
        if self.repetitions < 1:
            raise HeadPrivacyError(f"{self.name}: repetitions must be at least 1, got {self.repetitions}")

    @property
    def mu(self) -> float:
        """The GDP parameter of all repetitions together: sqrt(repetitions) / noise_multiplier."""
        return math.sqrt(self.repetitions) / self.noise_multiplier


class GaussianAccountant:
    """Records the Gaussian releases of one run; ε at any δ from their exact composition."""

    def __init__(self) -> None:
        self.releases: list[GaussianRelease] = []

    def record(self, release: GaussianRelease) -> None:
        """Adds one (possibly repeated) release to the run's history."""
        self.releases.append(release)

    @property
    def mu(self) -> float:
        """GDP parameter of everything recorded: sqrt(Σ μᵢ²)."""
        return math.sqrt(sum(r.mu**2 for r in self.releases))

    def epsilon(self, delta: float) -> float:
        """ε spent at δ (0 when nothing was released)."""
        return epsilon_for(self.mu, delta) if self.releases else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able history (for metrics.json)."""
        return {"mu": self.mu, "releases": [dataclasses.asdict(r) for r in self.releases]}


def split_budget(*, epsilon: float, delta: float, shares: Mapping[str, tuple[float, int]]) -> dict[str, float]:
    """Noise multipliers that spend exactly (ε, δ) in total, split by share of μ².

    `shares` maps a release name to (share, repetitions); shares are positive
    and sum to 1. Release i gets μᵢ² = shareᵢ · μ², so Σ μᵢ² = μ², and each
    of its repetitions the noise multiplier sqrt(repetitions / (shareᵢ · μ²)).
    """
    total = sum(share for share, _ in shares.values())
    if not shares or any(share <= 0 for share, _ in shares.values()) or abs(total - 1.0) > 1e-9:
        raise HeadPrivacyError(f"budget shares must be positive and sum to 1, got {dict(shares)}")
    mu = mu_for(epsilon, delta)
    return {name: math.sqrt(reps / (share * mu**2)) for name, (share, reps) in shares.items()}
