"""What a head fit may send to the server: nothing that narrows n below its power-of-two bucket.

- the training-set size only as its bucket B = 2^⌈log2 n⌉;
- δ derived from B (`xfer.client.dp_delta.default_delta`), never from n;
- noise multipliers that depend on ε, δ and fixed knobs only (full-batch
  steps, no ⌈n/batch⌉);
- hyperparameters as configured, never as chosen on the data (not the λ a
  cross-validation picked, not its number of folds);
- metrics rounded to a grid of step 1/2^⌊log2 m⌋, where m is the smallest
  test-split size consistent with what is public: an exact fraction k/m
  would name m (and, through the split, n), while every size m' >= m has
  some k'/m' in each grid cell, so a rounded value rules out no size;
- no statistic of the training data itself (no training loss, no
  cross-validation score, no per-class counts or per-class accuracies);
- wall seconds to two significant digits.
"""

from __future__ import annotations

import math
from typing import Any

from xfer.client.domain import DeviceKind, Run, RunPrivacy

#: The metrics a report carries, all from the test split.
REPORTED_METRICS = ("accuracy", "macro_f1", "loss", "ece")


def metric_step(min_eval_examples: int) -> float:
    """1/2^⌊log2 m⌋ <= ... : the coarsest power-of-two grid finer than no 1/m' for m' >= m."""
    m = max(1, int(min_eval_examples))
    return 2.0 ** -math.floor(math.log2(m))


def round_to_step(value: float, step: float) -> float:
    """`value` rounded to the nearest multiple of `step` (an exact binary fraction)."""
    return round(value / step) * step


def significant(value: float, digits: int = 2) -> float:
    """`value` to `digits` significant digits (0 stays 0)."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def build_run(
    *,
    run_id: str,
    model_version: str,
    strategy: str,
    hyperparameters: dict[str, str],
    metrics: dict[str, float],
    min_eval_examples: int,
    privacy: RunPrivacy,
    train_examples_pow2: int,
    device_kind: DeviceKind,
    wall_seconds: float,
) -> Run:
    """A `Run` whose every field follows the rules in the module docstring."""
    step = metric_step(min_eval_examples)
    reported = {
        name: round_to_step(metrics[name], step)
        for name in REPORTED_METRICS
        if name in metrics and math.isfinite(metrics[name])
    }
    return Run(
        run_id=run_id,
        model_version=model_version,
        strategy=strategy,
        metrics=reported,
        hyperparameters={k: str(v)[:256] for k, v in hyperparameters.items()},
        privacy=privacy,
        train_examples_pow2=train_examples_pow2,
        device_kind=device_kind,
        wall_seconds=significant(wall_seconds),
    )


def report_fields(run: Run) -> dict[str, Any]:
    """The run as `json_format.ParseDict`-ready fields of `xfer.v1.Run` (as `xfer finetune` returns them)."""
    p = run.privacy
    return {
        "strategy": {"name": run.strategy, "hyperparameters": dict(run.hyperparameters)},
        "metrics": dict(run.metrics),
        "privacy": {
            "dp": p.dp,
            "epsilon_spent": p.epsilon_spent,
            "delta": p.delta,
            "noise_multiplier": p.noise_multiplier,
            "max_grad_norm": p.max_grad_norm,
        },
        "train_examples_pow2": run.train_examples_pow2,
        "device_kind": f"DEVICE_KIND_{run.device_kind.value.upper()}",
        "wall_seconds": run.wall_seconds,
    }
