"""Nearest-class-mean (prototype) heads on centred, unit-normalised features.

Features are divided by their norm, centred on the mean of the training
features, and compared with each class's centred mean p_c (SimpleShot,
Wang et al. 2019: this "CL2N" transform is the strongest of the simple
choices for few-shot nearest-mean classifiers). Two metrics:

- ``cosine``: logits = s · cos(z, p_c), z = u − m re-normalised;
- ``euclidean``: logits = −(s/2)·‖z − p_c‖² + (s/2)·‖z‖² = s·(z·p_c − ‖p_c‖²/2).
  The ‖z‖² term is the same for every class, so dropping it changes neither
  the prediction nor the softmax, and the head becomes linear in z.

The scale s (an inverse temperature) only changes confidence, not
predictions. It is fitted by minimising log-loss (convex in s) on the
validation split when there is one; otherwise, without DP, on the training
split with leave-one-out class means (an example's own class mean without
it, so the fit is not fooled by every example lying close to its own
mean); otherwise it stays at `DEFAULT_SCALE`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xfer.client.onnxhead.head import Center, L2Normalize, LinearHead, log_softmax
from xfer.client.onnxhead.stats import ClassStats, Prototypes, prototypes

METRICS = ("cosine", "euclidean")
DEFAULT_SCALE = {"cosine": 10.0, "euclidean": 10.0}
SCALE_RANGE = (1e-2, 100.0)
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class ScaleFit:
    """The chosen scale and where it came from ("val", "loo", "default" or "fixed")."""

    scale: float
    method: str


def _directions(centred: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.sum(centred * centred, axis=1, keepdims=True))
    return np.where(norms > _EPS, centred / np.maximum(norms, _EPS), 0.0)


def head_from_prototypes(protos: Prototypes, *, metric: str, scale: float) -> LinearHead:
    """The linear head (with its feature steps) of a prototype classifier."""
    if metric == "cosine":
        return LinearHead(
            scale * _directions(protos.centred),
            np.zeros(len(protos.centred)),
            steps=(L2Normalize(), Center(protos.mean), L2Normalize()),
        )
    if metric == "euclidean":
        sq = np.sum(protos.centred * protos.centred, axis=1)
        return LinearHead(scale * protos.centred, -0.5 * scale * sq, steps=(L2Normalize(), Center(protos.mean)))
    raise ValueError(f"unknown prototype metric {metric!r}; valid: {', '.join(METRICS)}")


def fit_scale(unscaled_logits: np.ndarray, y: np.ndarray) -> float:
    """argmin_s mean −log softmax(s·a)_y over SCALE_RANGE (convex in s: bisection on the derivative)."""

    def slope(s: float) -> float:
        p = np.exp(log_softmax(s * unscaled_logits))
        return float(np.mean(np.sum(p * unscaled_logits, axis=1) - unscaled_logits[np.arange(len(y)), y]))

    lo, hi = np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1])
    if slope(np.exp(hi)) <= 0:
        return float(np.exp(hi))
    if slope(np.exp(lo)) >= 0:
        return float(np.exp(lo))
    for _ in range(60):
        mid = (lo + hi) / 2
        if slope(float(np.exp(mid))) > 0:
            hi = mid
        else:
            lo = mid
    return float(np.exp((lo + hi) / 2))


def _loo_unscaled_logits(
    units: np.ndarray, y: np.ndarray, *, stats: ClassStats, protos: Prototypes, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled logits of the training examples whose class has >= 2 of them, own class left out."""
    counts = stats.counts[y]
    keep = counts >= 2
    u, yk = units[keep], y[keep]
    rows = np.arange(len(yk))
    z = u - protos.mean
    own = (stats.sums[yk] - u) / (counts[keep, None] - 1) - protos.mean  # (n, D): no (n, K, D) array
    own_dot = np.einsum("nd,nd->n", z, own)
    own_sq = np.einsum("nd,nd->n", own, own)
    class_sq = np.sum(protos.centred * protos.centred, axis=1)
    if metric == "cosine":
        z_norm = np.maximum(np.sqrt(np.einsum("nd,nd->n", z, z)), _EPS)
        logits = (z @ protos.centred.T) / np.maximum(np.sqrt(class_sq), _EPS)[None, :]
        logits[rows, yk] = own_dot / np.maximum(np.sqrt(own_sq), _EPS)
        logits /= z_norm[:, None]
    else:
        logits = z @ protos.centred.T - 0.5 * class_sq[None, :]
        logits[rows, yk] = own_dot - 0.5 * own_sq
    return logits, yk


def choose_scale(
    *,
    protos: Prototypes,
    metric: str,
    scale: float | None,
    private: bool,
    train: tuple[np.ndarray, np.ndarray, ClassStats] | None,
    val: tuple[np.ndarray, np.ndarray] | None,
) -> ScaleFit:
    """The scale as the module docstring says; `train` = (unit features, labels, exact stats)."""
    if scale is not None:
        return ScaleFit(float(scale), "fixed")
    if val is not None:
        unit_head = head_from_prototypes(protos, metric=metric, scale=1.0)
        return ScaleFit(fit_scale(unit_head.logits(val[0]), val[1]), "val")
    if not private and train is not None:
        units, labels, stats = train
        logits, yk = _loo_unscaled_logits(units, labels, stats=stats, protos=protos, metric=metric)
        if len(yk):
            return ScaleFit(fit_scale(logits, yk), "loo")
    return ScaleFit(DEFAULT_SCALE[metric], "default")


@dataclasses.dataclass(frozen=True, eq=False)
class PrototypeResult:
    """The fitted head and how its scale was chosen."""

    head: LinearHead
    scale: ScaleFit


def fit_prototype(
    *,
    stats: ClassStats,
    metric: str = "cosine",
    scale: float | None = None,
    private: bool,
    exact: tuple[np.ndarray, np.ndarray, ClassStats] | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> PrototypeResult:
    """A prototype head from (exact or noisy) class statistics; `exact` enables the leave-one-out scale."""
    if metric not in METRICS:
        raise ValueError(f"unknown prototype metric {metric!r}; valid: {', '.join(METRICS)}")
    protos = prototypes(stats)
    chosen = choose_scale(protos=protos, metric=metric, scale=scale, private=private, train=exact, val=val)
    return PrototypeResult(head_from_prototypes(protos, metric=metric, scale=chosen.scale), chosen)
