"""client/transport.py without a server: the zero-copy ReadArtifact decoder and the retry policy."""

from __future__ import annotations

import random

import pytest

from xfer.client.transport import RetryPolicy, decode_read_artifact_response
from xfer.v1 import transfer_service_pb2 as transfer_pb2


def _expected(message):
    return (message.offset, bytes(message.data), message.total_size_bytes, message.sha256, message.model_version)


def _decoded(raw):
    piece = decode_read_artifact_response(raw)
    return (piece.offset, bytes(piece.data), piece.total_size, piece.sha256, piece.model_version)


@pytest.mark.parametrize("seed", range(20))
def test_decoder_agrees_with_the_generated_parser(seed):
    rng = random.Random(seed)
    message = transfer_pb2.ReadArtifactResponse(
        offset=rng.choice([0, 1, 127, 128, 2**31, 2**62, -5]),
        data=rng.randbytes(rng.choice([0, 1, 200, 70_000])),
        total_size_bytes=rng.choice([0, 300, 2**40]),
        sha256=rng.choice(["", "ab" * 32]),
        model_version=rng.choice(["", "models/m1/versions/3", "models/ü/versions/1"]),
    )
    raw = message.SerializeToString()
    assert _decoded(raw) == _expected(message)


def test_decoder_skips_unknown_fields_and_returns_a_view():
    message = transfer_pb2.ReadArtifactResponse(offset=7, data=b"xyz")
    # Unknown fields a newer server might add: varint 99, fixed64 100, fixed32 101, bytes 102.
    unknown = bytes([0x98, 0x06, 0x01]) + bytes([0xA1, 0x06]) + b"\0" * 8 + bytes([0xAD, 0x06]) + b"\0" * 4
    unknown += bytes([0xB2, 0x06, 0x02]) + b"hi"
    raw = message.SerializeToString() + unknown
    piece = decode_read_artifact_response(raw)
    assert (piece.offset, bytes(piece.data)) == (7, b"xyz")
    assert isinstance(piece.data, memoryview)


def test_malformed_input_falls_back_to_the_generated_parser_and_its_error():
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        decode_read_artifact_response(b"\x22\x10abc")  # a bytes field longer than the message


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.3, multiplier=2.0)
    random.seed(0)
    delays = [[policy.delay(attempt) for _ in range(200)] for attempt in range(4)]
    ceilings = [0.1, 0.2, 0.3, 0.3]
    for samples, ceiling in zip(delays, ceilings):
        assert all(0 <= d <= ceiling for d in samples)
        assert max(samples) > 0.8 * ceiling and min(samples) < 0.2 * ceiling  # full jitter spreads them
