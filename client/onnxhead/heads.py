"""The registry of head fitters: `logreg` and `prototype`, each with and without DP.

A fitter takes a `FitContext` (features of the training split, labels,
optional validation features, config, privacy) and returns a `FittedHead`:
the head, the hyperparameters a report may carry (as configured, never as
chosen on the data) and local details for metrics.json.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from xfer.client.onnxhead.accounting import GaussianAccountant
from xfer.client.onnxhead.errors import DuplicateHeadError, HeadError, UnknownHeadError
from xfer.client.onnxhead.features import DEFAULT_BATCH_SIZE, SessionOptions
from xfer.client.onnxhead.head import LinearHead
from xfer.client.onnxhead.logreg import MAX_FOLDS, fit_logreg
from xfer.client.onnxhead.private import NoisyGDConfig, PrivacyConfig, private_logreg, private_prototype
from xfer.client.onnxhead.prototype import METRICS, fit_prototype
from xfer.client.onnxhead.stats import class_stats, unit_features

#: Reported strategy names are this prefix plus the head's name: onnx-logreg, onnx-prototype.
STRATEGY_PREFIX = "onnx-"


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """How heads are fitted (frozen; the defaults suit 50 examples and 50,000).

    `l2` None: logistic regression picks λ on the validation split or by
    cross-validation; `scale` None: the prototype scale is fitted likewise;
    `dp` holds the knobs of private logistic regression.
    """

    l2: float | None = None
    folds: int = MAX_FOLDS
    metric: str = "cosine"
    scale: float | None = None
    dp: NoisyGDConfig = NoisyGDConfig()
    batch_size: int = DEFAULT_BATCH_SIZE
    max_iter: int = 1000
    seed: int = 0
    session: SessionOptions = SessionOptions()
    verify_examples: int = 64

    def __post_init__(self) -> None:
        if self.l2 is not None and not (math.isfinite(self.l2) and self.l2 > 0):
            raise HeadError(f"l2 must be positive (or None to choose it), got {self.l2}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise HeadError(f"scale must be positive (or None to fit it), got {self.scale}")
        if self.metric not in METRICS:
            raise HeadError(f"unknown prototype metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.folds < 2:
            raise HeadError(f"folds must be at least 2, got {self.folds}")
        for name in ("max_iter", "batch_size", "verify_examples"):
            if getattr(self, name) < 1:
                raise HeadError(f"{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True, eq=False)
class FitContext:
    """Everything a fitter may use; `val` holds validation features and labels (held out, not private)."""

    features: np.ndarray
    y: np.ndarray
    num_classes: int
    val: tuple[np.ndarray, np.ndarray] | None
    config: HeadConfig
    privacy: PrivacyConfig | None
    epsilon: float
    delta: float
    accountant: GaussianAccountant


@dataclasses.dataclass(frozen=True, eq=False)
class FittedHead:
    """A head, the hyperparameters a report may carry, and local details."""

    head: LinearHead
    hyperparameters: dict[str, str]
    details: dict[str, Any]
    max_grad_norm: float = 0.0


HeadFitter = Callable[[FitContext], FittedHead]
HEADS: dict[str, HeadFitter] = {}


def register_head(name: str) -> Callable[[HeadFitter], HeadFitter]:
    """Decorator adding a fitter to `HEADS`; a duplicate name raises."""

    def add(fitter: HeadFitter) -> HeadFitter:
        if name in HEADS:
            raise DuplicateHeadError(f"head {name!r} is already registered")
        HEADS[name] = fitter
        return fitter

    return add


def get_head(name: str) -> tuple[str, HeadFitter]:
    """(name, fitter) for 'logreg' or 'onnx-logreg' style names; unknown names list the valid ones."""
    key = name.removeprefix(STRATEGY_PREFIX) if isinstance(name, str) else name
    if key not in HEADS:
        raise UnknownHeadError(
            f"unknown head {name!r}; valid: {', '.join(f'{n} ({STRATEGY_PREFIX}{n})' for n in sorted(HEADS))}"
        )
    return key, HEADS[key]


@register_head("logreg")
def _fit_logreg(ctx: FitContext) -> FittedHead:
    cfg = ctx.config
    if ctx.privacy is None:
        result = fit_logreg(
            ctx.features,
            ctx.y,
            num_classes=ctx.num_classes,
            l2=cfg.l2,
            val=ctx.val,
            folds=cfg.folds,
            seed=cfg.seed,
            max_iter=cfg.max_iter,
        )
        if result.iterations == 0 or not np.any(result.head.weight):
            raise HeadError(
                "logistic regression made no step: the features carry no signal for these labels "
                "(the objective is flat at zero weights); check the data and the model"
            )
        hyper = {"l2": "auto" if cfg.l2 is None else f"{cfg.l2:g}", "standardize": "true"}
        if cfg.l2 is None:
            hyper["selection"] = "val" if ctx.val is not None else "train-cv"
        details = {
            "l2": result.selection.l2,
            "l2_method": result.selection.method,
            "l2_scores": {f"{k:g}": v for k, v in result.selection.scores.items()},
            "iterations": result.iterations,
            "converged": result.converged,
        }
        return FittedHead(result.head, hyper, details)
    gd = cfg.dp
    head = private_logreg(
        unit_features(ctx.features),
        ctx.y,
        num_classes=ctx.num_classes,
        gd=gd,
        epsilon=ctx.epsilon,
        delta=ctx.delta,
        config=ctx.privacy,
        accountant=ctx.accountant,
    )
    hyper = {
        "dp_steps": str(gd.steps),
        "dp_lr": f"{gd.lr:g}",
        "dp_l2": f"{gd.l2:g}",
        "dp_stats_share": f"{gd.stats_share:g}",
        "features": "l2-normalize,center",
    }
    return FittedHead(head, hyper, {"dp": dataclasses.asdict(gd)}, max_grad_norm=ctx.privacy.max_grad_norm)


@register_head("prototype")
def _fit_prototype(ctx: FitContext) -> FittedHead:
    cfg = ctx.config
    units = unit_features(ctx.features)
    if ctx.privacy is None:
        stats = class_stats(units, ctx.y, num_classes=ctx.num_classes)
        result = fit_prototype(
            stats=stats, metric=cfg.metric, scale=cfg.scale, private=False, exact=(units, ctx.y, stats), val=ctx.val
        )
    else:
        result = private_prototype(
            units,
            ctx.y,
            num_classes=ctx.num_classes,
            metric=cfg.metric,
            scale=cfg.scale,
            val=ctx.val,
            epsilon=ctx.epsilon,
            delta=ctx.delta,
            config=ctx.privacy,
            accountant=ctx.accountant,
        )
    hyper = {
        "metric": cfg.metric,
        "scale": "auto" if cfg.scale is None else f"{cfg.scale:g}",
        "features": "l2-normalize,center",
    }
    if cfg.scale is None:
        hyper["selection"] = "val" if ctx.val is not None else ("train-loo" if ctx.privacy is None else "default")
    return FittedHead(
        result.head,
        hyper,
        {"scale": result.scale.scale, "scale_method": result.scale.method},
        max_grad_norm=1.0 if ctx.privacy is not None else 0.0,
    )


def list_heads() -> list[str]:
    """Names of the registered heads."""
    return sorted(HEADS)
