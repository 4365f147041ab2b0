"""Run reports from edge clients: the domain types (no storage, no protobuf).

A client that adapted a source model reports one `RunReport` per run. What
a report can hold is deliberately narrow, and that narrowness is the
privacy guarantee of this service: **nothing in a report can carry raw
examples**. Every field is bounded and typed (server/run_checks.py):

* metric names follow `xfer.names.METRIC_NAME` and their values are finite
  doubles, at most 64 of them;
* hyperparameters are at most 32 short, identifier-like keys with values of
  at most 256 printable characters (room for "3e-4", never for an image or
  a sentence of client text at any useful volume);
* the training-set size is rounded to a power of two, never an exact count;
* the rest are a run id, a model version name, a strategy name, five
  privacy numbers, a device kind and a duration.

The module is called `runs` (not `metrics`) so it never clashes with the
Prometheus metrics the server exports (server/observability.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

MAX_METRICS = 64
MAX_HYPERPARAMETERS = 32
MAX_HYPERPARAMETER_VALUE = 256
DEVICE_KINDS = ("cpu", "cuda", "mps")
GOALS = ("maximize", "minimize")
# Proto int64; the largest power of two it holds is 2**62.
MAX_TRAIN_EXAMPLES_POW2 = 2**62


@dataclass(frozen=True)
class RunPrivacy:
    """The differential-privacy accounting of one run (all zero without DP)."""

    dp: bool = False
    epsilon_spent: float = 0.0
    delta: float = 0.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0


@dataclass(frozen=True)
class RunReport:
    """What a client reports about one adaptation run; aggregate numbers only."""

    run_id: str
    model_version: str
    strategy: str
    metrics: dict[str, float]
    hyperparameters: dict[str, str] = field(default_factory=dict)
    privacy: RunPrivacy = field(default_factory=RunPrivacy)
    train_examples_pow2: int = 1
    device_kind: str = "cpu"
    wall_seconds: float = 0.0


@dataclass(frozen=True)
class StoredRun:
    """A stored report; `report.model_version` is the canonical numbered name."""

    name: str
    report: RunReport
    create_time: datetime


@dataclass(frozen=True)
class ReportOutcome:
    """The result of `RunStore.report`: the stored run, and whether it was a retry."""

    run: StoredRun
    duplicate: bool


@dataclass(frozen=True)
class RunPage:
    """One page of `RunStore.list_runs`; an empty token means the last page."""

    runs: list[StoredRun]
    next_page_token: str = ""


@dataclass(frozen=True)
class LeaderboardRow:
    """Statistics of one metric over the runs of one (version, strategy, dp) group."""

    model_version: str
    strategy: str
    dp: bool
    count: int
    mean: float
    std: float
    best: float
    best_run_id: str
