"""The one shared piece of database plumbing: an engine configured per dialect."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

#: Milliseconds a SQLite writer waits for the lock before failing with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Execution option marking a connection whose transactions will write (see `write_transaction`).
WRITE_OPTION = "xfer_write"
#: Seconds a PostgreSQL connection attempt may take: a database that is down must turn into
#: UNAVAILABLE quickly, not hold a worker for the operating system's TCP timeout.
CONNECT_TIMEOUT_S = 5


def create_engine(url: str) -> sa.Engine:
    """A SQLAlchemy engine for `url` (SQLite file or PostgreSQL via psycopg 3).

    SQLite gets WAL (readers never block the writer), foreign keys (off by
    default there) and a busy timeout. A bare `postgresql://` URL is pointed at
    psycopg 3, the driver this project installs, instead of psycopg2.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # Let SQLAlchemy, not the sqlite3 module, emit BEGIN (see _sqlite_begin).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(connection: sa.Connection) -> None:
            # A deferred transaction that reads and then writes fails at once with
            # SQLITE_BUSY when another writer committed in between; a write
            # transaction therefore takes the write lock up front.
            immediate = connection.get_execution_options().get(WRITE_OPTION, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() == "postgresql" else {}
    # pre_ping: after the database restarts, pooled connections are dead; each is tested before use.
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


@contextlib.contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that is going to write; commits on success.

    On SQLite it starts with BEGIN IMMEDIATE; elsewhere it is `engine.begin()`.
    """
    with engine.connect() as connection:
        connection = connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            yield connection


def dialect_insert(conn: sa.Connection):
    """The dialect's INSERT construct that knows ON CONFLICT (SQLite and PostgreSQL spell it alike)."""
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert
    if name == "postgresql":
        return postgresql.insert
    raise NotImplementedError(f"database dialect {name!r} is not supported; use SQLite or PostgreSQL")


def insert_ignore(conn: sa.Connection, table: sa.Table):
    """INSERT ... ON CONFLICT DO NOTHING into `table`."""
    return dialect_insert(conn)(table).on_conflict_do_nothing()
