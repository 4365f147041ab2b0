"""Registry domain logic without gRPC: upload stream rules, atomicity, resolve."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from xfer.server.blobs import BlobStore
from xfer.server.catalog import Catalog
from xfer.server.db import create_engine
from xfer.server.domain import ArtifactDeclaration, ArtifactFormat, UploadChunk, UploadHeader
from xfer.server.errors import InvalidArgument, NotFound, ResourceExhausted
from xfer.server.registry import Registry, RegistryLimits
from server_testkit import load_card

ST = ArtifactFormat.SAFETENSORS


@pytest.fixture
def registry(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    catalog = Catalog(engine)
    catalog.create_schema()
    yield Registry(catalog=catalog, blobs=BlobStore(tmp_path / "blobs"), limits=RegistryLimits(max_artifact_bytes=10**7))
    engine.dispose()


def _stream(model_dir: Path, *, model: str = "digits", chunk: int = 1000, declare=None):
    data = (model_dir / "model.safetensors").read_bytes()
    declaration = declare or ArtifactDeclaration(format=ST, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    yield UploadHeader(parent=f"models/{model}", card=load_card(model_dir), artifacts=(declaration,))
    for start in range(0, len(data), chunk):
        yield UploadChunk(format=ST, data=data[start:start + chunk])


def _temp_files(registry: Registry) -> list[Path]:
    return [p for p in registry.blobs.root.iterdir() if p.is_file()]


def test_create_and_resolve(registry: Registry, source_model_dir: Path) -> None:
    record = registry.create_version(_stream(source_model_dir))
    assert record.name == "models/digits/versions/1"
    assert registry.resolve("models/digits/versions/latest") == "models/digits/versions/1"
    assert registry.resolve("models/digits/versions/1") == "models/digits/versions/1"
    with pytest.raises(NotFound):
        registry.resolve("models/digits/versions/stable")
    with pytest.raises(NotFound):
        registry.resolve("models/other/versions/1")
    with pytest.raises(InvalidArgument):
        registry.resolve("models/digits/versions/01")
    assert _temp_files(registry) == []


def test_a_stream_that_breaks_leaves_nothing(registry: Registry, source_model_dir: Path) -> None:
    def broken():
        stream = _stream(source_model_dir)
        yield next(stream)
        yield next(stream)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        registry.create_version(broken())
    assert _temp_files(registry) == [] and list(registry.blobs.root.glob("??/*")) == []
    assert registry.list_models().items == ()


@pytest.mark.parametrize("mutate,error,message", [
    (lambda msgs: msgs[:1] + msgs[:1] + msgs[1:], InvalidArgument, "second header"),
    (lambda msgs: msgs[:-1], InvalidArgument, "ended after"),
    (lambda msgs: msgs + msgs[-1:], InvalidArgument, "longer than its declared"),
    (lambda msgs: msgs[:1] + [UploadChunk(format=ArtifactFormat.ONNX, data=b"x")], InvalidArgument,
     "declared only"),
    (lambda msgs: msgs[1:], InvalidArgument, "must be the header"),
    (lambda msgs: [], InvalidArgument, "must be the header"),
])
def test_stream_rules(registry: Registry, source_model_dir: Path, mutate, error, message) -> None:
    messages = mutate(list(_stream(source_model_dir)))
    with pytest.raises(error, match=message):
        registry.create_version(iter(messages))
    assert _temp_files(registry) == []
    assert registry.list_models().items == ()


def test_declaration_rules(registry: Registry, source_model_dir: Path) -> None:
    def declare(*declarations):
        return iter([UploadHeader(parent="models/digits", card=load_card(source_model_dir), artifacts=declarations)])

    good = ArtifactDeclaration(format=ST, size_bytes=10, sha256="a" * 64)
    with pytest.raises(InvalidArgument, match="same artifact format twice"):
        registry.create_version(declare(good, good))
    with pytest.raises(InvalidArgument, match="exactly one weights artifact"):
        registry.create_version(declare(ArtifactDeclaration(format=ArtifactFormat.ONNX, size_bytes=10, sha256="a" * 64)))
    with pytest.raises(InvalidArgument, match="exactly one weights artifact"):
        registry.create_version(declare(good, ArtifactDeclaration(format=ArtifactFormat.TORCH_STATE_DICT,
                                                                  size_bytes=10, sha256="a" * 64)))
    with pytest.raises(InvalidArgument, match="64 lower-case hex digits"):
        registry.create_version(declare(ArtifactDeclaration(format=ST, size_bytes=10, sha256="A" * 64)))
    with pytest.raises(InvalidArgument, match="must be positive"):
        registry.create_version(declare(ArtifactDeclaration(format=ST, size_bytes=0, sha256="a" * 64)))
    with pytest.raises(ResourceExhausted, match="above the server's limit"):
        registry.create_version(declare(ArtifactDeclaration(format=ST, size_bytes=10**8, sha256="a" * 64)))


def test_delete_removes_unshared_blobs(registry: Registry, source_model_dir: Path) -> None:
    first = registry.create_version(_stream(source_model_dir))
    registry.create_version(_stream(source_model_dir))  # same bytes: shares both blobs
    shas = [a.sha256 for a in first.artifacts]
    registry.delete("models/digits/versions/1")
    assert all(registry.blobs.exists(sha) for sha in shas)
    registry.delete("models/digits/versions/latest")
    assert not any(registry.blobs.exists(sha) for sha in shas)
    with pytest.raises(NotFound):
        registry.delete("models/digits/versions/2")


def test_alias_and_deprecation_rules(registry: Registry, source_model_dir: Path) -> None:
    registry.create_version(_stream(source_model_dir))
    with pytest.raises(InvalidArgument, match="owned by the server"):
        registry.set_alias("models/digits/versions/1", "latest")
    for bad in ("Stable", "1", "a" * 40, "x_y", ""):
        with pytest.raises(InvalidArgument, match="invalid alias"):
            registry.set_alias("models/digits/versions/1", bad)
    assert registry.set_alias("models/digits/versions/latest", "stable").aliases == ("latest", "stable")
    with pytest.raises(InvalidArgument, match="at most 1024"):
        registry.deprecate("models/digits/versions/1", "x" * 2000)
