"""Versioned schema migrations (Alembic), applied once under a lock however many replicas start.

N replicas starting at the same moment against one PostgreSQL used to race
creating tables (`UniqueViolation pg_type_typname_nsp_index`). Here every
upgrade runs while holding a lock that all replicas share: a PostgreSQL
session advisory lock, or a file lock beside a SQLite database. The second
replica waits, then finds the schema at head and does nothing.

A database created before migrations existed (its tables made by
`create_all`) is adopted: it is stamped with the baseline revision, then
upgraded like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The revision whose tables a pre-migration database already has.
BASELINE_REVISION = "0001"
BASELINE_TABLES = frozenset(
    {"xfer_models", "xfer_versions", "xfer_artifacts", "xfer_aliases", "xfer_runs", "xfer_run_metrics"}
)
#: Key of the PostgreSQL advisory lock (any constant shared by every replica; "xfermigr" in ASCII).
ADVISORY_LOCK_KEY = 0x786665726D696772 & 0x7FFFFFFFFFFFFFFF


class SchemaError(RuntimeError):
    """The database schema is not what this server needs, and cannot be made so automatically."""


@dataclasses.dataclass(frozen=True)
class MigrationResult:
    """What `upgrade` did."""

    before: str | None
    after: str
    #: True when a pre-migration database was stamped with the baseline first.
    adopted: bool

    @property
    def changed(self) -> bool:
        """Whether any migration ran."""
        return self.before != self.after


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at; None for an empty (or pre-migration) database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def migration_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection holding the lock every migrating process takes (released on exit)."""
    backend = engine.dialect.name
    if backend == "sqlite":
        database = engine.url.database
        lock = FileLock(f"{database}.migrate.lock") if database and database != ":memory:" else contextlib.nullcontext()
        with lock, engine.connect() as connection:
            yield connection
        return
    with engine.connect() as connection:
        if backend == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()
        try:
            yield connection
        finally:
            if backend == "postgresql":
                connection.rollback()
                connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                connection.commit()


def _existing_tables(connection: sa.Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


def upgrade(engine: sa.Engine, *, revision: str = "head") -> MigrationResult:
    """Brings the schema to `revision` (default: head) under the migration lock; idempotent."""
    with migration_lock(engine) as connection:
        before = MigrationContext.configure(connection).get_current_revision()
        adopted = False
        if before is None:
            existing = _existing_tables(connection) & (BASELINE_TABLES | {"xfer_settings"})
            if existing:
                missing = BASELINE_TABLES - existing
                if missing:
                    raise SchemaError(
                        f"the database has some xfer tables ({sorted(existing)}) but not "
                        f"{sorted(missing)} and no migration history; restore it from a backup "
                        "or point --db-url at an empty database"
                    )
                logger.info("adopting a database created before migrations: stamping revision %s", BASELINE_REVISION)
                command.stamp(_config(connection), BASELINE_REVISION)
                connection.commit()
                adopted = True
        command.upgrade(_config(connection), revision)
        connection.commit()
        after = MigrationContext.configure(connection).get_current_revision()
    if after != before:
        logger.info("database schema migrated from %s to %s", before or "empty", after)
    assert after is not None
    return MigrationResult(before=before, after=after, adopted=adopted)


def require_head(engine: sa.Engine) -> None:
    """Raises SchemaError unless the database is at the head revision (for servers that do not migrate)."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaError(
            f"the database schema is at revision {current or 'none'} but this server needs "
            f"{head}; run `xfer-server migrate` with the same --db-url first"
        )
