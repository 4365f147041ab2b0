"""Every table of the server's database, as SQLAlchemy Core metadata.

The schema is created and changed only by the versioned migrations in
server/migrations (Alembic); this module is what the code reads and writes,
and tests/server/test_migrate.py checks that the two agree. Times are integer
microseconds since the epoch: the same type and ordering on SQLite and
PostgreSQL, and exact cursor values for paging.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# -- registry ------------------------------------------------------------------
models_table = sa.Table(
    "xfer_models",
    metadata,
    sa.Column("model_id", sa.String(63), primary_key=True),
    # Highest number ever handed out; numbers are not reused after deletes.
    sa.Column("last_version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("update_time_us", sa.BigInteger, nullable=False),
)

versions_table = sa.Table(
    "xfer_versions",
    metadata,
    sa.Column("model_id", sa.String(63), sa.ForeignKey("xfer_models.model_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("card_json", sa.Text, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("deprecated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deprecation_message", sa.Text, nullable=False, server_default=""),
    # [{"key_id", "algorithm", "signature" (base64)}]: the operator's signatures, as uploaded.
    sa.Column("signatures_json", sa.Text, nullable=False, server_default="[]"),
)

artifacts_table = sa.Table(
    "xfer_artifacts",
    metadata,
    sa.Column("model_id", sa.String(63), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("format", sa.String(32), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("derived", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.ForeignKeyConstraint(
        ["model_id", "version"], ["xfer_versions.model_id", "xfer_versions.version"], ondelete="CASCADE"
    ),
)

aliases_table = sa.Table(
    "xfer_aliases",
    metadata,
    sa.Column("model_id", sa.String(63), primary_key=True),
    sa.Column("alias", sa.String(32), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.ForeignKeyConstraint(
        ["model_id", "version"], ["xfer_versions.model_id", "xfer_versions.version"], ondelete="CASCADE"
    ),
)

# -- run reports -----------------------------------------------------------------
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
    sa.Column("run_id", sa.String(128), sa.ForeignKey("xfer_runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Double, nullable=False),
    # SummarizeRuns selects by metric name first.
    sa.Index("ix_xfer_run_metrics_name", "name", "run_id"),
)

# -- server-wide settings ----------------------------------------------------------
#: Values every replica must share, e.g. the key that signs page tokens.
settings_table = sa.Table(
    "xfer_settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
