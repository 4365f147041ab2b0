"""Storage of run reports: report (idempotent on run_id), get, list newest first, summarize.

Reports live in their own tables (server/schema.py; the same code on SQLite
and PostgreSQL). A retry of the same report is stored once; a different
report under the same id is refused with AlreadyExists (reason
RUN_ID_CONFLICT). This module never imports generated protobuf code;
server/convert.py translates between the wire and server/runs.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from xfer import names
from xfer.server.db import write_transaction
from xfer.server.errors import AlreadyExists, InvalidArgument, NotFound, Reason
from xfer.server.leaderboard import leaderboard_rows
from xfer.server.names import parse_model_name, parse_version_name
from xfer.server.pagination import MAX_CURSOR_INT, PageTokens, page_size_of
from xfer.server.run_checks import (
    check_model_version_syntax,
    check_run_id,
    check_strategy,
    show,
    validate_metric_name,
    validate_report,
)
from xfer.server.runs import GOALS, LeaderboardRow, ReportOutcome, RunPage, RunPrivacy, RunReport, StoredRun
from xfer.server.schema import run_metrics_table, runs_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    """A stored run plus the version name its first report used (not on the wire)."""

    run: StoredRun
    requested_version: str


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RunStore:
    """Stores run reports; lists them newest first; summarizes one metric."""

    def __init__(
        self,
        *,
        engine: Engine,
        resolve_version: Callable[[str], str],
        page_tokens: PageTokens,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`resolve_version` turns models/{m}/versions/{v-or-alias} into the canonical numbered name,
        raising NotFound or InvalidArgument. `now` is the clock for create_time (tests pin it).
        The tables must exist (`xfer.server.migrate.upgrade`)."""
        self._engine = engine
        self._resolve_version = resolve_version
        self._tokens = page_tokens
        self._now = now

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
        resolved = dataclasses.replace(run, model_version=self._resolve(run.model_version, field_name="model_version"))
        create_time = self._now()
        try:
            with write_transaction(self._engine) as conn:
                self._insert(conn, resolved, requested_version=run.model_version, create_us=_to_us(create_time))
        except sa.exc.IntegrityError:
            # A concurrent report with the same run_id won the primary key.
            loaded = self._load(run.run_id)
            if loaded is None:
                raise
            return self._duplicate_outcome(loaded, run)
        logger.info("stored run %s (%s, %s)", resolved.run_id, resolved.model_version, resolved.strategy)
        stored = StoredRun(name=f"runs/{resolved.run_id}", report=resolved, create_time=_from_us(_to_us(create_time)))
        return ReportOutcome(run=stored, duplicate=False)

    def get(self, run_id: str) -> StoredRun:
        """Return the run stored under `run_id`, or raise NotFound."""
        check_run_id(run_id, field_name="run_id")
        loaded = self._load(run_id)
        if loaded is None:
            raise NotFound(
                f"run {run_id!r} does not exist; list runs to see the stored ids",
                reason=Reason.RUN_NOT_FOUND,
                metadata={"run_id": run_id},
            )
        return loaded.run

    def _duplicate_outcome(self, loaded: _Loaded, run: RunReport) -> ReportOutcome:
        stored = loaded.run
        if run.model_version in (stored.report.model_version, loaded.requested_version):
            # The same name as the first report (an alias may have moved since).
            run = dataclasses.replace(run, model_version=stored.report.model_version)
        else:
            run = dataclasses.replace(run, model_version=self._resolve(run.model_version, field_name="model_version"))
        if run != stored.report:
            differing = [
                f.name for f in dataclasses.fields(RunReport) if getattr(run, f.name) != getattr(stored.report, f.name)
            ]
            raise AlreadyExists(
                f"run_id {run.run_id!r} is already stored with different content "
                f"(differs in {', '.join(differing)}): use a new run_id for a new run",
                reason=Reason.RUN_ID_CONFLICT,
                metadata={"run_id": run.run_id},
            )
        logger.info("duplicate report of run %s", run.run_id)
        return ReportOutcome(run=stored, duplicate=True)

    def _resolve(self, name: str, *, field_name: str) -> str:
        canonical = self._resolve_version(name)
        if parse_version_name(canonical).version is None:
            # A resolver bug would otherwise be stored for good.
            raise RuntimeError(f"resolve_version returned {canonical!r} for {field_name} {name!r}")
        return canonical

    @staticmethod
    def _insert(conn: Connection, run: RunReport, *, requested_version: str, create_us: int) -> None:
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
            run_metrics_table.insert(), [{"run_id": run.run_id, "name": k, "value": v} for k, v in run.metrics.items()]
        )

    def _load(self, run_id: str) -> _Loaded | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.run_id == run_id)).one_or_none()
            if row is None:
                return None
            metrics = _metrics_of(conn, [run_id])
        return _Loaded(run=_stored_from_row(row, metrics.get(run_id, {})), requested_version=row.requested_version)

    # -- ListRuns ----------------------------------------------------------
    def list_runs(
        self, *, model: str | None = None, strategy: str | None = None, page_size: int = 0, page_token: str = ""
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
            create_us, last_id = self._decode_cursor(page_token, query=listing)
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
            .limit(size + 1)
        )  # one more row tells whether a next page exists
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            page = rows[:size]
            metrics = _metrics_of(conn, [row.run_id for row in page])
        runs = [_stored_from_row(row, metrics.get(row.run_id, {})) for row in page]
        token = ""
        if len(rows) > size:
            last = page[-1]
            token = self._tokens.encode(query=listing, last=[last.create_us, last.run_id])
        return RunPage(runs=runs, next_page_token=token)

    def _decode_cursor(self, token: str, *, query: str) -> tuple[int, str]:
        """The (create_us, run_id) cursor inside a ListRuns page token."""
        cursor = self._tokens.decode(token, query=query, kind=list)
        assert isinstance(cursor, list)
        if (
            len(cursor) != 2
            or not isinstance(cursor[0], int)
            or isinstance(cursor[0], bool)
            or not 0 <= cursor[0] <= MAX_CURSOR_INT
            or not isinstance(cursor[1], str)
            or not names.RUN_ID.fullmatch(cursor[1])
        ):
            raise PageTokens.invalid()
        return cursor[0], cursor[1]

    def _filter_conditions(self, *, model: str, strategy: str) -> list[Any]:
        conditions: list[Any] = []
        if model:
            conditions.append(self._model_condition(model))
        if strategy:
            check_strategy(strategy, field_name="strategy")
            conditions.append(runs_table.c.strategy == strategy)
        return conditions

    def _model_condition(self, model: str) -> Any:
        parts = model.count("/") + 1
        if parts == 2:
            try:
                parse_model_name(model, field="model")
            except InvalidArgument as exc:
                raise InvalidArgument(f"model filter: {exc}", reason=exc.reason, field="model") from None
            return runs_table.c.model == model
        if parts == 4:
            check_model_version_syntax(model, field_name="model filter", field="model")
            try:
                canonical = self._resolve(model, field_name="model")
            except NotFound:
                # Runs outlive a deleted version; a filter that matches
                # nothing is an empty result, not an error.
                canonical = model
            return runs_table.c.model_version == canonical
        raise InvalidArgument(
            f"model filter {show(model)} is invalid: use models/{{model}} for every version "
            "of a model or models/{model}/versions/{version} for one",
            reason=Reason.INVALID_NAME,
            field="model",
        )

    # -- SummarizeRuns -----------------------------------------------------
    def summarize(self, *, metric: str, model: str | None = None, goal: str = "maximize") -> list[LeaderboardRow]:
        """The leaderboard of `metric` per (model version, strategy, dp), best mean first.

        Only runs that reported `metric` count. `best` is the max (or min, for
        goal "minimize"). An unknown metric gives an empty list.
        """
        validate_metric_name(metric)
        if goal not in GOALS:
            raise InvalidArgument(
                f"goal {show(goal)} is invalid; use one of {', '.join(GOALS)}",
                reason=Reason.INVALID_REQUEST,
                field="goal",
            )
        conditions = [run_metrics_table.c.name == metric]
        if model:
            conditions.append(self._model_condition(model))
        rows = leaderboard_rows(self._engine, conditions=conditions, maximize=goal == "maximize")
        sign = -1.0 if goal == "maximize" else 1.0
        rows.sort(key=lambda r: (sign * r.mean, r.model_version, r.strategy, r.dp))
        return rows


# -- rows <-> dataclasses, time -----------------------------------------------------
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
    rows = conn.execute(sa.select(run_metrics_table).where(run_metrics_table.c.run_id.in_(run_ids))).all()
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
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)
