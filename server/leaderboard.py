"""The leaderboard query of SummarizeRuns: per (model version, strategy, dp), count/mean/std/best of one metric."""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa

from xfer.server.runs import LeaderboardRow
from xfer.server.schema import run_metrics_table, runs_table


def leaderboard_rows(engine: sa.Engine, *, conditions: list[Any], maximize: bool) -> list[LeaderboardRow]:
    """One row per group of the runs matching `conditions` (in no particular order).

    Two passes in SQL, portable to SQLite (which has no stddev): the first
    finds each group's count, mean and best; the second sums squared
    deviations from that mean (numerically stable, unlike sum(x^2) - n*mean^2)
    and finds the run that reached the best. `std` is the sample standard
    deviation (0 for one run); `best_run_id` is the smallest run id reaching
    the best value.
    """
    runs, values = runs_table, run_metrics_table
    base = (
        sa.select(runs.c.model_version, runs.c.strategy, runs.c.dp, runs.c.run_id, values.c.value)
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
    group = (stats.c.model_version, stats.c.strategy, stats.c.dp, stats.c.n, stats.c.mean, stats.c.best)
    query = (
        sa.select(
            *group,
            sa.func.sum(deviation * deviation).label("ss"),
            sa.func.min(sa.case((base.c.value == stats.c.best, base.c.run_id))).label("best_run_id"),
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
        .group_by(*group)
    )
    with engine.connect() as conn:
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
