"""LogME: the log maximum evidence of a linear model on a source's features (You et al., ICML 2021).

For features F (n, D) and each class c's one-hot column y_c, LogME fits a
Bayesian linear regression y_c = F w + ε with prior w ~ N(0, α⁻¹ I) and
noise ε ~ N(0, β⁻¹ I), maximises the evidence p(y_c | F, α, β) over α and
β, and averages the per-example log evidence over classes. Higher means
the features explain the labels better with a simple model. The maximum is
found by the fixed-point iteration of You et al. (JMLR 2022 / arXiv
2110.10545), on one SVD of F:

    t = α/β,  γ = Σ σᵢ/(σᵢ + t),  α = γ / ‖m‖²,  β = (n − γ) / ‖y − F m‖²

with σᵢ the squared singular values and m = (FᵀF + tI)⁻¹ Fᵀ y. The log
evidence is

    D/2 log α + n/2 log β − n/2 log 2π − β/2 ‖y − F m‖² − α/2 ‖m‖² − ½ Σᵢ₌₁ᴰ log(α + β σᵢ),

where σᵢ = 0 for the D − rank(F) directions F does not span (the reference
implementation's fast path leaves their ½ log α terms out when n < D; they
are included here, so the value is the same whichever of n and D is larger).
numpy only; float64 throughout.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

#: The fixed point is reached when α/β changes by less than this relative amount.
TOLERANCE = 1e-3
MAX_ITERATIONS = 100
_EPS = 1e-5  # as the reference implementation, keeps α and β finite for a perfect fit


@dataclasses.dataclass(frozen=True)
class LogMEFit:
    """The score and, per class, the evidence-maximising α and β."""

    score: float
    per_class: tuple[float, ...]
    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    iterations: int


def _evidence(
    *, n: int, d: int, sigma: np.ndarray, x2: np.ndarray, res_x2: float, alpha: float, beta: float
) -> tuple[float, float, float]:
    """(log evidence / n, ‖m‖², ‖y − F m‖²) at (α, β) in the SVD's coordinates."""
    t = alpha / beta
    m2 = float(np.sum(sigma * x2 / (t + sigma) ** 2))
    res2 = float(np.sum(x2 / (1.0 + sigma / t) ** 2) + res_x2)
    logdet = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * math.log(alpha)
    evidence = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - 0.5 * logdet
    )
    return evidence / n, m2, res2


def logme(features: np.ndarray, labels: np.ndarray) -> LogMEFit:
    """LogME of integer class labels given features (n, D); raises ValueError on bad input."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y) or len(y) < 2:
        raise ValueError(f"LogME needs features (n, D) and n labels, n >= 2; got {f.shape} and {y.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("LogME: features contain NaN or infinite values")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    # Singular values that are numerically zero are directions F does not span (σ = 0 in the formula).
    keep = s > max(s.max(initial=0.0), 1.0) * 1e-10
    u, sigma = u[:, keep], s[keep] ** 2
    per_class, alphas, betas, total_iterations = [], [], [], 0
    for c in np.unique(y):
        yc = (y == c).astype(np.float64)
        x = u.T @ yc
        x2 = x * x
        res_x2 = max(float(yc @ yc - x2.sum()), 0.0)
        alpha, beta = 1.0, 1.0
        for _ in range(MAX_ITERATIONS):
            t = alpha / beta
            gamma = float(np.sum(sigma / (sigma + t)))
            _, m2, res2 = _evidence(n=n, d=d, sigma=sigma, x2=x2, res_x2=res_x2, alpha=alpha, beta=beta)
            alpha = gamma / (m2 + _EPS)
            beta = max(n - gamma, _EPS) / (res2 + _EPS)
            total_iterations += 1
            if abs(alpha / beta - t) / t <= TOLERANCE:
                break
        evidence, _, _ = _evidence(n=n, d=d, sigma=sigma, x2=x2, res_x2=res_x2, alpha=alpha, beta=beta)
        per_class.append(evidence)
        alphas.append(alpha)
        betas.append(beta)
    return LogMEFit(float(np.mean(per_class)), tuple(per_class), tuple(alphas), tuple(betas), total_iterations)
