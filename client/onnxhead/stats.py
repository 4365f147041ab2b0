"""Per-class sufficient statistics of unit-normalised features, exact or privatised.

Both heads start from the same statistics: for uᵢ = fᵢ/‖fᵢ‖ (so ‖uᵢ‖ <= 1
whatever the backbone's scale, and no clipping threshold needs choosing),
the per-class sums S_c = Σ_{yᵢ=c} uᵢ and counts n_c. Adding or removing one
example changes one S_c by a vector of norm <= 1 and one n_c by 1, so each
has L2 sensitivity 1 and the Gaussian mechanism applies directly.

The counts are the label histogram of the client's data and, summed, its
size: released without noise they would pin n down exactly, which the
report rules forbid and DP does not allow. So under DP the counts get
noise too, and everything downstream uses only the noisy values: counts
are floored at 1 and class means projected back onto the unit ball (true
means of unit vectors lie in it), both post-processing. The budget split
between sums (D numbers each) and counts (one each) minimises the expected
squared error of the class means, D·σ_s² + σ_n² at fixed 1/σ_s² + 1/σ_n²:
the sums get √D/(1+√D) of it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from xfer.client.onnxhead.head import L2Normalize


@dataclasses.dataclass(frozen=True, eq=False)
class ClassStats:
    """sums (K, D) of unit-normalised features and counts (K,) per class; noisy under DP."""

    sums: np.ndarray
    counts: np.ndarray


def unit_features(features: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (a zero row stays zero), float64."""
    return L2Normalize().apply(np.asarray(features, dtype=np.float64))


def class_stats(units: np.ndarray, y: np.ndarray, *, num_classes: int) -> ClassStats:
    """Exact per-class sums and counts."""
    sums = np.zeros((num_classes, units.shape[1]))
    np.add.at(sums, y, units)
    return ClassStats(sums, np.bincount(y, minlength=num_classes).astype(np.float64))


def counts_share(dim: int) -> float:
    """The counts' share of the statistics' μ², 1/(1+√D) (module docstring)."""
    return 1.0 / (1.0 + math.sqrt(dim))


def privatise(stats: ClassStats, *, sums_noise: float, counts_noise: float, rng: np.random.Generator) -> ClassStats:
    """The Gaussian mechanism on both: noise std `sums_noise` per sum coordinate, `counts_noise` per count."""
    return ClassStats(
        stats.sums + rng.normal(0.0, sums_noise, stats.sums.shape),
        stats.counts + rng.normal(0.0, counts_noise, stats.counts.shape),
    )


def _into_unit_ball(v: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.sum(v * v, axis=-1, keepdims=True))
    return v / np.maximum(norms, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Prototypes:
    """The global mean m of the unit features and the centred class means p_c = mean_c − m."""

    mean: np.ndarray
    centred: np.ndarray


def prototypes(stats: ClassStats) -> Prototypes:
    """Class means and global mean from (possibly noisy) statistics; noisy counts floored at 1."""
    total = max(float(stats.counts.sum()), 1.0)
    mean = _into_unit_ball(stats.sums.sum(axis=0) / total)
    means = _into_unit_ball(stats.sums / np.maximum(stats.counts, 1.0)[:, None])
    return Prototypes(mean, means - mean[None, :])
