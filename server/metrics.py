"""Run reports from edge clients: validation, storage, listing, leaderboard.

A client that adapted a source model reports one `RunReport` per run. What
a report can hold is deliberately narrow, and that narrowness is the
privacy guarantee of this service: **nothing in a report can carry raw
examples**. Every field is bounded and typed -

* metric names match ``^[a-z][a-z0-9_./-]{0,63}$`` and their values are
  finite doubles, at most 64 of them;
* hyperparameters are at most 32 short, identifier-like keys with values of
  at most 256 printable characters (room for "3e-4", never for an image or
  a sentence of client text at any useful volume);
* the training-set size is rounded to a power of two, never an exact count;
* the rest are a run id, a model version name, a strategy name, five
  privacy numbers, a device kind and a duration.

`RunStore` keeps reports in its own SQLAlchemy tables (the same code on
SQLite and PostgreSQL). Reports are idempotent on the client-chosen run id:
a retry of the same report is stored once; a different report under the
same id is refused with `AlreadyExists`.

This module never imports generated protobuf code; `server.metrics_servicer`
converts between the wire and these dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from xfer.server.db import write_transaction
from xfer.server.errors import AlreadyExists, InvalidArgument, NotFound
from xfer.server.names import parse_model_name, parse_version_name
from xfer.server.pagination import PageTokens, page_size_of

logger = logging.getLogger(__name__)

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
STRATEGY_RE = re.compile(r"[a-z][a-z0-9_:.-]{0,127}")
METRIC_NAME_RE = re.compile(r"[a-z][a-z0-9_./-]{0,63}")

MAX_METRICS = 64
MAX_HYPERPARAMETERS = 32
MAX_HYPERPARAMETER_VALUE = 256
DEVICE_KINDS = ("cpu", "cuda", "mps")
GOALS = ("maximize", "minimize")
# Proto int64; the largest power of two it holds is 2**62.
MAX_TRAIN_EXAMPLES_POW2 = 2**62


# --------------------------------------------------------------------------
# Domain dataclasses


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


# --------------------------------------------------------------------------
# Validation. Each check raises InvalidArgument saying what is wrong and how
# to fix it; the order is fixed so the same bad report gets the same message.


def validate_report(report: RunReport) -> None:
    """Raise InvalidArgument unless every field of `report` is within its bounds."""
    _check_run_id(report.run_id)
    _check_model_version_syntax(report.model_version, field_name="model_version")
    _check_strategy(report.strategy)
    _check_hyperparameters(report.hyperparameters)
    _check_metrics(report.metrics)
    _check_privacy(report.privacy)
    _check_train_examples(report.train_examples_pow2)
    _check_device_kind(report.device_kind)
    _check_wall_seconds(report.wall_seconds)


def validate_metric_name(name: str, *, field_name: str = "metric") -> None:
    """Raise InvalidArgument unless `name` is a well-formed metric name."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{field_name} is required, e.g. 'accuracy'")
    if not METRIC_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{field_name} {_show(name)} is not a valid metric name: use 1-64 characters "
            "matching ^[a-z][a-z0-9_./-]{0,63}$ (lower case, starting with a letter), "
            "e.g. 'accuracy' or 'val/loss'"
        )


def _show(value: Any, limit: int = 80) -> str:
    """repr() of a user value, shortened so one bad field cannot flood a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not run_id:
        raise InvalidArgument("run_id is required: choose a unique id per run, e.g. a UUID")
    if not RUN_ID_RE.fullmatch(run_id):
        raise InvalidArgument(
            f"run_id {_show(run_id)} is invalid: use 1-128 characters from [A-Za-z0-9_.-] "
            "starting with a letter or digit (e.g. a UUID)"
        )


def _check_model_version_syntax(name: str, *, field_name: str) -> str:
    """The model id inside a version name; InvalidArgument naming `field_name` if malformed."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(
            f"{field_name} is required: models/{{model}}/versions/{{version}}, "
            "e.g. models/digits/versions/latest"
        )
    try:
        return parse_version_name(name).model_id
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field_name}: {exc}") from None


