"""Differentially private head fits: noisy sufficient statistics and noisy full-batch gradient descent.

Neighbouring data sets differ by adding or removing one training example
(the adjacency Opacus uses, so ε means the same on the torch path). Every
release is a Gaussian mechanism recorded in a `GaussianAccountant`, whose
exact composition gives the ε charged to the privacy ledger.

- **prototype**: one release of the per-class statistics (`stats.py`):
  sums of unit-normalised features and counts, sensitivity 1 each.
- **logreg**: a share of the budget (`stats_share`, default 0.2) on the same
  statistics, which give the centring vector m̃, the normaliser ñ = Σ ñ_c
  and a prototype head to start from; the rest on `steps` rounds of
  full-batch gradient descent on the mean regularised log-loss of
  z = u − m̃. Each round releases the sum of per-example gradients, each
  clipped to L2 norm C (`max_grad_norm`), plus N(0, σ²C²) per coordinate.
  A per-example gradient of the softmax loss is the outer product
  (pᵢ − e_yᵢ)[zᵢ; 1]ᵀ, so its norm is ‖pᵢ − e_yᵢ‖·‖[zᵢ; 1]‖ and clipping
  needs no per-example gradient in memory. The head returned is the average
  of the second half of the iterates (noise averages out; post-processing).
  Full batches, not subsampling: for a convex loss it is near-optimal and
  its accounting is exact, with no amplification argument to get right.

The noise comes from a generator seeded by the operating system unless a
`noise_seed` is given (tests only: a known seed makes the noise known). As
in Opacus' default mode, the noise is numpy's floating-point Gaussian, not
a discrete or secure sampler.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from xfer.client.onnxhead.accounting import GaussianAccountant, GaussianRelease, split_budget
from xfer.client.onnxhead.errors import HeadPrivacyError
from xfer.client.onnxhead.head import Center, L2Normalize, LinearHead
from xfer.client.onnxhead.prototype import PrototypeResult, fit_prototype, head_from_prototypes
from xfer.client.onnxhead.stats import ClassStats, class_stats, counts_share, privatise, prototypes


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    """A target (ε, δ) for the whole head fit; `delta=None` derives δ from the training-set bucket."""

    epsilon: float
    delta: float | None = None
    max_grad_norm: float = 1.0
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise HeadPrivacyError(f"target epsilon must be positive and finite, got {self.epsilon!r}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise HeadPrivacyError(f"delta must be in (0, 1), got {self.delta!r}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise HeadPrivacyError(f"max_grad_norm must be positive, got {self.max_grad_norm!r}")


@dataclasses.dataclass(frozen=True)
class NoisyGDConfig:
    """Knobs of private logistic regression (defaults measured on digits, see the package README)."""

    steps: int = 100
    lr: float = 1.0
    l2: float = 1e-2
    stats_share: float = 0.2
    init_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise HeadPrivacyError(f"private logistic regression needs at least one step, got steps={self.steps}")
        if not (self.lr > 0 and self.l2 >= 0 and self.init_scale >= 0):
            raise HeadPrivacyError("lr must be positive; l2 and init_scale non-negative")
        if not 0 < self.stats_share < 1:
            raise HeadPrivacyError(f"stats_share must be in (0, 1), got {self.stats_share}")


@dataclasses.dataclass(frozen=True)
class PrivacyReport:
    """What a private fit spent: ε at δ from the accountant, and its noise.

    `noise_multiplier` is 1/μ, that of the single Gaussian mechanism equivalent
    to the whole run; `max_grad_norm` is the per-example bound of every release
    (C for gradients; unit-normalised features give 1 for statistics).
    """

    epsilon_spent: float
    delta: float
    target_epsilon: float
    noise_multiplier: float
    max_grad_norm: float
    releases: tuple[GaussianRelease, ...]


def _rng(config: PrivacyConfig) -> np.random.Generator:
    return np.random.default_rng(config.noise_seed)  # None: fresh entropy from the OS


def _release_stats(
    units: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    share: float,
    epsilon: float,
    delta: float,
    extra: dict[str, tuple[float, int]],
    rng: np.random.Generator,
    accountant: GaussianAccountant,
) -> tuple[ClassStats, dict[str, float]]:
    counts = share * counts_share(units.shape[1])
    shares = {"class_sums": (share - counts, 1), "class_counts": (counts, 1), **extra}
    noise = split_budget(epsilon=epsilon, delta=delta, shares=shares)
    noisy = privatise(
        class_stats(units, y, num_classes=num_classes),
        sums_noise=noise["class_sums"],
        counts_noise=noise["class_counts"],
        rng=rng,
    )
    accountant.record(GaussianRelease("class_sums", noise["class_sums"]))
    accountant.record(GaussianRelease("class_counts", noise["class_counts"]))
    return noisy, noise


def private_prototype(
    units: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    metric: str,
    scale: float | None,
    val: tuple[np.ndarray, np.ndarray] | None,
    epsilon: float,
    delta: float,
    config: PrivacyConfig,
    accountant: GaussianAccountant,
) -> PrototypeResult:
    """A prototype head from one Gaussian release of the class statistics."""
    noisy, _ = _release_stats(
        units,
        y,
        num_classes=num_classes,
        share=1.0,
        epsilon=epsilon,
        delta=delta,
        extra={},
        rng=_rng(config),
        accountant=accountant,
    )
    return fit_prototype(stats=noisy, metric=metric, scale=scale, private=True, val=val)


def clipped_gradient_sum(
    z: np.ndarray, y: np.ndarray, *, weight: np.ndarray, bias: np.ndarray, clip: float
) -> tuple[np.ndarray, np.ndarray]:
    """Σᵢ clip_C(∇ℓᵢ) for the softmax loss at (W, b): (K, D) and (K,) parts, each example's norm <= C."""
    logits = z @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    residual = np.exp(logits)
    residual /= residual.sum(axis=1, keepdims=True)
    residual[np.arange(len(y)), y] -= 1.0
    norms = np.sqrt(np.einsum("nk,nk->n", residual, residual) * (np.einsum("nd,nd->n", z, z) + 1.0))
    residual *= np.minimum(1.0, clip / np.maximum(norms, 1e-12))[:, None]
    return residual.T @ z, residual.sum(axis=0)


