"""Metadata store for models, versions, artifacts and aliases (SQLAlchemy Core).

The same code runs on SQLite (embedded default) and PostgreSQL (scale-out).
Invariants kept here, each inside one transaction:
- version numbers per model start at 1 and are never reused, even after a delete;
- a version becomes visible together with all its artifacts, or not at all;
- `latest` is not stored: it is computed as the newest existing version, so it
  can never point at a deleted one;
- an alias moves in a single upsert.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from xfer.models.card import ModelCard
from xfer.server.db import write_transaction
from xfer.server.domain import ArtifactFormat, ArtifactRecord, ModelRecord, Page, VersionRecord
from xfer.server.errors import NotFound
from xfer.server.names import LATEST
from xfer.server.pagination import PageTokens, page_size_of

logger = logging.getLogger(__name__)


metadata = sa.MetaData()

models_table = sa.Table(
    "xfer_models", metadata,
    sa.Column("model_id", sa.String(63), primary_key=True),
    # Highest number ever handed out; numbers are not reused after deletes.
    sa.Column("last_version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("update_time_us", sa.BigInteger, nullable=False),
)

versions_table = sa.Table(
    "xfer_versions", metadata,
    sa.Column("model_id", sa.String(63), sa.ForeignKey("xfer_models.model_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("card_json", sa.Text, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("deprecated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deprecation_message", sa.Text, nullable=False, server_default=""),
)

artifacts_table = sa.Table(
    "xfer_artifacts", metadata,
    sa.Column("model_id", sa.String(63), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("format", sa.String(32), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("derived", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.ForeignKeyConstraint(["model_id", "version"], ["xfer_versions.model_id", "xfer_versions.version"],
                            ondelete="CASCADE"),
)

aliases_table = sa.Table(
    "xfer_aliases", metadata,
    sa.Column("model_id", sa.String(63), primary_key=True),
    sa.Column("alias", sa.String(32), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.ForeignKeyConstraint(["model_id", "version"], ["xfer_versions.model_id", "xfer_versions.version"],
                            ondelete="CASCADE"),
)


def _now_us() -> int:
    return int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)


def _time(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1_000_000, tz=dt.timezone.utc)


class Catalog:
    """Reads and writes the metadata of models and versions."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> sa.Engine:
        """The engine this catalog (and the metrics store) uses."""
        return self._engine

    def create_schema(self) -> None:
        """Creates missing tables (idempotent)."""
        metadata.create_all(self._engine, checkfirst=True)

    # -- writes ------------------------------------------------------------
    def create_version(self, *, model_id: str, card: ModelCard,
                       artifacts: Iterable[ArtifactRecord]) -> VersionRecord:
        """Allocates the next version number and stores the version with its artifacts atomically."""
        now = _now_us()
        with write_transaction(self._engine) as conn:
            conn.execute(self._insert_ignore(models_table).values(
                model_id=model_id, last_version=0, create_time_us=now, update_time_us=now))
            # The UPDATE takes the row lock (PostgreSQL) so two concurrent uploads get distinct numbers.
            conn.execute(models_table.update().where(models_table.c.model_id == model_id)
                         .values(last_version=models_table.c.last_version + 1, update_time_us=now))
            version = conn.execute(sa.select(models_table.c.last_version)
                                   .where(models_table.c.model_id == model_id)).scalar_one()
            conn.execute(versions_table.insert().values(
                model_id=model_id, version=version, card_json=json.dumps(card.to_dict(), sort_keys=True),
                create_time_us=now, deprecated=False, deprecation_message=""))
            rows = [dict(model_id=model_id, version=version, format=a.format.value, sha256=a.sha256,
                         size_bytes=a.size_bytes, derived=a.derived) for a in artifacts]
            if rows:
                conn.execute(artifacts_table.insert(), rows)
            return self._load_version(conn, model_id, version)

    def set_alias(self, *, model_id: str, version: int, alias: str) -> VersionRecord:
        """Points `alias` at `version`, moving it in one statement if it exists."""
        with write_transaction(self._engine) as conn:
            self._require_version(conn, model_id, version)
            insert = self._dialect_insert(conn)(aliases_table).values(model_id=model_id, alias=alias,
                                                                     version=version)
            conn.execute(insert.on_conflict_do_update(index_elements=["model_id", "alias"],
                                                      set_={"version": version}))
            conn.execute(models_table.update().where(models_table.c.model_id == model_id)
                         .values(update_time_us=_now_us()))
            return self._load_version(conn, model_id, version)

    def deprecate(self, *, model_id: str, version: int, message: str) -> VersionRecord:
        """Flags a version as deprecated (repeatable; the last message wins)."""
        with write_transaction(self._engine) as conn:
            result = conn.execute(versions_table.update()
                                  .where(versions_table.c.model_id == model_id,
                                         versions_table.c.version == version)
                                  .values(deprecated=True, deprecation_message=message))
            if result.rowcount == 0:
                raise self._version_not_found(model_id, version)
            return self._load_version(conn, model_id, version)

    def delete_version(self, *, model_id: str, version: int) -> list[str]:
        """Deletes a version, its artifacts and aliases; returns sha256s no version references any more."""
        with write_transaction(self._engine) as conn:
            shas = {row.sha256 for row in conn.execute(
                sa.select(artifacts_table.c.sha256).where(artifacts_table.c.model_id == model_id,
                                                          artifacts_table.c.version == version))}
            # Children first, explicitly: SQLite only cascades with foreign_keys=ON.
            conn.execute(aliases_table.delete().where(aliases_table.c.model_id == model_id,
                                                      aliases_table.c.version == version))
            conn.execute(artifacts_table.delete().where(artifacts_table.c.model_id == model_id,
                                                        artifacts_table.c.version == version))
            result = conn.execute(versions_table.delete().where(versions_table.c.model_id == model_id,
                                                                versions_table.c.version == version))
            if result.rowcount == 0:
                raise self._version_not_found(model_id, version)
            conn.execute(models_table.update().where(models_table.c.model_id == model_id)
                         .values(update_time_us=_now_us()))
            if not shas:
                return []
            still = {row.sha256 for row in conn.execute(
                sa.select(artifacts_table.c.sha256).where(artifacts_table.c.sha256.in_(shas)))}
            return sorted(shas - still)

    # -- reads -------------------------------------------------------------
    def get_version(self, *, model_id: str, version: int | None = None, alias: str | None = None) -> VersionRecord:
        """A version by number or alias (`latest` = newest); NotFound names what was missing."""
        with self._engine.connect() as conn:
            number = self._resolve(conn, model_id, version=version, alias=alias)
            return self._load_version(conn, model_id, number)

    def resolve(self, *, model_id: str, version: int | None = None, alias: str | None = None) -> int:
        """The version number a number or alias stands for; NotFound if none."""
        with self._engine.connect() as conn:
            return self._resolve(conn, model_id, version=version, alias=alias)

    def model_exists(self, model_id: str) -> bool:
        """Whether the model was ever created (it may have no versions left)."""
        with self._engine.connect() as conn:
            return conn.execute(sa.select(models_table.c.model_id)
                                .where(models_table.c.model_id == model_id)).first() is not None

    def list_models(self, *, page_size: int = 0, page_token: str = "") -> Page[ModelRecord]:
        """Models that have at least one version, ordered by id."""
        size = page_size_of(page_size)
        query = "models"
        stmt = (sa.select(models_table.c.model_id).order_by(models_table.c.model_id)
                .where(sa.exists().where(versions_table.c.model_id == models_table.c.model_id))
                .limit(size + 1))
        if page_token:
            stmt = stmt.where(models_table.c.model_id > PageTokens.decode(page_token, query=query, kind=str))
        with self._engine.connect() as conn:
            ids = [row.model_id for row in conn.execute(stmt)]
            records = tuple(self._load_model(conn, model_id) for model_id in ids[:size])
        token = PageTokens.encode(query=query, last=ids[size - 1]) if len(ids) > size else ""
        return Page(items=records, next_page_token=token)

    def list_versions(self, *, model_id: str, page_size: int = 0, page_token: str = "") -> Page[VersionRecord]:
        """Versions of one model, newest first; NotFound if the model never existed."""
        size = page_size_of(page_size)
        query = f"versions:{model_id}"
        stmt = (sa.select(versions_table.c.version).where(versions_table.c.model_id == model_id)
                .order_by(versions_table.c.version.desc()).limit(size + 1))
        if page_token:
            stmt = stmt.where(versions_table.c.version < PageTokens.decode(page_token, query=query, kind=int))
        with self._engine.connect() as conn:
            if conn.execute(sa.select(models_table.c.model_id)
                            .where(models_table.c.model_id == model_id)).first() is None:
                raise NotFound(f"model 'models/{model_id}' does not exist; ListModels shows the registered ones")
            numbers = [row.version for row in conn.execute(stmt)]
            records = tuple(self._load_version(conn, model_id, n) for n in numbers[:size])
        token = PageTokens.encode(query=query, last=numbers[size - 1]) if len(numbers) > size else ""
        return Page(items=records, next_page_token=token)

    def referenced_shas(self) -> set[str]:
        """Every sha256 some version's artifact references (for blob garbage collection)."""
        with self._engine.connect() as conn:
            return {row.sha256 for row in conn.execute(sa.select(artifacts_table.c.sha256).distinct())}

    # -- helpers -----------------------------------------------------------
    def _insert_ignore(self, table: sa.Table):
        return self._dialect_insert_for(self._engine.dialect.name)(table).on_conflict_do_nothing()

    def _dialect_insert(self, conn: sa.Connection):
        return self._dialect_insert_for(conn.dialect.name)

    @staticmethod
    def _dialect_insert_for(name: str):
        # Both dialects spell upserts the same way (ON CONFLICT); others are not supported.
        if name == "sqlite":
            return sqlite.insert
        if name == "postgresql":
            return postgresql.insert
        raise RuntimeError(f"unsupported database {name!r}: use SQLite or PostgreSQL")

    @staticmethod
    def _version_not_found(model_id: str, version: int) -> NotFound:
        return NotFound(f"version 'models/{model_id}/versions/{version}' does not exist; "
                        f"ListModelVersions on 'models/{model_id}' shows the existing ones")

    def _require_version(self, conn: sa.Connection, model_id: str, version: int) -> None:
        found = conn.execute(sa.select(versions_table.c.version).where(
            versions_table.c.model_id == model_id, versions_table.c.version == version)).first()
        if found is None:
            raise self._version_not_found(model_id, version)

    def _resolve(self, conn: sa.Connection, model_id: str, *, version: int | None, alias: str | None) -> int:
        if version is not None:
            self._require_version(conn, model_id, version)
            return version
        if alias == LATEST:
            number = conn.execute(sa.select(sa.func.max(versions_table.c.version))
                                  .where(versions_table.c.model_id == model_id)).scalar()
        else:
            number = conn.execute(sa.select(aliases_table.c.version).where(
                aliases_table.c.model_id == model_id, aliases_table.c.alias == alias)).scalar()
        if number is None:
            if conn.execute(sa.select(models_table.c.model_id)
                            .where(models_table.c.model_id == model_id)).first() is None:
                raise NotFound(f"model 'models/{model_id}' does not exist; ListModels shows the registered ones")
            raise NotFound(f"alias {alias!r} of 'models/{model_id}' points at no version; "
                           "SetAlias creates it, ListModelVersions shows the versions")
        return int(number)

    def _aliases_of(self, conn: sa.Connection, model_id: str) -> dict[str, int]:
        aliases = {row.alias: int(row.version) for row in conn.execute(
            sa.select(aliases_table.c.alias, aliases_table.c.version)
            .where(aliases_table.c.model_id == model_id).order_by(aliases_table.c.alias))}
        latest = conn.execute(sa.select(sa.func.max(versions_table.c.version))
                              .where(versions_table.c.model_id == model_id)).scalar()
        if latest is not None:
            aliases[LATEST] = int(latest)
        return aliases

    def _load_version(self, conn: sa.Connection, model_id: str, version: int) -> VersionRecord:
        row = conn.execute(sa.select(versions_table).where(
            versions_table.c.model_id == model_id, versions_table.c.version == version)).first()
        if row is None:
            raise self._version_not_found(model_id, version)
        artifacts = tuple(
            ArtifactRecord(format=ArtifactFormat(a.format), size_bytes=int(a.size_bytes), sha256=a.sha256,
                           derived=bool(a.derived))
            for a in conn.execute(sa.select(artifacts_table).where(
                artifacts_table.c.model_id == model_id, artifacts_table.c.version == version)
                .order_by(artifacts_table.c.format)))
        aliases = tuple(sorted(a for a, v in self._aliases_of(conn, model_id).items() if v == version))
        return VersionRecord(model_id=model_id, version=int(version), card=ModelCard.from_dict(json.loads(row.card_json)),
                             artifacts=artifacts, aliases=aliases, create_time=_time(row.create_time_us),
                             deprecated=bool(row.deprecated), deprecation_message=row.deprecation_message)

    def _load_model(self, conn: sa.Connection, model_id: str) -> ModelRecord:
        row = conn.execute(sa.select(models_table).where(models_table.c.model_id == model_id)).one()
        count = conn.execute(sa.select(sa.func.count()).select_from(versions_table)
                             .where(versions_table.c.model_id == model_id)).scalar_one()
        aliases = self._aliases_of(conn, model_id)
        latest = aliases.get(LATEST)
        card = None
        if latest is not None:
            card_json = conn.execute(sa.select(versions_table.c.card_json).where(
                versions_table.c.model_id == model_id, versions_table.c.version == latest)).scalar_one()
            card = ModelCard.from_dict(json.loads(card_json))
        return ModelRecord(model_id=model_id, latest_version=latest, version_count=int(count), aliases=aliases,
                           latest_card=card, create_time=_time(row.create_time_us),
                           update_time=_time(row.update_time_us))
