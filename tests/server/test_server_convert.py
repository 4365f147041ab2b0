"""Proto <-> domain converters, resource names and the error mapping."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from xfer.models import card_for_model, create_model
from xfer.models.errors import InvalidCardError
from xfer.server import convert
from xfer.server.domain import ArtifactFormat, ArtifactRecord, ModelRecord, VersionRecord
from xfer.server.errors import DataLoss, InvalidArgument, NotFound, status_for
from xfer.server.names import parse_model_name, parse_version_name
from xfer.v1 import model_pb2


def test_card_round_trip_and_privacy() -> None:
    card = card_for_model(
        create_model("convnet", width=8),
        input_mean=(0.5,),
        input_std=(0.25,),
        label_names=tuple(str(i) for i in range(10)),
        dp_epsilon=3.0,
        dp_delta=1e-5,
        framework_versions={"torch": "2.13.0"},
        description="d",
    )
    proto = convert.card_to_proto(card)
    assert proto.source_privacy.dp and proto.source_privacy.epsilon == 3.0
    back = convert.card_from_proto(proto)
    # Struct numbers come back as doubles; everything else is identical.
    assert back.architecture_config["width"] == 8.0
    assert back.__class__(**{**back.__dict__, "architecture_config": card.architecture_config}) == card
    plain = convert.card_from_proto(convert.card_to_proto(card_for_model(create_model("mlp"))))
    assert plain.dp_epsilon is None and plain.dp_delta is None and not plain.private


def test_version_and_model_to_proto() -> None:
    card = card_for_model(create_model("mlp"))
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    record = VersionRecord(
        model_id="m",
        version=3,
        card=card,
        artifacts=(ArtifactRecord(format=ArtifactFormat.ONNX, size_bytes=5, sha256="a" * 64, derived=True),),
        aliases=("latest",),
        create_time=now,
        deprecated=True,
        deprecation_message="old",
    )
    proto = convert.version_to_proto(record)
    assert proto.name == "models/m/versions/3" and proto.artifacts[0].format == model_pb2.ARTIFACT_FORMAT_ONNX
    assert proto.create_time.ToDatetime(tzinfo=dt.UTC) == now and proto.deprecated
    model = convert.model_to_proto(
        ModelRecord(
            model_id="m",
            latest_version=3,
            version_count=1,
            aliases={"latest": 3},
            latest_card=card,
            create_time=now,
            update_time=now,
        )
    )
    assert model.latest_version == "models/m/versions/3" and model.latest_card.architecture == "mlp"


def test_formats() -> None:
    assert convert.format_from_proto(model_pb2.ARTIFACT_FORMAT_UNSPECIFIED) is None
    assert convert.format_from_proto(model_pb2.ARTIFACT_FORMAT_TORCH_STATE_DICT) is ArtifactFormat.TORCH_STATE_DICT
    with pytest.raises(InvalidArgument, match="unknown artifact format 99"):
        convert.format_from_proto(99)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "models/",
        "models/a",
        "model/ab/versions/1",
        "models/ab/versions/",
        "models/ab/versions/0",
        "models/ab/versions/007",
        "models/ab/versions/-1",
        "models/ab/versions/1/x",
        "models/../ab/versions/1",
        "models/ab/versions/9223372036854775808",
        "models/ab/versions/LATEST",
    ],
)
def test_bad_version_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_version_name(name)


def test_good_names() -> None:
    assert parse_version_name("models/ab/versions/12").version == 12
    assert parse_version_name("models/ab/versions/stable").alias == "stable"
    assert parse_model_name("models/a-1") == "a-1"
    with pytest.raises(InvalidArgument, match="2 to 63"):
        parse_model_name("models/" + "a" * 64)


def test_status_mapping() -> None:
    assert status_for(NotFound("x")).code == grpc.StatusCode.NOT_FOUND
    assert status_for(DataLoss("x")).code == grpc.StatusCode.DATA_LOSS
    assert status_for(InvalidCardError("bad card")).code == grpc.StatusCode.INVALID_ARGUMENT
    internal = status_for(KeyError("secret"), request_id="abc")
    assert internal.code == grpc.StatusCode.INTERNAL and not internal.expected
    assert "secret" not in internal.message and "abc" in internal.message


@pytest.mark.parametrize(
    "offset,data,first",
    [
        (0, b"", True),
        (0, b"abc", True),
        (5, b"x" * 200, True),
        (1 << 40, b"\0" * 70000, False),
        (7, b"", False),
        (0, b"y", False),
    ],
)
def test_hand_encoded_read_responses_equal_the_generated_ones(offset, data, first) -> None:
    import io

    from xfer.server.transfer import ArtifactRead, Chunk
    from xfer.v1 import transfer_service_pb2 as ts

    read = ArtifactRead(
        model_version="models/ab/versions/3",
        total_size_bytes=123456,
        sha256="a" * 64,
        read_offset=offset,
        end=offset + len(data),
        chunk_size=1024,
        file=io.BytesIO(),
    )
    chunk = Chunk(offset=offset, data=data) if data else None
    encoded = convert.read_response_bytes(chunk, first=read if first else None)
    expected = ts.ReadArtifactResponse(offset=offset if (data or first) else 0, data=data)
    if first:
        expected.total_size_bytes, expected.sha256, expected.model_version = 123456, "a" * 64, read.model_version
    assert encoded == expected.SerializeToString()
    assert ts.ReadArtifactResponse.FromString(encoded) == expected


def test_chunk_sizes_start_small_and_double_up_to_the_limit() -> None:
    from xfer.server.transfer import FIRST_CHUNK, ChunkSizer

    sizer = ChunkSizer(1 << 20)
    sizes = []
    for _ in range(7):
        sizes.append(sizer.size)
        sizer.taken()
    assert sizes == [FIRST_CHUNK, 2 * FIRST_CHUNK, 4 * FIRST_CHUNK, 8 * FIRST_CHUNK, 1 << 20, 1 << 20, 1 << 20]
    assert ChunkSizer(4096).size == 4096