def _check_strategy(strategy: str, *, field_name: str = "strategy.name") -> None:
    if not isinstance(strategy, str) or not strategy:
        raise InvalidArgument(f"{field_name} is required, e.g. 'full' or 'surgical:block2'")
    if not STRATEGY_RE.fullmatch(strategy):
        raise InvalidArgument(
            f"{field_name} {_show(strategy)} is invalid: use 1-128 characters matching "
            "^[a-z][a-z0-9_:.-]{0,127}$, e.g. 'lp-ft' or 'surgical:block2'"
        )


def _check_hyperparameters(hyperparameters: dict[str, str]) -> None:
    if len(hyperparameters) > MAX_HYPERPARAMETERS:
        raise InvalidArgument(
            f"strategy.hyperparameters has {len(hyperparameters)} entries; at most "
            f"{MAX_HYPERPARAMETERS} are allowed: report only the ones that define the run"
        )
    for key, value in hyperparameters.items():
        if not isinstance(key, str) or not METRIC_NAME_RE.fullmatch(key):
            raise InvalidArgument(
                f"hyperparameter name {_show(key)} is invalid: use 1-64 characters matching "
                "^[a-z][a-z0-9_./-]{0,63}$, e.g. 'lr' or 'batch_size'"
            )
        if not isinstance(value, str):
            raise InvalidArgument(f"hyperparameter {key!r} must be a string, e.g. '3e-4'")
        if len(value) > MAX_HYPERPARAMETER_VALUE:
            raise InvalidArgument(
                f"hyperparameter {key!r} is {len(value)} characters long; at most "
                f"{MAX_HYPERPARAMETER_VALUE} are allowed"
            )
        # Control characters have no place in a setting, and PostgreSQL refuses NUL.
        if not value.isprintable():
            raise InvalidArgument(
                f"hyperparameter {key!r} contains control characters; use printable text only"
            )


def _check_metrics(metrics: dict[str, float]) -> None:
    # The count is checked first so a huge report is refused without walking it.
    if not metrics:
        raise InvalidArgument("metrics is empty: report at least one metric, e.g. 'accuracy'")
    if len(metrics) > MAX_METRICS:
        raise InvalidArgument(
            f"metrics has {len(metrics)} entries; at most {MAX_METRICS} are allowed per run: "
            "report aggregate metrics only"
        )
    for name, value in metrics.items():
        validate_metric_name(name, field_name="metric name")
        if not _is_number(value):
            raise InvalidArgument(f"metric {name!r} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise InvalidArgument(
                f"metric {name!r} is {value}; metric values must be finite: "
                "drop the metric or fix the computation that produced it"
            )


def _check_privacy(privacy: RunPrivacy) -> None:
    numbers = {
        "epsilon_spent": privacy.epsilon_spent,
        "delta": privacy.delta,
        "noise_multiplier": privacy.noise_multiplier,
        "max_grad_norm": privacy.max_grad_norm,
    }
    for key, value in numbers.items():
        if not _is_number(value) or not math.isfinite(value):
            raise InvalidArgument(f"privacy.{key} is {_show(value)}; it must be a finite number")
    if not privacy.dp:
        nonzero = [key for key, value in numbers.items() if value != 0]
        if nonzero:
            raise InvalidArgument(
                f"privacy.dp is false but {', '.join('privacy.' + k for k in nonzero)} "
                "is set: set dp=true for a DP run, or leave all privacy numbers at 0"
            )
        return
    if privacy.epsilon_spent <= 0:
        raise InvalidArgument(
            f"privacy.epsilon_spent is {privacy.epsilon_spent} but a DP run must report "
            "the epsilon it spent (> 0)"
        )
    if not 0 < privacy.delta < 1:
        raise InvalidArgument(f"privacy.delta is {privacy.delta}; it must be in (0, 1), e.g. 1e-5")
    if privacy.noise_multiplier < 0:
        raise InvalidArgument(
            f"privacy.noise_multiplier is {privacy.noise_multiplier}; it must be >= 0"
        )
    if privacy.max_grad_norm <= 0:
        raise InvalidArgument(
            f"privacy.max_grad_norm is {privacy.max_grad_norm}; a DP run clips per-example "
            "gradients to a norm > 0"
        )


