"""Server reflection, both protocols: grpc.reflection.v1 (what `buf curl --reflect-protocol grpc-v1`
and newer grpcurl ask for) and grpc.reflection.v1alpha (older tools).

grpcio-reflection ships only v1alpha. The v1 protocol is the same messages
under another package name, so v1 is served by the v1alpha servicer under
the v1 method name (byte-identical wire format), and the v1 file descriptor
(the v1alpha one renamed) is added to the descriptor pool so that clients
can also look the v1 service itself up.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _ensure_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(".grpc.reflection.v1alpha."):
                field.type_name = field.type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.", 1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.", 1)
            method.output_type = method.output_type.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.", 1)
    pool.Add(proto)


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> tuple[str, ...]:
    """Serves reflection v1 and v1alpha for `service_names` (plus both reflection services); returns all names."""
    _ensure_v1_descriptor()
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),
            grpc.method_handlers_generic_handler(V1ALPHA_SERVICE_NAME, {"ServerReflectionInfo": handler}),
        )
    )
    return names
