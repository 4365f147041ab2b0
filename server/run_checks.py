"""Validation of run reports: each check raises InvalidArgument (reason INVALID_REPORT) saying what is
wrong and how to fix it, naming the request field. The order is fixed so the same bad report always
gets the same message. Name rules come from `xfer.names` (full matches: `acc\\n` is not `acc`).
"""

from __future__ import annotations

import math
from typing import Any

from xfer import names
from xfer.server.errors import InvalidArgument, Reason
from xfer.server.names import parse_version_name
from xfer.server.runs import (
    DEVICE_KINDS,
    MAX_HYPERPARAMETER_VALUE,
    MAX_HYPERPARAMETERS,
    MAX_METRICS,
    MAX_TRAIN_EXAMPLES_POW2,
    RunPrivacy,
    RunReport,
)


def _invalid(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_REPORT, field=field)


def show(value: Any, limit: int = 80) -> str:
    """repr() of a user value, shortened so one bad field cannot flood a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def is_number(value: Any) -> bool:
    """An int or float, but not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_report(report: RunReport) -> None:
    """Raise InvalidArgument unless every field of `report` is within its bounds."""
    check_run_id(report.run_id)
    check_model_version_syntax(report.model_version, field_name="run.model_version")
    check_strategy(report.strategy)
    _check_hyperparameters(report.hyperparameters)
    _check_metrics(report.metrics)
    _check_privacy(report.privacy)
    _check_train_examples(report.train_examples_pow2)
    _check_device_kind(report.device_kind)
    _check_wall_seconds(report.wall_seconds)


def validate_metric_name(name: str, *, field_name: str = "metric") -> None:
    """Raise InvalidArgument unless `name` is a well-formed metric name."""
    if not isinstance(name, str) or not name:
        raise _invalid(f"{field_name} is required, e.g. 'accuracy'", field_name)
    if not names.METRIC_NAME.fullmatch(name):
        raise _invalid(
            f"{field_name} {show(name)} is not a valid metric name: use 1-64 characters "
            "matching ^[a-z][a-z0-9_./-]{0,63}$ (lower case, starting with a letter), "
            "e.g. 'accuracy' or 'val/loss'",
            field_name,
        )


def check_run_id(run_id: str, *, field_name: str = "run.run_id") -> None:
    """Raise InvalidArgument unless `run_id` is a well-formed run id."""
    if not isinstance(run_id, str) or not run_id:
        raise _invalid("run_id is required: choose a unique id per run, e.g. a UUID", field_name)
    if not names.RUN_ID.fullmatch(run_id):
        raise _invalid(
            f"run_id {show(run_id)} is invalid: use 1-128 characters from [A-Za-z0-9_.-] "
            "starting with a letter or digit (e.g. a UUID)",
            field_name,
        )


def check_model_version_syntax(name: str, *, field_name: str, field: str | None = None) -> str:
    """The model id inside a version name; InvalidArgument naming `field_name` (request field `field`) if malformed."""
    field = field or field_name
    if not isinstance(name, str) or not name:
        raise _invalid(
            f"{field_name} is required: models/{{model}}/versions/{{version}}, e.g. models/digits/versions/latest",
            field,
        )
    try:
        return parse_version_name(name, field=field).model_id
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field_name}: {exc}", reason=exc.reason, field=field) from None


def check_strategy(strategy: str, *, field_name: str = "run.strategy.name") -> None:
    """Raise InvalidArgument unless `strategy` is a well-formed strategy name."""
    if not isinstance(strategy, str) or not strategy:
        raise _invalid(f"{field_name} is required, e.g. 'full' or 'surgical:block2'", field_name)
    if not names.STRATEGY.fullmatch(strategy):
        raise _invalid(
            f"{field_name} {show(strategy)} is invalid: use 1-128 characters matching "
            "^[a-z][a-z0-9_:.-]{0,127}$, e.g. 'lp-ft' or 'surgical:block2'",
            field_name,
        )


