"""Metadata store for models, versions, artifacts and aliases (SQLAlchemy Core).

The same code runs on SQLite (embedded default) and PostgreSQL (scale-out).
Invariants kept here, each inside one transaction:
- version numbers per model start at 1 and are never reused, even after a delete;
- a version becomes visible together with all its artifacts, or not at all;
- `latest` is not stored: it is computed as the newest existing version, so it
  can never point at a deleted one;
- an alias moves in a single upsert.

Deleting a version deletes catalog rows only. Blob files are removed by the
age-guarded garbage collector (`BlobStore.collect_garbage`), never here: a
delete cannot race an upload of byte-identical content into a dangling blob.

Listings load a page in a fixed number of statements (versions, artifacts,
aliases, ...), whatever the page size.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from xfer.models.card import ModelCard
from xfer.server.db import dialect_insert, insert_ignore, write_transaction
from xfer.server.domain import ArtifactFormat, ArtifactRecord, ModelRecord, Page, Signature, VersionRecord, version_name
from xfer.server.errors import NotFound, Reason
from xfer.server.names import LATEST
from xfer.server.pagination import PageTokens, page_size_of
from xfer.server.schema import aliases_table, artifacts_table, models_table, versions_table

logger = logging.getLogger(__name__)

# The statements of the most frequent call (one version, for GetModelVersion and every ReadArtifact),
# built once: constructing a select per call cost SQLAlchemy about three times what executing it does.
_M: sa.BindParameter[str] = sa.bindparam("model_id")
_V: sa.BindParameter[int] = sa.bindparam("version")
_VERSION_ROW = sa.select(versions_table).where(versions_table.c.model_id == _M, versions_table.c.version == _V)
_VERSION_ARTIFACTS = (
    sa.select(artifacts_table)
    .where(artifacts_table.c.model_id == _M, artifacts_table.c.version == _V)
    .order_by(artifacts_table.c.format)
)
_VERSION_ALIASES = sa.select(aliases_table.c.alias).where(aliases_table.c.model_id == _M, aliases_table.c.version == _V)
_LATEST_NUMBER = sa.select(sa.func.max(versions_table.c.version)).where(versions_table.c.model_id == _M)
_ALIAS_NUMBER = sa.select(aliases_table.c.version).where(
    aliases_table.c.model_id == _M, aliases_table.c.alias == sa.bindparam("alias")
)


def _now_us() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)


def _time(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1_000_000, tz=dt.UTC)


def model_not_found(model_id: str) -> NotFound:
    """The error for an unknown model."""
    return NotFound(
        f"model 'models/{model_id}' does not exist; ListModels shows the registered ones",
        reason=Reason.MODEL_NOT_FOUND,
        metadata={"model": f"models/{model_id}"},
    )


def version_not_found(model_id: str, version: int) -> NotFound:
    """The error for an unknown version number of a known model."""
    return NotFound(
        f"version '{version_name(model_id, version)}' does not exist; "
        f"ListModelVersions on 'models/{model_id}' shows the existing ones",
        reason=Reason.VERSION_NOT_FOUND,
        metadata={"model": f"models/{model_id}", "version": str(version)},
    )


def alias_not_found(model_id: str, alias: str) -> NotFound:
    """The error for an alias that points nowhere."""
    return NotFound(
        f"alias {alias!r} of 'models/{model_id}' points at no version; "
        "SetAlias creates it, ListModelVersions shows the versions",
        reason=Reason.ALIAS_NOT_FOUND,
        metadata={"model": f"models/{model_id}", "alias": alias},
    )


class Catalog:
    """Reads and writes the metadata of models and versions."""

    def __init__(self, engine: sa.Engine, *, page_tokens: PageTokens) -> None:
        self._engine = engine
        self._tokens = page_tokens

    @property
    def engine(self) -> sa.Engine:
        """The engine this catalog (and the run store) uses."""
        return self._engine

    # -- writes ------------------------------------------------------------
    def create_version(
        self,
        *,
        model_id: str,
        card: ModelCard,
        artifacts: Iterable[ArtifactRecord],
        signatures: Sequence[Signature] = (),
    ) -> VersionRecord:
        """Allocates the next version number and stores the version with its artifacts atomically."""
        now = _now_us()
        with write_transaction(self._engine) as conn:
            conn.execute(
                insert_ignore(conn, models_table).values(
                    model_id=model_id, last_version=0, create_time_us=now, update_time_us=now
                )
            )
            # The UPDATE takes the row lock (PostgreSQL) so two concurrent uploads get distinct numbers.
            conn.execute(
                models_table.update()
                .where(models_table.c.model_id == model_id)
                .values(last_version=models_table.c.last_version + 1, update_time_us=now)
            )
            version = conn.execute(
                sa.select(models_table.c.last_version).where(models_table.c.model_id == model_id)
            ).scalar_one()
            conn.execute(
                versions_table.insert().values(
                    model_id=model_id,
                    version=version,
                    card_json=json.dumps(card.to_dict(), sort_keys=True),
                    create_time_us=now,
                    deprecated=False,
                    deprecation_message="",
                    signatures_json=json.dumps([_signature_json(sig) for sig in signatures]),
                )
            )
            rows = [
                dict(
                    model_id=model_id,
                    version=version,
                    format=a.format.value,
                    sha256=a.sha256,
                    size_bytes=a.size_bytes,
                    derived=a.derived,
                )
                for a in artifacts
            ]
            if rows:
                conn.execute(artifacts_table.insert(), rows)
            return self._load_version(conn, model_id, version)

    def set_alias(self, *, model_id: str, version: int, alias: str) -> VersionRecord:
        """Points `alias` at `version`, moving it in one statement if it exists."""
        with write_transaction(self._engine) as conn:
            self._require_version(conn, model_id, version)
            insert = dialect_insert(conn)(aliases_table).values(model_id=model_id, alias=alias, version=version)
            conn.execute(insert.on_conflict_do_update(index_elements=["model_id", "alias"], set_={"version": version}))
            conn.execute(
                models_table.update().where(models_table.c.model_id == model_id).values(update_time_us=_now_us())
            )
            return self._load_version(conn, model_id, version)

    def deprecate(self, *, model_id: str, version: int, message: str) -> VersionRecord:
        """Flags a version as deprecated (repeatable; the last message wins)."""
        with write_transaction(self._engine) as conn:
            result = conn.execute(
                versions_table.update()
                .where(versions_table.c.model_id == model_id, versions_table.c.version == version)
                .values(deprecated=True, deprecation_message=message)
            )
            if result.rowcount == 0:
                raise version_not_found(model_id, version)
            return self._load_version(conn, model_id, version)

    def delete_version(self, *, model_id: str, version: int) -> None:
        """Deletes a version, its artifact rows and aliases (blob files are left to the collector)."""
        with write_transaction(self._engine) as conn:
            # Children first, explicitly: SQLite only cascades with foreign_keys=ON.
            conn.execute(
                aliases_table.delete().where(aliases_table.c.model_id == model_id, aliases_table.c.version == version)
            )
            conn.execute(
                artifacts_table.delete().where(
                    artifacts_table.c.model_id == model_id, artifacts_table.c.version == version
                )
            )
            result = conn.execute(
                versions_table.delete().where(
                    versions_table.c.model_id == model_id, versions_table.c.version == version
                )
            )
            if result.rowcount == 0:
                raise version_not_found(model_id, version)
            conn.execute(
                models_table.update().where(models_table.c.model_id == model_id).values(update_time_us=_now_us())
            )

    # -- reads -------------------------------------------------------------
    def get_version(self, *, model_id: str, version: int | None = None, alias: str | None = None) -> VersionRecord:
        """A version by number or alias (`latest` = newest); NotFound names what was missing."""
        with self._engine.connect() as conn:
            # A number needs no resolving: loading its row is the existence check.
            number = version if version is not None else self._resolve(conn, model_id, version=None, alias=alias)
            return self._load_version(conn, model_id, number)

    def resolve(self, *, model_id: str, version: int | None = None, alias: str | None = None) -> int:
        """The version number a number or alias stands for; NotFound if none."""
        with self._engine.connect() as conn:
            return self._resolve(conn, model_id, version=version, alias=alias)

    def model_exists(self, model_id: str) -> bool:
        """Whether the model was ever created (it may have no versions left)."""
        with self._engine.connect() as conn:
            return self._model_exists(conn, model_id)

    def list_models(self, *, page_size: int = 0, page_token: str = "") -> Page[ModelRecord]:
        """Models that have at least one version, ordered by id."""
        size = page_size_of(page_size)
        query = "models"
        stmt = (
            sa.select(models_table)
            .order_by(models_table.c.model_id)
            .where(sa.exists().where(versions_table.c.model_id == models_table.c.model_id))
            .limit(size + 1)
        )
        if page_token:
            stmt = stmt.where(models_table.c.model_id > self._tokens.decode(page_token, query=query, kind=str))
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
            records = self._load_models(conn, rows[:size])
        token = self._tokens.encode(query=query, last=rows[size - 1].model_id) if len(rows) > size else ""
        return Page(items=records, next_page_token=token)

    def list_versions(self, *, model_id: str, page_size: int = 0, page_token: str = "") -> Page[VersionRecord]:
        """Versions of one model, newest first; NotFound if the model never existed."""
        size = page_size_of(page_size)
        query = f"versions:{model_id}"
        stmt = (
            sa.select(versions_table)
            .where(versions_table.c.model_id == model_id)
            .order_by(versions_table.c.version.desc())
            .limit(size + 1)
        )
        if page_token:
            stmt = stmt.where(versions_table.c.version < self._tokens.decode(page_token, query=query, kind=int))
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
            if not rows and not self._model_exists(conn, model_id):
                raise model_not_found(model_id)
            records = self._load_versions(conn, model_id, rows[:size])
        token = self._tokens.encode(query=query, last=int(rows[size - 1].version)) if len(rows) > size else ""
        return Page(items=records, next_page_token=token)

    def referenced_shas(self) -> set[str]:
        """Every sha256 some version's artifact references (for blob garbage collection)."""
        with self._engine.connect() as conn:
            return {row.sha256 for row in conn.execute(sa.select(artifacts_table.c.sha256).distinct())}

    def is_referenced(self, sha256: str) -> bool:
        """Whether any version's artifact references `sha256` now."""
        with self._engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(artifacts_table.c.sha256).where(artifacts_table.c.sha256 == sha256).limit(1)
                ).first()
                is not None
            )

    def ping(self) -> None:
        """One round trip to the database (raises if it is unreachable)."""
        with self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _model_exists(conn: sa.Connection, model_id: str) -> bool:
        return (
            conn.execute(sa.select(models_table.c.model_id).where(models_table.c.model_id == model_id)).first()
            is not None
        )

    def _require_version(self, conn: sa.Connection, model_id: str, version: int) -> None:
        found = conn.execute(
            sa.select(versions_table.c.version).where(
                versions_table.c.model_id == model_id, versions_table.c.version == version
            )
        ).first()
        if found is None:
            if not self._model_exists(conn, model_id):
                raise model_not_found(model_id)
            raise version_not_found(model_id, version)

    def _resolve(self, conn: sa.Connection, model_id: str, *, version: int | None, alias: str | None) -> int:
        if version is not None:
            self._require_version(conn, model_id, version)
            return version
        if alias == LATEST:
            number = conn.execute(_LATEST_NUMBER, {"model_id": model_id}).scalar()
        else:
            number = conn.execute(_ALIAS_NUMBER, {"model_id": model_id, "alias": alias}).scalar()
        if number is None:
            if not self._model_exists(conn, model_id):
                raise model_not_found(model_id)
            raise alias_not_found(model_id, alias or LATEST)
        return int(number)

    @staticmethod
    def _aliases_by_model(conn: sa.Connection, model_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """model id -> {alias: version}, `latest` included, in two statements for any number of models."""
        found: dict[str, dict[str, int]] = {m: {} for m in model_ids}
        if not model_ids:
            return found
        for row in conn.execute(
            sa.select(aliases_table.c.model_id, aliases_table.c.alias, aliases_table.c.version)
            .where(aliases_table.c.model_id.in_(model_ids))
            .order_by(aliases_table.c.model_id, aliases_table.c.alias)
        ):
            found[row.model_id][row.alias] = int(row.version)
        for row in conn.execute(
            sa.select(versions_table.c.model_id, sa.func.max(versions_table.c.version).label("latest"))
            .where(versions_table.c.model_id.in_(model_ids))
            .group_by(versions_table.c.model_id)
        ):
            found[row.model_id][LATEST] = int(row.latest)
        return found

    @staticmethod
    def _artifacts_of(
        conn: sa.Connection, model_id: str, versions: Sequence[int]
    ) -> dict[int, tuple[ArtifactRecord, ...]]:
        found: dict[int, list[ArtifactRecord]] = {v: [] for v in versions}
        if versions:
            for a in conn.execute(
                sa.select(artifacts_table)
                .where(artifacts_table.c.model_id == model_id, artifacts_table.c.version.in_(versions))
                .order_by(artifacts_table.c.version, artifacts_table.c.format)
            ):
                found[int(a.version)].append(_artifact_record(a))
        return {v: tuple(items) for v, items in found.items()}

    def _load_versions(self, conn: sa.Connection, model_id: str, rows: Sequence[sa.Row]) -> tuple[VersionRecord, ...]:
        """Records of version rows of one model: artifacts and aliases in one statement each."""
        if not rows:
            return ()
        numbers = [int(r.version) for r in rows]
        artifacts = self._artifacts_of(conn, model_id, numbers)
        aliases = self._aliases_by_model(conn, [model_id])[model_id]
        return tuple(
            _version_record(
                model_id,
                row,
                artifacts=artifacts[int(row.version)],
                aliases=[a for a, v in aliases.items() if v == int(row.version)],
            )
            for row in rows
        )

    def _load_version(self, conn: sa.Connection, model_id: str, version: int) -> VersionRecord:
        """One version, in four prebuilt statements."""
        key = {"model_id": model_id, "version": version}
        row = conn.execute(_VERSION_ROW, key).first()
        if row is None:
            if not self._model_exists(conn, model_id):
                raise model_not_found(model_id)
            raise version_not_found(model_id, version)
        aliases = list(conn.execute(_VERSION_ALIASES, key).scalars())
        if conn.execute(_LATEST_NUMBER, key).scalar() == version:
            aliases.append(LATEST)
        artifacts = tuple(_artifact_record(a) for a in conn.execute(_VERSION_ARTIFACTS, key))
        return _version_record(model_id, row, artifacts=artifacts, aliases=aliases)

    def _load_models(self, conn: sa.Connection, rows: Sequence[sa.Row]) -> tuple[ModelRecord, ...]:
        """Records of model rows: counts, aliases and latest cards in a fixed number of statements."""
        if not rows:
            return ()
        ids = [r.model_id for r in rows]
        counts = {
            row.model_id: int(row.n)
            for row in conn.execute(
                sa.select(versions_table.c.model_id, sa.func.count().label("n"))
                .where(versions_table.c.model_id.in_(ids))
                .group_by(versions_table.c.model_id)
            )
        }
        aliases = self._aliases_by_model(conn, ids)
        latest = {m: a[LATEST] for m, a in aliases.items() if LATEST in a}
        cards: dict[str, ModelCard] = {}
        if latest:
            pairs = [sa.and_(versions_table.c.model_id == m, versions_table.c.version == v) for m, v in latest.items()]
            for row in conn.execute(
                sa.select(versions_table.c.model_id, versions_table.c.card_json).where(sa.or_(*pairs))
            ):
                cards[row.model_id] = ModelCard.from_dict(json.loads(row.card_json))
        return tuple(
            ModelRecord(
                model_id=row.model_id,
                latest_version=latest.get(row.model_id),
                version_count=counts.get(row.model_id, 0),
                aliases=aliases[row.model_id],
                latest_card=cards.get(row.model_id),
                create_time=_time(row.create_time_us),
                update_time=_time(row.update_time_us),
            )
            for row in rows
        )


def _artifact_record(row: sa.Row) -> ArtifactRecord:
    return ArtifactRecord(
        format=ArtifactFormat(row.format), size_bytes=int(row.size_bytes), sha256=row.sha256, derived=bool(row.derived)
    )


def _version_record(
    model_id: str, row: sa.Row, *, artifacts: tuple[ArtifactRecord, ...], aliases: Iterable[str]
) -> VersionRecord:
    return VersionRecord(
        model_id=model_id,
        version=int(row.version),
        card=ModelCard.from_dict(json.loads(row.card_json)),
        artifacts=artifacts,
        aliases=tuple(sorted(aliases)),
        create_time=_time(row.create_time_us),
        deprecated=bool(row.deprecated),
        deprecation_message=row.deprecation_message,
        signatures=tuple(_signature_from_json(d) for d in json.loads(row.signatures_json)),
    )


def _signature_json(signature: Signature) -> dict[str, str]:
    return {
        "key_id": signature.key_id,
        "algorithm": signature.algorithm,
        "signature": base64.b64encode(signature.signature).decode("ascii"),
    }


def _signature_from_json(data: dict[str, str]) -> Signature:
    return Signature(key_id=data["key_id"], algorithm=data["algorithm"], signature=base64.b64decode(data["signature"]))
