"""Catalog invariants on SQLite and (where installed) PostgreSQL: same code, same results."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from xfer.models import card_for_model, create_model
from xfer.server.catalog import Catalog
from xfer.server.db import create_engine
from xfer.server.domain import ArtifactFormat, ArtifactRecord
from xfer.server.errors import InvalidArgument, NotFound
from xfer.server.migrate import upgrade
from xfer.server.pagination import PageTokens

CARD = card_for_model(create_model("mlp", in_features=4, hidden=[8], num_classes=3))
TOKENS = PageTokens(b"catalog-test-key" * 2)


def _artifacts(tag: str) -> list[ArtifactRecord]:
    return [
        ArtifactRecord(format=ArtifactFormat.SAFETENSORS, size_bytes=10, sha256=tag * 64),
        ArtifactRecord(format=ArtifactFormat.ONNX, size_bytes=20, sha256="f" * 64, derived=True),
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog(request, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    store = Catalog(engine, page_tokens=TOKENS)
    yield store
    engine.dispose()


def test_versions_start_at_one_and_are_never_reused(catalog: Catalog) -> None:
    assert [catalog.create_version(model_id="m", card=CARD, artifacts=_artifacts("a")).version for _ in range(3)] == [
        1,
        2,
        3,
    ]
    assert catalog.create_version(model_id="other", card=CARD, artifacts=[]).version == 1
    catalog.delete_version(model_id="m", version=3)
    assert catalog.create_version(model_id="m", card=CARD, artifacts=[]).version == 4


def test_latest_follows_the_newest_existing_version(catalog: Catalog) -> None:
    for _ in range(2):
        catalog.create_version(model_id="m", card=CARD, artifacts=[])
    assert catalog.get_version(model_id="m", alias="latest").version == 2
    assert catalog.get_version(model_id="m", version=2).aliases == ("latest",)
    catalog.delete_version(model_id="m", version=2)
    assert catalog.get_version(model_id="m", alias="latest").version == 1
    catalog.delete_version(model_id="m", version=1)
    with pytest.raises(NotFound, match="points at no version"):
        catalog.get_version(model_id="m", alias="latest")
    assert catalog.list_models().items == ()  # a model without versions is not listed


def test_aliases_move_and_die_with_their_version(catalog: Catalog) -> None:
    for _ in range(3):
        catalog.create_version(model_id="m", card=CARD, artifacts=[])
    assert catalog.set_alias(model_id="m", version=1, alias="stable").aliases == ("stable",)
    assert catalog.set_alias(model_id="m", version=2, alias="stable").aliases == ("stable",)
    assert catalog.get_version(model_id="m", version=1).aliases == ()
    assert catalog.list_models().items[0].aliases == {"latest": 3, "stable": 2}
    catalog.delete_version(model_id="m", version=2)
    with pytest.raises(NotFound):
        catalog.get_version(model_id="m", alias="stable")
    with pytest.raises(NotFound, match="versions/9"):
        catalog.set_alias(model_id="m", version=9, alias="stable")


def test_version_record_round_trips(catalog: Catalog) -> None:
    created = catalog.create_version(model_id="m", card=CARD, artifacts=_artifacts("b"))
    got = catalog.get_version(model_id="m", version=1)
    assert got == created
    assert got.card == CARD
    assert got.artifact(ArtifactFormat.ONNX).derived and not got.artifact(ArtifactFormat.SAFETENSORS).derived
    deprecated = catalog.deprecate(model_id="m", version=1, message="old")
    assert deprecated.deprecated and deprecated.deprecation_message == "old"
    assert catalog.get_version(model_id="m", version=1).deprecated


def test_delete_removes_rows_and_references(catalog: Catalog) -> None:
    catalog.create_version(model_id="m", card=CARD, artifacts=_artifacts("a"))
    catalog.create_version(model_id="m", card=CARD, artifacts=_artifacts("b"))
    # "f"*64 (the ONNX) is shared by both versions; "a"*64 only by version 1.
    catalog.delete_version(model_id="m", version=1)
    assert catalog.referenced_shas() == {"b" * 64, "f" * 64}
    assert not catalog.is_referenced("a" * 64) and catalog.is_referenced("f" * 64)
    catalog.delete_version(model_id="m", version=2)
    assert catalog.referenced_shas() == set()
    with pytest.raises(NotFound):
        catalog.delete_version(model_id="m", version=2)


def test_pagination(catalog: Catalog) -> None:
    for model_id in ("c-model", "a-model", "b-model"):
        catalog.create_version(model_id=model_id, card=CARD, artifacts=[])
    for _ in range(4):
        catalog.create_version(model_id="a-model", card=CARD, artifacts=[])
    first = catalog.list_models(page_size=2)
    assert [m.model_id for m in first.items] == ["a-model", "b-model"] and first.next_page_token
    second = catalog.list_models(page_size=2, page_token=first.next_page_token)
    assert [m.model_id for m in second.items] == ["c-model"] and second.next_page_token == ""
    assert first.items[0].version_count == 5 and first.items[0].latest_version == 5
    seen, token = [], ""
    while True:
        page = catalog.list_versions(model_id="a-model", page_size=2, page_token=token)
        seen += [v.version for v in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == [5, 4, 3, 2, 1]
    # A token from one listing is refused by another, and garbage is refused.
    with pytest.raises(InvalidArgument, match="invalid page_token"):
        catalog.list_versions(model_id="b-model", page_token=first.next_page_token)
    with pytest.raises(InvalidArgument, match="invalid page_token"):  # a signed but out-of-range cursor
        catalog.list_versions(model_id="a-model", page_token=TOKENS.encode(query="versions:a-model", last=10**30))
    forged = PageTokens(b"not-the-server-key" * 2).encode(query="models", last="a")
    for bad in (
        "%%%",
        "e30",
        TOKENS.encode(query="models", last=[1]),
        forged,
        "x" * 2000,
        TOKENS.encode(query="versions:a-model", last=10**30),
    ):
        with pytest.raises(InvalidArgument, match="invalid page_token"):
            catalog.list_models(page_token=bad)
    with pytest.raises(InvalidArgument, match="page_size"):
        catalog.list_models(page_size=-1)
    with pytest.raises(NotFound, match="models/nope"):
        catalog.list_versions(model_id="nope")


def test_concurrent_uploads_get_distinct_numbers(catalog: Catalog) -> None:
    numbers: list[int] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            for _ in range(5):
                numbers.append(catalog.create_version(model_id="busy", card=CARD, artifacts=_artifacts("c")).version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 21))


def test_concurrent_alias_moves_are_atomic(catalog: Catalog) -> None:
    for _ in range(4):
        catalog.create_version(model_id="m", card=CARD, artifacts=[])
    errors: list[BaseException] = []

    def move(version: int) -> None:
        try:
            for _ in range(10):
                catalog.set_alias(model_id="m", version=version, alias="stable")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(v,)) for v in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    holders = [v for v in (1, 2, 3, 4) if "stable" in catalog.get_version(model_id="m", version=v).aliases]
    assert len(holders) == 1


def _count_statements(engine, action) -> int:
    import sqlalchemy as sa

    count = 0

    def before(*_args) -> None:
        nonlocal count
        count += 1

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        action()
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
    return count


def test_listings_take_a_fixed_number_of_statements(catalog: Catalog) -> None:
    """50 versions (or 50 models) on a page cost the same few statements as 1, not 4 per row."""
    for i in range(50):
        catalog.create_version(model_id="many", card=CARD, artifacts=_artifacts("a"))
        catalog.create_version(model_id=f"model-{i:02d}", card=CARD, artifacts=_artifacts("b"))
    catalog.set_alias(model_id="many", version=7, alias="stable")
    engine = catalog.engine
    listed: list = []
    versions = _count_statements(engine, lambda: listed.append(catalog.list_versions(model_id="many", page_size=50)))
    page = listed[0]
    assert len(page.items) == 50 and page.items[0].version == 50 and page.items[-1].version == 1
    assert page.items[43].aliases == ("stable",) and page.items[0].aliases == ("latest",)
    assert all(len(v.artifacts) == 2 for v in page.items)
    one_version = _count_statements(engine, lambda: catalog.list_versions(model_id="many", page_size=1))
    assert versions == one_version <= 5, (versions, one_version)  # BEGIN, versions, artifacts, aliases, latest
    models = _count_statements(engine, lambda: listed.append(catalog.list_models(page_size=50)))
    one_model = _count_statements(engine, lambda: catalog.list_models(page_size=1))
    assert len(listed[1].items) == 50 and models == one_model <= 6, (models, one_model)
    assert listed[1].items[0].model_id == "many" and listed[1].items[0].version_count == 50
    assert listed[1].items[0].aliases == {"stable": 7, "latest": 50} and listed[1].items[0].latest_card == CARD
