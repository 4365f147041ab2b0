"""Registry domain logic without gRPC: upload stream rules, atomicity, resolve."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from server_testkit import load_card

from xfer.server.blobs import BlobStore
from xfer.server.catalog import Catalog
from xfer.server.db import create_engine
from xfer.server.domain import ArtifactDeclaration, ArtifactFormat, UploadChunk, UploadHeader
from xfer.server.errors import InvalidArgument, NotFound, ResourceExhausted
from xfer.server.migrate import upgrade
from xfer.server.pagination import PageTokens
from xfer.server.registry import Registry, RegistryLimits

ST = ArtifactFormat.SAFETENSORS


@pytest.fixture
def registry(tmp_path: Path, sandbox):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    catalog = Catalog(engine, page_tokens=PageTokens(b"registry-test-key" * 2))
    yield Registry(
        catalog=catalog,
        blobs=BlobStore(tmp_path / "blobs"),
        limits=RegistryLimits(max_artifact_bytes=10**7),
        sandbox=sandbox,
    )
    engine.dispose()


def _stream(model_dir: Path, *, model: str = "digits", chunk: int = 1000, declare=None):
    data = (model_dir / "model.safetensors").read_bytes()
    declaration = declare or ArtifactDeclaration(
        format=ST, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    yield UploadHeader(parent=f"models/{model}", card=load_card(model_dir), artifacts=(declaration,))
    for start in range(0, len(data), chunk):
        yield UploadChunk(format=ST, data=data[start : start + chunk])


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


@pytest.mark.parametrize(
    "mutate,error,message",
    [
        (lambda msgs: msgs[:1] + msgs[:1] + msgs[1:], InvalidArgument, "second header"),
        (lambda msgs: msgs[:-1], InvalidArgument, "ended after"),
        (lambda msgs: msgs + msgs[-1:], InvalidArgument, "longer than its declared"),
        (
            lambda msgs: msgs[:1] + [UploadChunk(format=ArtifactFormat.ONNX, data=b"x")],
            InvalidArgument,
            "declared only",
        ),
        (lambda msgs: msgs[1:], InvalidArgument, "must be the header"),
        (lambda msgs: [], InvalidArgument, "must be the header"),
    ],
)
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
        registry.create_version(
            declare(ArtifactDeclaration(format=ArtifactFormat.ONNX, size_bytes=10, sha256="a" * 64))
        )
    with pytest.raises(InvalidArgument, match="exactly one weights artifact"):
        registry.create_version(
            declare(good, ArtifactDeclaration(format=ArtifactFormat.TORCH_STATE_DICT, size_bytes=10, sha256="a" * 64))
        )
    with pytest.raises(InvalidArgument, match="64 lower-case hex digits"):
        registry.create_version(declare(ArtifactDeclaration(format=ST, size_bytes=10, sha256="A" * 64)))
    with pytest.raises(InvalidArgument, match="must be positive"):
        registry.create_version(declare(ArtifactDeclaration(format=ST, size_bytes=0, sha256="a" * 64)))
    with pytest.raises(ResourceExhausted, match="above the server's limit"):
        registry.create_version(declare(ArtifactDeclaration(format=ST, size_bytes=10**8, sha256="a" * 64)))


def test_delete_leaves_blobs_to_the_age_guarded_collector(registry: Registry, source_model_dir: Path) -> None:
    import os
    import time

    first = registry.create_version(_stream(source_model_dir))
    registry.create_version(_stream(source_model_dir))  # same bytes: shares both blobs
    shas = [a.sha256 for a in first.artifacts]
    registry.delete("models/digits/versions/1")
    registry.delete("models/digits/versions/latest")
    assert all(registry.blobs.exists(sha) for sha in shas)  # deleting touches catalog rows only
    assert registry.collect_garbage() == 0  # young blobs are spared (an upload may be about to commit them)
    old = time.time() - 7200
    for sha in shas:
        os.utime(registry.blobs.path_for(sha), (old, old))
    assert registry.collect_garbage() == 2
    assert not any(registry.blobs.exists(sha) for sha in shas)
    with pytest.raises(NotFound):
        registry.delete("models/digits/versions/2")


def test_an_oversized_card_is_refused_before_any_artifact_byte(registry: Registry, source_model_dir: Path) -> None:
    """Two 16,384-wide layers: about 1 GiB of weights. Sized on the meta device, never allocated."""
    import resource

    from xfer.models import card_for_model, create_model

    small = create_model("mlp", in_features=64, hidden=[8], num_classes=10)
    card = card_for_model(small)
    card = type(card)(
        **{
            **card.__dict__,
            "architecture_config": {**card.architecture_config, "hidden": [16384, 16384]},
            "blocks": ("stem", "block1", "head"),
        }
    )
    header = UploadHeader(
        parent="models/huge",
        card=card,
        artifacts=(ArtifactDeclaration(format=ST, size_bytes=5 * 10**6, sha256="a" * 64),),
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ResourceExhausted, match="269,680,650 parameters") as caught:
        registry.begin_upload(header)
    assert caught.value.reason == "MODEL_TOO_LARGE"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: nothing allocated here
    assert _temp_files(registry) == []


def test_a_card_larger_than_its_declared_weights_is_refused(registry: Registry, source_model_dir: Path) -> None:
    header = UploadHeader(
        parent="models/digits",
        card=load_card(source_model_dir),
        artifacts=(ArtifactDeclaration(format=ST, size_bytes=1000, sha256="a" * 64),),
    )
    with pytest.raises(InvalidArgument, match="declares only 1,000 bytes") as caught:
        registry.begin_upload(header)
    assert caught.value.reason == "SIZE_MISMATCH"


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


def test_card_is_canonicalised_and_checked_in_the_sandbox(registry: Registry) -> None:
    from xfer.models import card_for_model, create_model

    card = card_for_model(create_model("convnet", width=8))
    floaty = card.__class__(**{**card.__dict__, "architecture_config": {"width": 8.0, "num_classes": 10.0}})
    checked = registry.check_card(floaty)
    canonical = checked.card
    assert canonical.architecture_config["width"] == 8 and type(canonical.architecture_config["width"]) is int
    assert canonical.architecture_config["depth"] == 3  # defaults filled in
    assert checked.parameters > 0 and checked.weight_bytes == 4 * checked.parameters
    bad = card.__class__(**{**card.__dict__, "blocks": ("stem", "head")})
    with pytest.raises(InvalidArgument, match="invalid model card: .*blocks"):
        registry.check_card(bad)
    unknown = card.__class__(**{**card.__dict__, "architecture": "resnet9000"})
    with pytest.raises(InvalidArgument, match="unknown architecture 'resnet9000'; valid ones"):
        registry.check_card(unknown)
