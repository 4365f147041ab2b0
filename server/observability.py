"""What operators see: Prometheus metrics, request ids, and (optionally) JSON log lines.

Metrics live in a `CollectorRegistry` per server (not the process-global
one), so several servers in one process (tests) never collide, and are
served on their own port (`--metrics-port`). Every RPC gets a request id
(the caller's `x-request-id` when it is sane, else a fresh one), kept in a
context variable so that every log line written while serving the call,
in the event loop or in a worker thread, carries it.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("xfer_request_id", default="-")
REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: RPC latency buckets, from a cache-hit GetModelVersion to a long pull or upload.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)
VALIDATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def request_id_from(metadata: Any) -> str:
    """The caller's x-request-id if it is short and plain, else a new one."""
    for key, value in metadata or ():
        if key.lower() == REQUEST_ID_HEADER and isinstance(value, str) and _SANE_REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex[:16]


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (the current RPC's, or '-') to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def configure_logging(*, level: str, json_lines: bool) -> None:
    """Root logging for the server process: text (with the request id) or JSON lines, on stderr."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every step at INFO; its warnings still show.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


class ServerMetrics:
    """The server's Prometheus metrics (names are part of the operator interface; README lists them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter(
            "xfer_rpc_requests", "RPCs finished, by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "xfer_rpc_duration_seconds",
            "RPC duration, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_streams = Gauge(
            "xfer_active_streams", "Streaming RPCs in progress, by method", ["method"], registry=r
        )
        self.bytes_served = Counter(
            "xfer_artifact_bytes_served", "Artifact bytes sent by ReadArtifact, by format", ["format"], registry=r
        )
        self.chunk_cache_lookups = Counter(
            "xfer_chunk_cache_lookups",
            "ReadArtifact chunks looked up in the shared chunk cache, by result (hit, miss)",
            ["result"],
            registry=r,
        )
        self.bytes_received = Counter(
            "xfer_upload_bytes_received", "Artifact bytes received by CreateModelVersion", registry=r
        )
        self.validation = Histogram(
            "xfer_validation_duration_seconds",
            "Sandboxed validation jobs, by job and outcome",
            ["job", "outcome"],
            buckets=VALIDATION_BUCKETS,
            registry=r,
        )
        self.upload_rejections = Counter(
            "xfer_upload_rejections", "CreateModelVersion calls refused, by reason", ["reason"], registry=r
        )
        self.database_up = Gauge("xfer_database_up", "1 while the catalog database answers, else 0", registry=r)
        self._http: Any = None

    def observe_chunk_lookup(self, hit: bool) -> None:
        """Records one chunk cache lookup."""
        self.chunk_cache_lookups.labels(result="hit" if hit else "miss").inc()

    def observe_validation(self, job: str, outcome: str, seconds: float) -> None:
        """Records one sandboxed validation job."""
        self.validation.labels(job=job, outcome=outcome).observe(seconds)

    def serve(self, *, host: str, port: int) -> int:
        """Serves /metrics over HTTP on a daemon thread; returns the bound port (port 0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stops the HTTP endpoint, if any."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
