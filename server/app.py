"""Builds a running gRPC server from a ServerConfig: storage, services, interceptors, health, reflection."""

from __future__ import annotations

import dataclasses
import logging
from concurrent import futures

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xfer.server import db
from xfer.server.auth import OpenAuthorizer, TokenAuthorizer, is_loopback, server_credentials
from xfer.server.blobs import BlobStore
from xfer.server.catalog import Catalog
from xfer.server.config import ServerConfig
from xfer.server.interceptors import Authorizer, RpcInterceptor
from xfer.server.metrics import RunStore
from xfer.server.metrics_servicer import MetricsServicer
from xfer.server.registry import Registry, RegistryLimits
from xfer.server.servicers import RegistryServicer, TransferServicer
from xfer.v1 import (metrics_service_pb2, metrics_service_pb2_grpc, registry_service_pb2,
                     registry_service_pb2_grpc, transfer_service_pb2, transfer_service_pb2_grpc)

logger = logging.getLogger(__name__)

#: Fully-qualified names of the xfer services, as health and reflection report them.
SERVICE_NAMES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    transfer_service_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name,
    metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
)


class ConfigError(ValueError):
    """A configuration the server refuses to start with."""


@dataclasses.dataclass
class RunningServer:
    """A started server. `target` is what a client dials."""

    server: grpc.Server
    port: int
    host: str
    config: ServerConfig
    registry: Registry
    engine: sa.Engine
    health: health.HealthServicer
    tls: bool

    @property
    def target(self) -> str:
        """host:port for grpc.insecure_channel / grpc.secure_channel."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish for `grace` seconds, then releases storage."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.engine.dispose()
        logger.info("xfer-server on %s stopped", self.target)


def _authorizer(config: ServerConfig) -> Authorizer:
    """The token checker the config asks for; refuses an open server on a non-loopback host."""
    if config.token_file is None:
        if not is_loopback(config.host):
            raise ConfigError(f"refusing to listen on {config.host!r} without authentication: pass --token-file "
                              "(create one with `python -m xfer.server.auth add --role operator --file tokens.json`) "
                              "or listen on 127.0.0.1")
        logger.warning("no token file: authentication is OFF and every caller is an operator; "
                       "listening on loopback (%s) only", config.host)
        return OpenAuthorizer()
    if not config.token_file.exists():
        raise ConfigError(f"token file {config.token_file} does not exist; create it with "
                          f"`python -m xfer.server.auth add --role operator --file {config.token_file}`")
    return TokenAuthorizer(config.token_file)


def _open_registry(config: ServerConfig, engine: sa.Engine) -> Registry:
    """Creates missing tables, cleans the blob directory and returns the registry over both."""
    catalog = Catalog(engine)
    catalog.create_schema()
    blobs = BlobStore(config.blob_dir, verify=config.verify_blobs)
    blobs.remove_temp_files()
    blobs.collect_garbage(catalog.referenced_shas())
    return Registry(catalog=catalog, blobs=blobs, limits=RegistryLimits(max_artifact_bytes=config.max_artifact_bytes))


def _add_services(server: grpc.Server, *, config: ServerConfig, registry: Registry,
                  engine: sa.Engine) -> health.HealthServicer:
    """Registers the xfer services, health and reflection; returns the health servicer."""
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)
    transfer_service_pb2_grpc.add_TransferServiceServicer_to_server(
        TransferServicer(registry, chunk_size=config.chunk_size), server)
    store = RunStore(engine=engine, resolve_version=registry.resolve)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(store), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    return health_servicer


def _bind(server: grpc.Server, config: ServerConfig) -> int:
    """Adds the listening port (TLS when configured); returns the bound port."""
    host = f"[{config.host}]" if ":" in config.host and not config.host.startswith("[") else config.host
    address = f"{host}:{config.port}"
    try:
        if config.tls_cert is not None:
            credentials = server_credentials(cert=config.tls_cert, key=config.tls_key, client_ca=config.tls_client_ca)
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc} (is the port in use?)") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {address} (is the port in use?)")
    return port


def create_server(config: ServerConfig) -> RunningServer:
    """Opens storage, registers every service and starts serving; port 0 picks a free port.

    Raises ConfigError (a ValueError) for a configuration it refuses, e.g. a
    non-loopback host without a token file, or a port in use.
    """
    authorizer = _authorizer(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.create_engine(config.effective_db_url)
    try:
        registry = _open_registry(config, engine)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="xfer-rpc"),
            interceptors=[RpcInterceptor(authorizer)],
            options=[
                ("grpc.max_receive_message_length", config.message_limit),
                ("grpc.max_send_message_length", config.message_limit),
                # Without this, a second server on the same fixed port would bind silently and share traffic.
                ("grpc.so_reuseport", 0),
            ],
        )
        health_servicer = _add_services(server, config=config, registry=registry, engine=engine)
        port = _bind(server, config)
    except BaseException:
        engine.dispose()
        raise
    server.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    tls = config.tls_cert is not None
    running = RunningServer(server=server, port=port, host=config.host.strip("[]"), config=config,
                            registry=registry, engine=engine, health=health_servicer, tls=tls)
    logger.info("serving with tls=%s, mtls=%s, auth=%s, db=%s, data dir %s", tls, config.tls_client_ca is not None,
                config.token_file is not None, engine.dialect.name, config.data_dir)
    # Same words as the line __main__ prints, so either can be parsed.
    logger.info("xfer-server listening on %s", running.target)
    return running
