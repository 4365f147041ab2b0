"""Server reflection answers on both protocols: grpc.reflection.v1 and v1alpha (server/reflection.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from xfer.server.reflection import V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "node_modules" / ".bin" / "buf"


def _v1_messages():
    pool = descriptor_pool.Default()
    request = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    return request, response


@pytest.mark.parametrize("service", [V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME])
def test_reflection_lists_and_describes_every_service(open_server, service) -> None:
    if service == V1_SERVICE_NAME:
        request_cls, response_cls = _v1_messages()  # registered by the server at start
    else:
        from grpc_reflection.v1alpha import reflection_pb2

        request_cls, response_cls = reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    with grpc.insecure_channel(open_server.target) as channel:
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        replies = list(
            call(
                iter(
                    [
                        request_cls(list_services=""),
                        request_cls(file_containing_symbol="xfer.v1.RegistryService"),
                        request_cls(file_containing_symbol=V1_SERVICE_NAME),
                    ]
                ),
                timeout=10,
            )
        )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {
        "xfer.v1.RegistryService",
        "xfer.v1.TransferService",
        "xfer.v1.MetricsService",
        "grpc.health.v1.Health",
        V1_SERVICE_NAME,
        V1ALPHA_SERVICE_NAME,
    } <= names
    files = []
    for raw in replies[1].file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        files.append(proto)
    assert any(s.name == "RegistryService" for f in files for s in f.service)
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.ParseFromString(replies[2].file_descriptor_response.file_descriptor_proto[0])
    assert v1.package == "grpc.reflection.v1" and v1.service[0].name == "ServerReflection"


@pytest.mark.skipif(not BUF.exists(), reason="buf is not installed (`make lint` installs it with npm)")
@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
def test_buf_curl_lists_methods_with_either_reflection_protocol(open_server, protocol) -> None:
    result = subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            protocol,
            "--list-methods",
            f"http://{open_server.target}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "xfer.v1.TransferService/ReadArtifact" in result.stdout.splitlines()


@pytest.mark.skipif(not BUF.exists(), reason="buf is not installed (`make lint` installs it with npm)")
def test_buf_curl_shows_the_error_details(open_server) -> None:
    result = subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            "grpc-v1",
            "-d",
            '{"name": "models/digits\\n/versions/1"}',
            f"http://{open_server.target}/xfer.v1.RegistryService/GetModelVersion",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert '"code": "invalid_argument"' in result.stderr and '"type": "google.rpc.ErrorInfo"' in result.stderr
