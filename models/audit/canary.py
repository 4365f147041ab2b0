"""The one-run DP audit of a training recipe (Steinke, Nasr & Jagielski, NeurIPS 2023).

m canaries are drawn from the training pool and mislabelled (a random other
class: an outlier the model can only fit by memorising it, the strongest
black-box canary here). Each is included in training independently with
probability 1/2; the rest of the pool is always included. The model is
trained once with the recipe under audit (`xfer.models.fit`, the product's
own Opacus DP-SGD); each canary's score is minus its loss; the most
confident guesses are turned into an epsilon lower bound by
`xfer.models.audit.one_run` (their Theorem 5.2, delta term included,
Bonferroni over pre-declared guess counts).

The audit trains its own model: the published weights are never trained on
mislabelled canaries. What it bounds is the training algorithm that
produced them (same data, recipe and accountant).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from xfer.models.audit.membership import example_scores
from xfer.models.audit.one_run import best_lower_bound
from xfer.models.audit.record import DpAudit
from xfer.models.fit import FitConfig, fit

log = logging.getLogger(__name__)

METHOD = "one-run canary audit (Steinke, Nasr & Jagielski 2023), mislabelled canaries, loss score"
MAX_DEFAULT_CANARIES = 1000


def default_canaries(n: int) -> int:
    """A fifth of the training set, at most 1000: enough guesses to bound epsilon, few enough to keep accuracy."""
    return max(2, min(MAX_DEFAULT_CANARIES, n // 5))


@dataclasses.dataclass(frozen=True)
class CanaryRun:
    """The audit's outcome and the DP the audited run's accountant reported."""

    audit: DpAudit
    scores: np.ndarray
    included: np.ndarray


def canary_audit(
    *,
    make_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    fit_config: FitConfig,
    canaries: int | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> CanaryRun:
    """Trains once with `fit_config` (which must be DP) on (x, y) plus canaries and bounds epsilon from below."""
    if fit_config.dp_epsilon is None:
        raise ValueError("the one-run DP audit audits DP training: give the recipe a dp_epsilon")
    if num_classes < 2:
        raise ValueError("mislabelled canaries need at least two classes")
    m = default_canaries(len(x)) if canaries is None else canaries
    if not 2 <= m <= len(x):
        raise ValueError(f"canaries must be between 2 and the {len(x)} training examples, got {m}")
    rng = np.random.default_rng(seed + 31)
    chosen = rng.choice(len(x), m, replace=False)
    canary_x = x[torch.from_numpy(chosen)]
    shift = torch.from_numpy(rng.integers(1, num_classes, size=m))
    canary_y = (y[torch.from_numpy(chosen)] + shift) % num_classes
    included = rng.random(m) < 0.5
    rest = torch.from_numpy(np.setdiff1d(np.arange(len(x)), chosen))
    keep = torch.from_numpy(np.nonzero(included)[0])
    train_x = torch.cat([x[rest], canary_x[keep]])
    train_y = torch.cat([y[rest], canary_y[keep]])
    torch.manual_seed(seed + 31)
    result = fit(make_model(), train_x, train_y, dataclasses.replace(fit_config, seed=fit_config.seed + 31))
    if result.dp_epsilon is None or result.dp_delta is None:
        raise RuntimeError("DP training reported no epsilon; the audit has nothing to compare with")
    scores = -example_scores(result.model, canary_x, canary_y).loss
    bound = best_lower_bound(scores=scores, included=included, delta=result.dp_delta, confidence=confidence)
    log.info(
        "one-run audit: %d canaries, %d of %d guesses right, epsilon >= %.3f (claimed %.3f)",
        m,
        bound.correct,
        bound.guesses,
        bound.epsilon_lower_bound,
        result.dp_epsilon,
    )
    audit = DpAudit(
        method=METHOD,
        canaries=m,
        guesses=bound.guesses,
        correct=bound.correct,
        confidence=confidence,
        delta=result.dp_delta,
        epsilon_lower_bound=bound.epsilon_lower_bound,
        claimed_epsilon=result.dp_epsilon,
    )
    return CanaryRun(audit=audit, scores=scores, included=included)