def _check_train_examples(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgument(f"train_examples_pow2 must be an integer, got {_show(n)}")
    if n < 1 or n > MAX_TRAIN_EXAMPLES_POW2 or n & (n - 1):
        raise InvalidArgument(
            f"train_examples_pow2 is {n}; it must be a power of two >= 1: round the "
            "training-set size to the nearest power of two (never report the exact count)"
        )


def _check_device_kind(kind: str) -> None:
    if kind not in DEVICE_KINDS:
        got = "missing" if not kind else _show(kind)
        raise InvalidArgument(f"device_kind is {got}; use one of {', '.join(DEVICE_KINDS)}")


def _check_wall_seconds(seconds: float) -> None:
    if not _is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"wall_seconds is {_show(seconds)}; it must be a finite number >= 0")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------
# Storage. create_time is kept as integer microseconds since the epoch: the
# same type and ordering on SQLite and PostgreSQL, and an exact cursor value.

metadata = sa.MetaData()

runs_table = sa.Table(
    "xfer_runs",
    metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    # models/{m}: lets "all versions of a model" be an indexed equality filter.
    sa.Column("model", sa.String(80), nullable=False),
    sa.Column("model_version", sa.String(256), nullable=False),
    # The name as the client sent it (maybe an alias), so a retry naming the
    # same alias is recognised even after the alias has moved on.
    sa.Column("requested_version", sa.String(256), nullable=False),
    sa.Column("strategy", sa.String(128), nullable=False),
    sa.Column("hyperparameters_json", sa.Text, nullable=False),
    sa.Column("dp", sa.Boolean, nullable=False),
    sa.Column("epsilon_spent", sa.Double, nullable=False),
    sa.Column("delta", sa.Double, nullable=False),
    sa.Column("noise_multiplier", sa.Double, nullable=False),
    sa.Column("max_grad_norm", sa.Double, nullable=False),
    sa.Column("train_examples_pow2", sa.BigInteger, nullable=False),
    sa.Column("device_kind", sa.String(8), nullable=False),
    sa.Column("wall_seconds", sa.Double, nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Index("ix_xfer_runs_newest", "create_us", "run_id"),
    sa.Index("ix_xfer_runs_model_newest", "model", "create_us", "run_id"),
    sa.Index("ix_xfer_runs_version_newest", "model_version", "create_us", "run_id"),
)

run_metrics_table = sa.Table(
    "xfer_run_metrics",
    metadata,
    sa.Column(
        "run_id",
        sa.String(128),
        sa.ForeignKey("xfer_runs.run_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Double, nullable=False),
    # SummarizeRuns selects by metric name first.
    sa.Index("ix_xfer_run_metrics_name", "name", "run_id"),
)


@dataclass(frozen=True)
class _Loaded:
    """A stored run plus the version name its first report used (not on the wire)."""

    run: StoredRun
    requested_version: str


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class RunStore:
    """Stores run reports; lists them newest first; summarizes one metric."""

    def __init__(
        self,
        *,
        engine: Engine,
        resolve_version: Callable[[str], str],
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Create the tables if needed.

        `resolve_version` turns models/{m}/versions/{v-or-alias} into the
        canonical numbered name, raising NotFound or InvalidArgument. `now`
        is the clock for create_time (tests pin it).
        """
        self._engine = engine
        self._resolve_version = resolve_version
        self._now = now
        metadata.create_all(engine)

    # -- ReportRun ---------------------------------------------------------

    def report(self, run: RunReport) -> ReportOutcome:
        """Store `run` once; a retry with identical content returns it as a duplicate.

        Raises InvalidArgument (malformed report), NotFound (model version)
        or AlreadyExists (this run_id was stored with different content).
        """
        validate_report(run)
        run = _normalized(run)
        # A retry is answered from what is stored before anything else.
        loaded = self._load(run.run_id)
        if loaded is not None:
            return self._duplicate_outcome(loaded, run)
        resolved = dataclasses.replace(
            run, model_version=self._resolve(run.model_version, field_name="model_version")
        )
        create_time = self._now()
        try:
            with write_transaction(self._engine) as conn:
                self._insert(
                    conn,
                    resolved,
                    requested_version=run.model_version,
                    create_us=_to_us(create_time),
                )
        except sa.exc.IntegrityError:
            # A concurrent report with the same run_id won the primary key.
            loaded = self._load(run.run_id)
            if loaded is None:
                raise
            return self._duplicate_outcome(loaded, run)
        logger.info(
            "stored run %s (%s, %s)", resolved.run_id, resolved.model_version, resolved.strategy
        )
        stored = StoredRun(
            name=f"runs/{resolved.run_id}",
            report=resolved,
            create_time=_from_us(_to_us(create_time)),
        )
        return ReportOutcome(run=stored, duplicate=False)

    def get(self, run_id: str) -> StoredRun:
        """Return the run stored under `run_id`, or raise NotFound."""
        _check_run_id(run_id)
        loaded = self._load(run_id)
        if loaded is None:
            raise NotFound(f"run {run_id!r} does not exist; list runs to see the stored ids")
        return loaded.run

    def _duplicate_outcome(self, loaded: _Loaded, run: RunReport) -> ReportOutcome:
        stored = loaded.run
        if run.model_version in (stored.report.model_version, loaded.requested_version):
            # The same name as the first report (an alias may have moved since).
            run = dataclasses.replace(run, model_version=stored.report.model_version)
        else:
            run = dataclasses.replace(
                run, model_version=self._resolve(run.model_version, field_name="model_version")
            )
        if run != stored.report:
            differing = [
                f.name
                for f in dataclasses.fields(RunReport)
                if getattr(run, f.name) != getattr(stored.report, f.name)
            ]
            raise AlreadyExists(
                f"run_id {run.run_id!r} is already stored with different content "
                f"(differs in {', '.join(differing)}): use a new run_id for a new run"
            )
        logger.info("duplicate report of run %s", run.run_id)
        return ReportOutcome(run=stored, duplicate=True)

    def _resolve(self, name: str, *, field_name: str) -> str:
        canonical = self._resolve_version(name)
        if parse_version_name(canonical).version is None:
            # A resolver bug would otherwise be stored for good.
            raise RuntimeError(f"resolve_version returned {canonical!r} for {field_name} {name!r}")
        return canonical

    def _insert(
        self, conn: Connection, run: RunReport, *, requested_version: str, create_us: int
    ) -> None:
        model = parse_version_name(run.model_version).model_id
        conn.execute(
            runs_table.insert().values(
                run_id=run.run_id,
                model=f"models/{model}",
                model_version=run.model_version,
                requested_version=requested_version,
                strategy=run.strategy,
                hyperparameters_json=json.dumps(run.hyperparameters, sort_keys=True),
                dp=run.privacy.dp,
                epsilon_spent=run.privacy.epsilon_spent,
                delta=run.privacy.delta,
                noise_multiplier=run.privacy.noise_multiplier,
                max_grad_norm=run.privacy.max_grad_norm,
                train_examples_pow2=run.train_examples_pow2,
                device_kind=run.device_kind,
                wall_seconds=run.wall_seconds,
                create_us=create_us,
            )
        )
        conn.execute(
            run_metrics_table.insert(),
            [{"run_id": run.run_id, "name": k, "value": v} for k, v in run.metrics.items()],
        )

    def _load(self, run_id: str) -> _Loaded | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(runs_table).where(runs_table.c.run_id == run_id)
            ).one_or_none()
            if row is None:
                return None
            metrics = _metrics_of(conn, [run_id])
        return _Loaded(
            run=_stored_from_row(row, metrics.get(run_id, {})),
            requested_version=row.requested_version,
        )

    # -- ListRuns ----------------------------------------------------------

    def list_runs(
        self,
        *,
        model: str | None = None,
        strategy: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> RunPage:
        """One page of runs, newest first (ties broken by run_id, descending).

        `model` is models/{m} (every version of m) or a version name (an alias
        is resolved); `strategy` matches exactly. `page_size` 0 means 50;
        larger than 1000 is served as 1000. A `page_token` is only valid with
        the filters of the request that returned it.
        """
        size = page_size_of(page_size)
        model = model or ""
        strategy = strategy or ""
        conditions = self._filter_conditions(model=model, strategy=strategy)
        # The filters are part of the token's query, so a token cannot be reused with other ones.
        listing = json.dumps(["runs", model, strategy])
        if page_token:
            create_us, last_id = _decode_cursor(page_token, query=listing)
            conditions.append(
                sa.or_(
                    runs_table.c.create_us < create_us,
                    sa.and_(runs_table.c.create_us == create_us, runs_table.c.run_id < last_id),
                )
            )
        query = (
            sa.select(runs_table)
            .where(*conditions)
            .order_by(runs_table.c.create_us.desc(), runs_table.c.run_id.desc())
            .limit(size + 1)  # one more row tells whether a next page exists
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            page = rows[:size]
            metrics = _metrics_of(conn, [row.run_id for row in page])
        runs = [_stored_from_row(row, metrics.get(row.run_id, {})) for row in page]
        token = ""
        if len(rows) > size:
            last = page[-1]
            token = PageTokens.encode(query=listing, last=[last.create_us, last.run_id])
        return RunPage(runs=runs, next_page_token=token)

    def _filter_conditions(self, *, model: str, strategy: str) -> list[Any]:
        conditions: list[Any] = []
        if model:
            conditions.append(self._model_condition(model))
        if strategy:
            _check_strategy(strategy, field_name="strategy filter")
            conditions.append(runs_table.c.strategy == strategy)
        return conditions

    def _model_condition(self, model: str) -> Any:
        parts = model.count("/") + 1
        if parts == 2:
            try:
                parse_model_name(model)
            except InvalidArgument as exc:
                raise InvalidArgument(f"model filter: {exc}") from None
            return runs_table.c.model == model
        if parts == 4:
            _check_model_version_syntax(model, field_name="model filter")
            try:
                canonical = self._resolve(model, field_name="model")
            except NotFound:
                # Runs outlive a deleted version; a filter that matches
                # nothing is an empty result, not an error.
                canonical = model
            return runs_table.c.model_version == canonical
        raise InvalidArgument(
            f"model filter {_show(model)} is invalid: use models/{{model}} for every version "
            "of a model or models/{model}/versions/{version} for one"
        )

    # -- SummarizeRuns -----------------------------------------------------

    def summarize(
        self, *, metric: str, model: str | None = None, goal: str = "maximize"
    ) -> list[LeaderboardRow]:
        """The leaderboard of `metric` per (model version, strategy, dp), best mean first.

        Only runs that reported `metric` count. `std` is the sample standard
        deviation (0 for one run); `best` is the max (or min, for goal
        "minimize") and `best_run_id` the smallest run_id reaching it. An
        unknown metric gives an empty list.
        """
        validate_metric_name(metric)
        if goal not in GOALS:
            raise InvalidArgument(f"goal {_show(goal)} is invalid; use one of {', '.join(GOALS)}")
        conditions = [run_metrics_table.c.name == metric]
        if model:
            conditions.append(self._model_condition(model))
        rows = self._leaderboard_rows(conditions, maximize=goal == "maximize")
        sign = -1.0 if goal == "maximize" else 1.0
        rows.sort(key=lambda r: (sign * r.mean, r.model_version, r.strategy, r.dp))
        return rows

    def _leaderboard_rows(self, conditions: list[Any], *, maximize: bool) -> list[LeaderboardRow]:
        # Two passes in SQL, portable to SQLite (which has no stddev): the
        # first finds each group's count, mean and best; the second sums
        # squared deviations from that mean (numerically stable, unlike
        # sum(x^2) - n*mean^2) and finds the run that reached the best.
        runs, values = runs_table, run_metrics_table
        base = (
            sa.select(
                runs.c.model_version, runs.c.strategy, runs.c.dp, runs.c.run_id, values.c.value
            )
            .join_from(runs, values, runs.c.run_id == values.c.run_id)
            .where(*conditions)
            .cte("base")
        )
        keys = (base.c.model_version, base.c.strategy, base.c.dp)
        best_of = sa.func.max if maximize else sa.func.min
        stats = (
            sa.select(
                *keys,
                sa.func.count().label("n"),
                sa.func.avg(base.c.value).label("mean"),
                best_of(base.c.value).label("best"),
            )
            .group_by(*keys)
            .subquery("stats")
        )
        deviation = base.c.value - stats.c.mean
        query = (
            sa.select(
                stats.c.model_version,
                stats.c.strategy,
                stats.c.dp,
                stats.c.n,
                stats.c.mean,
                stats.c.best,
                sa.func.sum(deviation * deviation).label("ss"),
                sa.func.min(sa.case((base.c.value == stats.c.best, base.c.run_id))).label(
                    "best_run_id"
                ),
            )
            .join_from(
                base,
                stats,
                sa.and_(
                    base.c.model_version == stats.c.model_version,
                    base.c.strategy == stats.c.strategy,
                    base.c.dp == stats.c.dp,
                ),
            )
            .group_by(
                stats.c.model_version,
                stats.c.strategy,
                stats.c.dp,
                stats.c.n,
                stats.c.mean,
                stats.c.best,
            )
        )
        with self._engine.connect() as conn:
            result = conn.execute(query).all()
        return [
            LeaderboardRow(
                model_version=row.model_version,
                strategy=row.strategy,
                dp=bool(row.dp),
                count=int(row.n),
                mean=float(row.mean),
                std=math.sqrt(max(float(row.ss), 0.0) / (row.n - 1)) if row.n > 1 else 0.0,
                best=float(row.best),
                best_run_id=row.best_run_id,
            )
            for row in result
        ]


# --------------------------------------------------------------------------
# Helpers: rows <-> dataclasses, time, page tokens.


def _normalized(run: RunReport) -> RunReport:
    """Plain dicts and floats, so a retry compares equal to what was stored."""
    return dataclasses.replace(
        run,
        metrics={k: float(v) for k, v in run.metrics.items()},
        hyperparameters=dict(run.hyperparameters),
        privacy=RunPrivacy(
            dp=bool(run.privacy.dp),
            epsilon_spent=float(run.privacy.epsilon_spent),
            delta=float(run.privacy.delta),
            noise_multiplier=float(run.privacy.noise_multiplier),
            max_grad_norm=float(run.privacy.max_grad_norm),
        ),
        wall_seconds=float(run.wall_seconds),
    )


def _metrics_of(conn: Connection, run_ids: list[str]) -> dict[str, dict[str, float]]:
    if not run_ids:
        return {}
    rows = conn.execute(
        sa.select(run_metrics_table).where(run_metrics_table.c.run_id.in_(run_ids))
    ).all()
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        out.setdefault(row.run_id, {})[row.name] = float(row.value)
    return out


def _stored_from_row(row: Any, metrics: dict[str, float]) -> StoredRun:
    report = RunReport(
        run_id=row.run_id,
        model_version=row.model_version,
        strategy=row.strategy,
        metrics=metrics,
        hyperparameters=json.loads(row.hyperparameters_json),
        privacy=RunPrivacy(
            dp=bool(row.dp),
            epsilon_spent=float(row.epsilon_spent),
            delta=float(row.delta),
            noise_multiplier=float(row.noise_multiplier),
            max_grad_norm=float(row.max_grad_norm),
        ),
        train_examples_pow2=int(row.train_examples_pow2),
        device_kind=row.device_kind,
        wall_seconds=float(row.wall_seconds),
    )
    return StoredRun(name=f"runs/{row.run_id}", report=report, create_time=_from_us(row.create_us))


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("create_time clock must return an aware datetime")
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).replace(
        microsecond=us % 1_000_000
    )


def _decode_cursor(token: str, *, query: str) -> tuple[int, str]:
    """The (create_us, run_id) cursor inside a ListRuns page token."""
    cursor = PageTokens.decode(token, query=query, kind=list)
    if (
        len(cursor) != 2
        or not isinstance(cursor[0], int)
        or isinstance(cursor[0], bool)
        or not 0 <= cursor[0] < 2**63
        or not isinstance(cursor[1], str)
        or not RUN_ID_RE.fullmatch(cursor[1])
    ):
        raise PageTokens.invalid()
    return cursor[0], cursor[1]
