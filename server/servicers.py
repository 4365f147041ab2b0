"""Thin gRPC servicers: convert the request, call the domain, convert the response.

Errors are raised as server.errors exceptions and mapped to statuses by the
interceptor; nothing here touches status codes.
"""

from __future__ import annotations

import logging

from xfer.server import convert
from xfer.server.registry import Registry
from xfer.server.transfer import open_read
from xfer.v1 import registry_service_pb2 as rs
from xfer.v1 import registry_service_pb2_grpc, transfer_service_pb2_grpc

logger = logging.getLogger(__name__)


class RegistryServicer(registry_service_pb2_grpc.RegistryServiceServicer):
    """xfer.v1.RegistryService over a Registry."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def CreateModelVersion(self, request_iterator, context):
        record = self._registry.create_version(convert.upload_from_proto(request_iterator))
        return rs.CreateModelVersionResponse(model_version=convert.version_to_proto(record))

    def GetModelVersion(self, request, context):
        record = self._registry.get_version(request.name)
        return rs.GetModelVersionResponse(model_version=convert.version_to_proto(record))

    def ListModels(self, request, context):
        page = self._registry.list_models(page_size=request.page_size, page_token=request.page_token)
        return rs.ListModelsResponse(models=[convert.model_to_proto(m) for m in page.items],
                                     next_page_token=page.next_page_token)

    def ListModelVersions(self, request, context):
        page = self._registry.list_versions(request.parent, page_size=request.page_size,
                                            page_token=request.page_token)
        return rs.ListModelVersionsResponse(model_versions=[convert.version_to_proto(v) for v in page.items],
                                            next_page_token=page.next_page_token)

    def SetAlias(self, request, context):
        record = self._registry.set_alias(request.name, request.alias)
        return rs.SetAliasResponse(model_version=convert.version_to_proto(record))

    def DeprecateModelVersion(self, request, context):
        record = self._registry.deprecate(request.name, request.message)
        return rs.DeprecateModelVersionResponse(model_version=convert.version_to_proto(record))

    def DeleteModelVersion(self, request, context):
        self._registry.delete(request.name)
        return rs.DeleteModelVersionResponse()


class TransferServicer(transfer_service_pb2_grpc.TransferServiceServicer):
    """xfer.v1.TransferService: ReadArtifact streams blob bytes in fixed-size chunks."""

    def __init__(self, registry: Registry, *, chunk_size: int) -> None:
        self._registry = registry
        self._chunk_size = chunk_size

    def ReadArtifact(self, request, context):
        read = open_read(self._registry, name=request.name, fmt=convert.format_from_proto(request.format),
                         read_offset=request.read_offset, read_limit=request.read_limit,
                         chunk_size=self._chunk_size)
        yield from convert.read_responses(read)
