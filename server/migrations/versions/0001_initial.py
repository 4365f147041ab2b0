"""The first release's schema: models, versions, artifacts, aliases, runs and their metrics.

Databases created before migrations existed (by `create_all`) have exactly
these tables; `xfer.server.migrate` stamps them with this revision instead of
creating the tables again.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xfer_models",
        sa.Column("model_id", sa.String(63), primary_key=True),
        sa.Column("last_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "xfer_versions",
        sa.Column(
            "model_id", sa.String(63), sa.ForeignKey("xfer_models.model_id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("card_json", sa.Text, nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("deprecated", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("deprecation_message", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "xfer_artifacts",
        sa.Column("model_id", sa.String(63), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("format", sa.String(32), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("derived", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.ForeignKeyConstraint(
            ["model_id", "version"], ["xfer_versions.model_id", "xfer_versions.version"], ondelete="CASCADE"
        ),
    )
    op.create_index("ix_xfer_artifacts_sha256", "xfer_artifacts", ["sha256"])
    op.create_table(
        "xfer_aliases",
        sa.Column("model_id", sa.String(63), primary_key=True),
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id", "version"], ["xfer_versions.model_id", "xfer_versions.version"], ondelete="CASCADE"
        ),
    )
    op.create_table(
        "xfer_runs",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(80), nullable=False),
        sa.Column("model_version", sa.String(256), nullable=False),
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
    )
    op.create_index("ix_xfer_runs_newest", "xfer_runs", ["create_us", "run_id"])
    op.create_index("ix_xfer_runs_model_newest", "xfer_runs", ["model", "create_us", "run_id"])
    op.create_index("ix_xfer_runs_version_newest", "xfer_runs", ["model_version", "create_us", "run_id"])
    op.create_table(
        "xfer_run_metrics",
        sa.Column("run_id", sa.String(128), sa.ForeignKey("xfer_runs.run_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Double, nullable=False),
    )
    op.create_index("ix_xfer_run_metrics_name", "xfer_run_metrics", ["name", "run_id"])


def downgrade() -> None:
    for table in ("xfer_run_metrics", "xfer_runs", "xfer_aliases", "xfer_artifacts", "xfer_versions", "xfer_models"):
        op.drop_table(table)
