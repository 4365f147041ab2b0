"""Builds a running gRPC server from a ServerConfig: storage, sandbox, services, health, reflection, metrics.

The server is asyncio (`grpc.aio`) on an event loop of its own thread, so
`create_server` stays a plain call that returns a handle: __main__ waits for
a signal, tests call `stop()`. Streams wait for slow clients without
holding a thread; blocking work goes to a bounded thread pool.

Health follows the database: a watchdog pings it every `health_interval_s`
and turns every service NOT_SERVING while it does not answer (calls then
fail with UNAVAILABLE, reason DATABASE_UNAVAILABLE) and SERVING again once
it does, by itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
from typing import Any

import grpc
import grpc.aio
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from xfer.server import db, migrate, reflection
from xfer.server.auth import OpenAuthorizer, TokenAuthorizer, is_loopback, server_credentials
from xfer.server.blobs import BlobStore
from xfer.server.catalog import Catalog
from xfer.server.chunk_cache import ChunkCache
from xfer.server.config import MIB, ServerConfig
from xfer.server.interceptors import UPLOAD_METHOD, Authorizer, RpcInterceptor
from xfer.server.limits import CallRateLimiter, StreamLimiter
from xfer.server.observability import ServerMetrics
from xfer.server.open_files import connection_cap
from xfer.server.pagination import PageTokens
from xfer.server.policy import PublishPolicy
from xfer.server.registry import Registry, RegistryLimits, ValidationLimits
from xfer.server.run_store import RunStore
from xfer.server.sandbox import Sandbox
from xfer.server.servicers import RegistryServicer, RunsServicer, TransferServicer, transfer_handler
from xfer.server.settings import page_token_key
from xfer.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
    registry_service_pb2,
    registry_service_pb2_grpc,
    transfer_service_pb2,
)

logger = logging.getLogger(__name__)

#: Fully-qualified names of the xfer services, as health and reflection report them.
SERVICE_NAMES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    transfer_service_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name,
    metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
)
READ_METHOD = "/xfer.v1.TransferService/ReadArtifact"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Seconds a database check may take before the database counts as down.
DB_CHECK_TIMEOUT_S = 5.0


class ConfigError(ValueError):
    """A configuration the server refuses to start with."""


@dataclasses.dataclass
class _Runtime:
    """What lives on the event loop: the aio server, health and the background tasks."""

    server: grpc.aio.Server
    health: Any
    tasks: list[asyncio.Task]
    port: int


class RunningServer:
    """A started server. `target` is what a client dials; `stop()` shuts it down."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        registry: Registry,
        engine: sa.Engine,
        metrics: ServerMetrics,
        sandbox: Sandbox,
        owns_sandbox: bool,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        runtime: _Runtime,
        executors: tuple[concurrent.futures.ThreadPoolExecutor, ...],
        metrics_port: int | None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.engine = engine
        self.metrics = metrics
        self.sandbox = sandbox
        self._owns_sandbox = owns_sandbox
        self.port = runtime.port
        self.host = config.host.strip("[]")
        self.tls = config.tls_cert is not None
        self.metrics_port = metrics_port
        self._loop = loop
        self._thread = thread
        self._runtime = runtime
        self._executors = executors
        self._stopped = False
        self._database_up = True

    @property
    def target(self) -> str:
        """host:port for grpc.insecure_channel / grpc.secure_channel."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def database_up(self) -> bool:
        """What the health watchdog last found."""
        return self._database_up

    def _set_database_up(self, up: bool) -> None:
        self._database_up = up

    def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish for `grace` seconds, then releases everything."""
        if self._stopped:
            return
        self._stopped = True
        seconds = self.config.grace_seconds if grace is None else grace
        future = asyncio.run_coroutine_threadsafe(_shutdown(self._runtime, grace=seconds), self._loop)
        try:
            future.result(seconds + 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            for executor in self._executors:
                executor.shutdown(wait=False, cancel_futures=True)
            if self._owns_sandbox:
                self.sandbox.close()
            self.metrics.close()
            self.engine.dispose()
        logger.info("xfer-server on %s stopped", self.target)


async def _shutdown(runtime: _Runtime, *, grace: float) -> None:
    await runtime.health.enter_graceful_shutdown()
    for task in runtime.tasks:
        task.cancel()
    await runtime.server.stop(grace)


def _authorizer(config: ServerConfig) -> Authorizer:
    """The token checker the config asks for; refuses an open server on a non-loopback host."""
    if config.token_file is None:
        if not is_loopback(config.host):
            raise ConfigError(
                f"refusing to listen on {config.host!r} without authentication: pass --token-file "
                "(create one with `xfer-server tokens add --role operator --file tokens.json`) "
                "or listen on 127.0.0.1"
            )
        logger.warning(
            "no token file: authentication is OFF and every caller is an operator; listening on loopback (%s) only",
            config.host,
        )
        return OpenAuthorizer()
    if not config.token_file.exists():
        raise ConfigError(
            f"token file {config.token_file} does not exist; create it with "
            f"`xfer-server tokens add --role operator --file {config.token_file}`"
        )
    return TokenAuthorizer(config.token_file)


def _prepare_database(config: ServerConfig, engine: sa.Engine) -> PageTokens:
    """Migrates (or checks) the schema and returns the page-token signer with the shared key."""
    try:
        if config.migrate:
            migrate.upgrade(engine)
        else:
            migrate.require_head(engine)
    except migrate.SchemaError as exc:
        raise ConfigError(str(exc)) from None
    except sa.exc.OperationalError as exc:
        raise ConfigError(
            f"cannot reach the database at {engine.url.render_as_string(hide_password=True)}: "
            f"{str(exc).splitlines()[0][:300]}"
        ) from None
    return PageTokens(page_token_key(engine))


def _options(config: ServerConfig) -> list[tuple[str, int]]:
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    options = [
        ("grpc.max_receive_message_length", config.message_limit),
        ("grpc.max_send_message_length", config.message_limit),
        # Uploads may arrive in DATA frames of up to 1 MiB rather than 16 KiB (fewer frames to parse).
        ("grpc.http2.max_frame_size", MIB),
        # Without this, a second server on the same fixed port would bind silently and share traffic.
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        ("grpc.keepalive_time_ms", ms(config.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(config.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(config.min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", ms(config.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(config.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(config.max_connection_age_grace_s)),
        ("grpc.server_handshake_timeout_ms", ms(config.handshake_timeout_s)),
    ]
    cap = connection_cap(config)
    if cap is not None:
        options.append(("grpc.max_allowed_incoming_connections", cap))
    return options


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Adds the listening port (TLS when configured); returns the bound port."""
    host = f"[{config.host}]" if ":" in config.host and not config.host.startswith("[") else config.host
    address = f"{host}:{config.port}"
    try:
        if config.tls_cert is not None:
            assert config.tls_key is not None
            credentials = server_credentials(cert=config.tls_cert, key=config.tls_key, client_ca=config.tls_client_ca)
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc} (is the port in use?)") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {address} (is the port in use?)")
    return port


class _Watchdog:
    """Background duties on the event loop: database health and blob garbage collection."""

    def __init__(
        self, *, config: ServerConfig, registry: Registry, health_servicer: Any, metrics: ServerMetrics, on_change: Any
    ) -> None:
        self._config = config
        self._registry = registry
        self._health = health_servicer
        self._metrics = metrics
        self._on_change = on_change
        self._up = True

    async def _set_all(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)

    async def watch_database(self) -> None:
        while True:
            try:
                await asyncio.wait_for(asyncio.to_thread(self._registry.catalog.ping), DB_CHECK_TIMEOUT_S)
                up = True
            except Exception as exc:
                if self._up:
                    logger.error(
                        "the database does not answer (%s); health is NOT_SERVING until it does",
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    )
                up = False
            if up != self._up:
                if up:
                    logger.warning("the database answers again; health is SERVING")
                await self._set_all(SERVING if up else NOT_SERVING)
                self._up = up
                self._on_change(up)
            self._metrics.database_up.set(1 if up else 0)
            await asyncio.sleep(self._config.health_interval_s)

    async def collect_garbage(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._registry.collect_garbage, min_age_s=self._config.gc_min_age_s)
            except Exception:
                logger.exception("blob garbage collection failed; it runs again in %.0f s", self._config.gc_interval_s)
            await asyncio.sleep(self._config.gc_interval_s)


async def _start(
    *,
    config: ServerConfig,
    registry: Registry,
    store: RunStore,
    authorizer: Authorizer,
    metrics: ServerMetrics,
    on_database_change: Any,
    reads: concurrent.futures.Executor,
) -> _Runtime:
    limiters = {
        READ_METHOD: StreamLimiter(
            what="artifact reads", per_key=config.max_reads_per_token, total=config.max_reads, flag="--max-reads"
        ),
        UPLOAD_METHOD: StreamLimiter(
            what="uploads", per_key=config.max_uploads_per_token, total=config.max_uploads, flag="--max-uploads"
        ),
    }
    # Rates are per token; an open server (loopback only, no tokens) has none to tell callers apart.
    call_rate = (
        CallRateLimiter(rate=config.max_call_rate)
        if config.max_call_rate is not None and config.token_file is not None
        else None
    )
    interceptor = RpcInterceptor(authorizer, limiters=limiters, call_rate=call_rate, metrics=metrics)
    server = grpc.aio.server(interceptors=[interceptor], options=_options(config))
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(registry, stall_timeout=config.stall_timeout_s, metrics=metrics), server
    )
    server.add_generic_rpc_handlers(
        (
            transfer_handler(
                TransferServicer(
                    registry,
                    chunk_size=config.chunk_size,
                    stall_timeout=config.stall_timeout_s,
                    chunks=ChunkCache(config.chunk_cache_bytes, on_lookup=metrics.observe_chunk_lookup),
                    metrics=metrics,
                    reads=reads,
                )
            ),
        )
    )
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(RunsServicer(store), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(server, (*SERVICE_NAMES, HEALTH_SERVICE))
    port = _bind(server, config)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, SERVING)
    watchdog = _Watchdog(
        config=config, registry=registry, health_servicer=health_servicer, metrics=metrics, on_change=on_database_change
    )
    tasks = [
        asyncio.create_task(watchdog.watch_database(), name="xfer-health"),
        asyncio.create_task(watchdog.collect_garbage(), name="xfer-gc"),
    ]
    return _Runtime(server=server, health=health_servicer, tasks=tasks, port=port)


def create_server(config: ServerConfig, *, sandbox: Sandbox | None = None) -> RunningServer:
    """Opens storage, registers every service and starts serving; port 0 picks a free port.

    `sandbox` shares one validation sandbox between servers of one process
    (tests); by default the server starts its own and stops it with itself.

    Raises ConfigError (a ValueError) for a configuration it refuses, e.g. a
    non-loopback host without a token file, a port in use, or a database it
    cannot reach or migrate.
    """
    authorizer = _authorizer(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.create_engine(config.effective_db_url)
    metrics = ServerMetrics()
    owns_sandbox = sandbox is None
    if sandbox is None:
        sandbox = Sandbox(max_concurrent=config.validation_workers)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="xfer-io")
    # Chunk reads get their own threads: a metadata call never waits behind the read-aheads of many pulls.
    reads = concurrent.futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="xfer-read")
    loop = asyncio.new_event_loop()
    loop.set_default_executor(executor)
    thread = threading.Thread(target=loop.run_forever, name="xfer-server-loop", daemon=True)
    try:
        tokens = _prepare_database(config, engine)
        metrics.database_up.set(1)  # it just answered; the watchdog keeps this current from here on
        catalog = Catalog(engine, page_tokens=tokens)
        blobs = BlobStore(config.blob_dir, verify=config.verify_blobs)
        blobs.remove_temp_files()
        limits = RegistryLimits(
            max_artifact_bytes=config.max_artifact_bytes,
            validation=ValidationLimits(
                memory_base_bytes=config.validation_memory_bytes,
                cpu_seconds=config.validation_cpu_seconds,
                wall_seconds=config.validation_timeout_s,
            ),
        )
        policy = PublishPolicy(
            max_dp_epsilon=config.max_dp_epsilon, require_audit=config.require_audit, max_mia_auc=config.max_mia_auc
        )
        if policy.active:
            logger.info("publishing policy: %s", policy.describe())
        registry = Registry(
            catalog=catalog,
            blobs=blobs,
            limits=limits,
            sandbox=sandbox,
            observe_validation=metrics.observe_validation,
            policy=policy,
        )
        store = RunStore(engine=engine, resolve_version=registry.resolve, page_tokens=tokens)
        if config.warm_sandbox and owns_sandbox:
            threading.Thread(target=sandbox.warm_up, name="xfer-sandbox-warm-up", daemon=True).start()
        metrics_port = None
        if config.metrics_port is not None:
            metrics_port = metrics.serve(host=config.metrics_host or config.host.strip("[]"), port=config.metrics_port)
        thread.start()
        holder: dict[str, RunningServer] = {}

        def on_database_change(up: bool) -> None:
            if "server" in holder:
                holder["server"]._set_database_up(up)

        started = asyncio.run_coroutine_threadsafe(
            _start(
                config=config,
                registry=registry,
                store=store,
                authorizer=authorizer,
                metrics=metrics,
                on_database_change=on_database_change,
                reads=reads,
            ),
            loop,
        )
        runtime = started.result(60)
    except BaseException:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        executor.shutdown(wait=False)
        reads.shutdown(wait=False)
        if owns_sandbox:
            sandbox.close()
        metrics.close()
        engine.dispose()
        raise
    running = RunningServer(
        config=config,
        registry=registry,
        engine=engine,
        metrics=metrics,
        sandbox=sandbox,
        owns_sandbox=owns_sandbox,
        loop=loop,
        thread=thread,
        runtime=runtime,
        executors=(executor, reads),
        metrics_port=metrics_port,
    )
    holder["server"] = running
    logger.info(
        "serving with tls=%s, mtls=%s, auth=%s, db=%s, data dir %s%s",
        running.tls,
        config.tls_client_ca is not None,
        config.token_file is not None,
        engine.dialect.name,
        config.data_dir,
        f", metrics on port {metrics_port}" if metrics_port is not None else "",
    )
    # Same words as the line __main__ prints, so either can be parsed.
    logger.info("xfer-server listening on %s", running.target)
    return running
