"""Versioned migrations (server/migrate.py): applied once under a lock, however many replicas start at once."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xfer.server import migrate, schema
from xfer.server.db import create_engine
from xfer.server.process import ServerProcess, ServerStartError

pytestmark = pytest.mark.timeout(240)
XFER_SERVER = Path(sys.executable).parent / "xfer-server"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'xfer.db'}"
    return request.getfixturevalue("postgres_url")


def test_head_matches_the_schema_the_code_uses(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        result = migrate.upgrade(engine)
        assert result.before is None and result.after == migrate.head_revision() and result.changed
        assert not migrate.upgrade(engine).changed
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
    finally:
        engine.dispose()


def test_concurrent_upgrades_apply_each_migration_once(db_url: str) -> None:
    engines = [create_engine(db_url) for _ in range(6)]
    barrier = threading.Barrier(len(engines))
    results, errors = [], []

    def run(engine) -> None:
        barrier.wait()
        try:
            results.append(migrate.upgrade(engine))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert sum(r.changed for r in results) == 1  # one migrated, the others found it done
        assert {r.after for r in results} == {migrate.head_revision()}
    finally:
        for engine in engines:
            engine.dispose()


def test_a_database_from_before_migrations_is_adopted_with_its_data(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate.upgrade(engine, revision=migrate.BASELINE_REVISION)  # the tables the first release's create_all made
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))  # ... and it kept no history
    with engine.begin() as conn:
        conn.execute(
            schema.models_table.insert().values(model_id="kept", last_version=3, create_time_us=1, update_time_us=1)
        )
    result = migrate.upgrade(engine)
    assert result.adopted and result.after == migrate.head_revision()
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema.models_table.c.last_version)).scalar_one() == 3
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
    engine.dispose()


def test_half_a_schema_without_history_is_refused(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'odd.db'}")
    schema.models_table.to_metadata(sa.MetaData()).create(engine)
    with pytest.raises(migrate.SchemaError, match="has some xfer tables"):
        migrate.upgrade(engine)
    engine.dispose()


def test_migrate_command_then_a_server_that_does_not_migrate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    refused = ServerProcess(data_dir=data, args=("--no-migrate", "--lazy-sandbox"), startup_timeout=60)
    with pytest.raises(ServerStartError):
        refused.start()
    assert refused.proc.returncode == 2 and "run `xfer-server migrate`" in refused.log_text()
    first = subprocess.run(
        [str(XFER_SERVER), "migrate", "--data-dir", str(data)], capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0 and f"migrated from empty to revision {migrate.head_revision()}" in first.stdout
    again = subprocess.run(
        [str(XFER_SERVER), "migrate", "--data-dir", str(data)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "already at revision" in again.stdout
    with (
        ServerProcess(data_dir=data, args=("--no-migrate", "--lazy-sandbox")) as server,
        grpc.insecure_channel(server.target) as ch,
    ):
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1


@pytest.mark.postgres
def test_replicas_started_at_the_same_moment_on_one_postgresql_all_come_up(tmp_path: Path, postgres_server) -> None:
    """The issue's race (UniqueViolation pg_type_typname_nsp_index in 3 of 11 rounds), over several rounds."""
    for round_ in range(2):
        url = postgres_server.new_database()
        replicas = [
            ServerProcess(data_dir=tmp_path / f"r{round_}-{i}" / "data", args=("--db-url", url, "--lazy-sandbox"))
            for i in range(3)
        ]
        threads = [threading.Thread(target=r.start) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            for replica in replicas:
                assert replica.running, replica.log_tail()
                with grpc.insecure_channel(replica.target) as channel:
                    assert (
                        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
                        == 1
                    )
            assert "UniqueViolation" not in "".join(r.log_text() for r in replicas)
        finally:
            for replica in replicas:
                assert replica.stop() == 0
        engine = create_engine(url)
        assert migrate.current_revision(engine) == migrate.head_revision()
        engine.dispose()
