"""Signatures over each version's manifest (model id, card, artifact digests), as operators upload them.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("xfer_versions", sa.Column("signatures_json", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    op.drop_column("xfer_versions", "signatures_json")
