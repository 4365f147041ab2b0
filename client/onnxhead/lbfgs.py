"""Limited-memory BFGS for smooth unconstrained minimisation, in numpy.

Two-loop recursion (Nocedal & Wright, Algorithm 7.4) with a backtracking
Armijo line search using safeguarded quadratic interpolation. A curvature
pair is kept only when sᵀy > 0 (by a margin), so the implicit inverse
Hessian stays positive definite and every direction is a descent direction;
for the strongly convex objectives fitted here that is all the Wolfe
curvature condition would add.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import numpy as np

FunGrad = Callable[[np.ndarray], tuple[float, np.ndarray]]
_ARMIJO = 1e-4
_MAX_BACKTRACKS = 60


@dataclasses.dataclass(frozen=True)
class LbfgsResult:
    """Where the solver stopped and why."""

    x: np.ndarray
    fun: float
    grad_max: float
    iterations: int
    evaluations: int
    converged: bool
    message: str


def minimize_lbfgs(
    fun_grad: FunGrad,
    x0: np.ndarray,
    *,
    memory: int = 10,
    max_iter: int = 1000,
    gtol: float = 1e-6,
    ftol: float = 1e-12,
) -> LbfgsResult:
    """Minimises f from x0; `fun_grad(x)` returns (f(x), ∇f(x)).

    Converged when max|∇f| <= gtol, or when an iteration lowers f by less than
    ftol·max(|f|, 1) (the objective is flat to working precision).
    """
    x = np.array(x0, dtype=np.float64)
    f, g = fun_grad(x)
    evaluations = 1
    pairs: collections.deque[tuple[np.ndarray, np.ndarray, float]] = collections.deque(maxlen=memory)
    for iteration in range(max_iter + 1):
        grad_max = float(np.max(np.abs(g))) if g.size else 0.0
        if not np.isfinite(f) or not np.isfinite(grad_max):
            return LbfgsResult(x, f, grad_max, iteration, evaluations, False, "non-finite objective or gradient")
        if grad_max <= gtol:
            return LbfgsResult(x, f, grad_max, iteration, evaluations, True, "gradient below tolerance")
        if iteration == max_iter:
            break
        d = -_inverse_hessian_times(g, pairs)
        slope = float(g @ d)
        if slope >= 0:  # numerical trouble: restart from steepest descent
            pairs.clear()
            d, slope = -g, -float(g @ g)
        t = 1.0 if pairs else min(1.0, 1.0 / max(float(np.sum(np.abs(g))), 1e-12))
        for _ in range(_MAX_BACKTRACKS):
            x_new = x + t * d
            f_new, g_new = fun_grad(x_new)
            evaluations += 1
            if np.isfinite(f_new) and f_new <= f + _ARMIJO * t * slope:
                break
            # Minimiser of the quadratic through f, slope and f_new, kept within [0.1t, 0.5t].
            denominator = 2.0 * (f_new - f - slope * t) if np.isfinite(f_new) else np.inf
            t_quad = -slope * t * t / denominator if denominator > 0 else 0.5 * t
            t = float(np.clip(t_quad, 0.1 * t, 0.5 * t))
        else:
            return LbfgsResult(x, f, grad_max, iteration, evaluations, False, "line search failed")
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        if sy > 1e-10 * float(y @ y):
            pairs.append((s, y, 1.0 / sy))
        decrease = f - f_new
        x, f, g = x_new, f_new, g_new
        if decrease <= ftol * max(abs(f), 1.0):
            grad_max = float(np.max(np.abs(g))) if g.size else 0.0
            return LbfgsResult(x, f, grad_max, iteration + 1, evaluations, True, "objective flat")
    grad_max = float(np.max(np.abs(g))) if g.size else 0.0
    return LbfgsResult(x, f, grad_max, max_iter, evaluations, False, f"stopped after {max_iter} iterations")


def _inverse_hessian_times(g: np.ndarray, pairs: collections.deque) -> np.ndarray:
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        q *= float(s @ y) / float(y @ y)  # initial scaling H0 = γI (Nocedal & Wright eq. 7.20)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        beta = rho * float(y @ q)
        q += (alpha - beta) * s
    return q