def _check_hyperparameters(hyperparameters: dict[str, str]) -> None:
    field = "run.strategy.hyperparameters"
    if len(hyperparameters) > MAX_HYPERPARAMETERS:
        raise _invalid(
            f"strategy.hyperparameters has {len(hyperparameters)} entries; at most "
            f"{MAX_HYPERPARAMETERS} are allowed: report only the ones that define the run",
            field,
        )
    for key, value in hyperparameters.items():
        if not isinstance(key, str) or not names.METRIC_NAME.fullmatch(key):
            raise _invalid(
                f"hyperparameter name {show(key)} is invalid: use 1-64 characters matching "
                "^[a-z][a-z0-9_./-]{0,63}$, e.g. 'lr' or 'batch_size'",
                field,
            )
        if not isinstance(value, str):
            raise _invalid(f"hyperparameter {key!r} must be a string, e.g. '3e-4'", f"{field}[{key}]")
        if len(value) > MAX_HYPERPARAMETER_VALUE:
            raise _invalid(
                f"hyperparameter {key!r} is {len(value)} characters long; at most "
                f"{MAX_HYPERPARAMETER_VALUE} are allowed",
                f"{field}[{key}]",
            )
        # Control characters have no place in a setting, and PostgreSQL refuses NUL.
        if not value.isprintable():
            raise _invalid(
                f"hyperparameter {key!r} contains control characters; use printable text only", f"{field}[{key}]"
            )


def _check_metrics(metrics: dict[str, float]) -> None:
    # The count is checked first so a huge report is refused without walking it.
    if not metrics:
        raise _invalid("metrics is empty: report at least one metric, e.g. 'accuracy'", "run.metrics")
    if len(metrics) > MAX_METRICS:
        raise _invalid(
            f"metrics has {len(metrics)} entries; at most {MAX_METRICS} are allowed per run: "
            "report aggregate metrics only",
            "run.metrics",
        )
    for name, value in metrics.items():
        validate_metric_name(name, field_name="run.metrics")
        if not is_number(value):
            raise _invalid(f"metric {name!r} must be a number, got {type(value).__name__}", f"run.metrics[{name}]")
        if not math.isfinite(value):
            raise _invalid(
                f"metric {name!r} is {value}; metric values must be finite: "
                "drop the metric or fix the computation that produced it",
                f"run.metrics[{name}]",
            )


def _check_privacy(privacy: RunPrivacy) -> None:
    numbers = {
        "epsilon_spent": privacy.epsilon_spent,
        "delta": privacy.delta,
        "noise_multiplier": privacy.noise_multiplier,
        "max_grad_norm": privacy.max_grad_norm,
    }
    for key, value in numbers.items():
        if not is_number(value) or not math.isfinite(value):
            raise _invalid(f"privacy.{key} is {show(value)}; it must be a finite number", f"run.privacy.{key}")
    if not privacy.dp:
        nonzero = [key for key, value in numbers.items() if value != 0]
        if nonzero:
            raise _invalid(
                f"privacy.dp is false but {', '.join('privacy.' + k for k in nonzero)} "
                "is set: set dp=true for a DP run, or leave all privacy numbers at 0",
                "run.privacy.dp",
            )
        return
    if privacy.epsilon_spent <= 0:
        raise _invalid(
            f"privacy.epsilon_spent is {privacy.epsilon_spent} but a DP run must report the epsilon it spent (> 0)",
            "run.privacy.epsilon_spent",
        )
    if not 0 < privacy.delta < 1:
        raise _invalid(f"privacy.delta is {privacy.delta}; it must be in (0, 1), e.g. 1e-5", "run.privacy.delta")
    if privacy.noise_multiplier < 0:
        raise _invalid(
            f"privacy.noise_multiplier is {privacy.noise_multiplier}; it must be >= 0", "run.privacy.noise_multiplier"
        )
    if privacy.max_grad_norm <= 0:
        raise _invalid(
            f"privacy.max_grad_norm is {privacy.max_grad_norm}; a DP run clips per-example gradients to a norm > 0",
            "run.privacy.max_grad_norm",
        )


def _check_train_examples(n: int) -> None:
    field = "run.train_examples_pow2"
    if isinstance(n, bool) or not isinstance(n, int):
        raise _invalid(f"train_examples_pow2 must be an integer, got {show(n)}", field)
    if n < 1 or n > MAX_TRAIN_EXAMPLES_POW2 or n & (n - 1):
        raise _invalid(
            f"train_examples_pow2 is {n}; it must be a power of two >= 1: round the "
            "training-set size up to a power of two (never report the exact count)",
            field,
        )


def _check_device_kind(kind: str) -> None:
    if kind not in DEVICE_KINDS:
        got = "missing" if not kind else show(kind)
        raise _invalid(f"device_kind is {got}; use one of {', '.join(DEVICE_KINDS)}", "run.device_kind")


def _check_wall_seconds(seconds: float) -> None:
    if not is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
        raise _invalid(f"wall_seconds is {show(seconds)}; it must be a finite number >= 0", "run.wall_seconds")