def private_logreg(
    units: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    gd: NoisyGDConfig,
    epsilon: float,
    delta: float,
    config: PrivacyConfig,
    accountant: GaussianAccountant,
) -> LinearHead:
    """Private multinomial logistic regression (module docstring)."""
    rng = _rng(config)
    noisy, noise = _release_stats(
        units,
        y,
        num_classes=num_classes,
        share=gd.stats_share,
        epsilon=epsilon,
        delta=delta,
        extra={"gradient_steps": (1.0 - gd.stats_share, gd.steps)},
        rng=rng,
        accountant=accountant,
    )
    protos = prototypes(noisy)
    start = head_from_prototypes(protos, metric="euclidean", scale=gd.init_scale)
    normaliser = max(float(noisy.counts.sum()), 1.0)
    z = units - protos.mean[None, :]
    weight, bias = start.weight.copy(), start.bias.copy()
    sum_w, sum_b = np.zeros_like(weight), np.zeros_like(bias)
    averaged = 0
    sigma = noise["gradient_steps"] * config.max_grad_norm
    accountant.record(GaussianRelease("gradient_steps", noise["gradient_steps"], gd.steps))
    for step in range(gd.steps):
        grad_w, grad_b = clipped_gradient_sum(z, y, weight=weight, bias=bias, clip=config.max_grad_norm)
        grad_w += rng.normal(0.0, sigma, grad_w.shape)
        grad_b += rng.normal(0.0, sigma, grad_b.shape)
        weight -= gd.lr * (grad_w / normaliser + gd.l2 * weight)
        bias -= gd.lr * (grad_b / normaliser)
        if step >= gd.steps // 2:
            sum_w += weight
            sum_b += bias
            averaged += 1
    return LinearHead(sum_w / averaged, sum_b / averaged, steps=(L2Normalize(), Center(protos.mean)))
