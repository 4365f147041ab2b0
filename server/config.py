"""The server's configuration: one frozen dataclass, built only at the edge (__main__)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from xfer.server.policy import PublishPolicy

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything `create_server` needs; environment variables are read by __main__ only."""

    #: Holds the SQLite file (default catalog), blobs/ and nothing else.
    data_dir: Path
    host: str = "127.0.0.1"
    #: 0 picks a free port; `RunningServer.port` tells which.
    port: int = 50051
    #: SQLAlchemy URL; None means a SQLite file `xfer.db` in data_dir.
    db_url: str | None = None
    #: Token file (see server/auth.py); None means no authentication, loopback only.
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA that signs client certificates; set, it turns on mutual TLS.
    tls_client_ca: Path | None = None
    #: Size of ReadArtifact chunks; also sizes the gRPC message limits.
    chunk_size: int = MIB
    #: Memory for chunks read recently, shared by every stream of the same blob (server/chunk_cache.py); 0: none.
    chunk_cache_bytes: int = 64 * MIB
    max_artifact_bytes: int = 512 * MIB
    #: Threads for blocking work (database, file reads); streams wait for clients without holding one.
    max_workers: int = 16
    #: Seconds in-flight RPCs get to finish on shutdown.
    grace_seconds: float = 5.0
    #: Hash each blob once (per process) before serving it, answering DATA_LOSS if it rotted.
    verify_blobs: bool = True
    #: Apply pending schema migrations at start (under the migration lock); False: refuse to start unless current.
    migrate: bool = True

    # -- what one client can hold ------------------------------------------------------
    #: A stream whose client neither reads (ReadArtifact) nor sends (CreateModelVersion) for this long is ended.
    stall_timeout_s: float = 60.0
    max_reads_per_token: int = 32
    max_reads: int = 256
    max_uploads_per_token: int = 4
    max_uploads: int = 16
    #: Calls per second one token may make, in bursts of up to 4 s worth (server/limits.py); None: no limit.
    #: Only with a token file: an open server has no tokens to tell callers apart.
    max_call_rate: float | None = 50.0
    #: HTTP/2 streams one connection may open at once.
    max_streams_per_connection: int = 100
    #: The server pings an idle connection this often and drops it if no answer comes within the timeout.
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    #: Clients may not ping more often than this (keepalive enforcement; more is answered with GOAWAY).
    min_client_ping_interval_s: float = 10.0
    #: Connections are closed after this age (plus a grace period for calls in flight), so that load
    #: spreads over new replicas and no connection lives forever; clients reconnect (and pulls resume).
    max_connection_age_s: float = 1800.0
    max_connection_age_grace_s: float = 300.0
    max_connection_idle_s: float = 900.0
    #: Connections accepted at once; more are closed at accept. None: what the open-file limit leaves after the
    #: stream caps (server/open_files.py), so that a flood of silent connections cannot use up descriptors.
    max_connections: int | None = None
    #: A connection that has not finished its TLS and HTTP/2 handshake (the client's SETTINGS) within this is
    #: closed (gRPC's own default is 120 s). Generous for a slow link: a handshake takes a few round trips.
    handshake_timeout_s: float = 20.0

    # -- validation sandbox ----------------------------------------------------------------
    validation_workers: int = 2
    #: Memory each validation may use beyond 4x the bytes it checks.
    validation_memory_bytes: int = 512 * MIB
    validation_cpu_seconds: int = 300
    validation_timeout_s: float = 600.0
    #: Start the sandbox worker (imports torch, ~5 s) in the background at start-up.
    warm_sandbox: bool = True

    # -- operations ------------------------------------------------------------------------
    #: Prometheus /metrics on this port (None: off; 0 picks a free one).
    metrics_port: int | None = None
    #: Address of the metrics endpoint (None: the serving host).
    metrics_host: str | None = None
    #: Seconds between database checks that drive health (SERVING / NOT_SERVING).
    health_interval_s: float = 2.0
    #: Unreferenced blobs older than gc_min_age_s are collected every gc_interval_s (and once at start).
    gc_interval_s: float = 3600.0
    gc_min_age_s: float = 3600.0

    # -- publishing policy (server/policy.py) ----------------------------------------------
    #: Refuse versions not trained with DP at or below this epsilon.
    max_dp_epsilon: float | None = None
    #: Refuse versions whose card has no membership-inference audit.
    require_audit: bool = False
    #: Refuse versions whose audit's strongest membership attack has a higher AUC.
    max_mia_auc: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("token_file", "tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not 4096 <= self.chunk_size <= 64 * MIB:
            raise ValueError(f"chunk_size must be between 4 KiB and 64 MiB, got {self.chunk_size}")
        if self.chunk_cache_bytes < 0:
            raise ValueError(f"chunk_cache_bytes must not be negative, got {self.chunk_cache_bytes}")
        if self.max_artifact_bytes <= 0:
            raise ValueError(f"max_artifact_bytes must be positive, got {self.max_artifact_bytes}")
        positive = (
            "max_workers",
            "max_reads_per_token",
            "max_reads",
            "max_uploads_per_token",
            "max_uploads",
            "max_streams_per_connection",
            "validation_workers",
            "validation_memory_bytes",
            "validation_cpu_seconds",
            "validation_timeout_s",
            "stall_timeout_s",
            "health_interval_s",
            "keepalive_time_s",
            "keepalive_timeout_s",
            "max_connection_age_s",
            "max_connection_idle_s",
            "handshake_timeout_s",
            "gc_interval_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_call_rate is not None and not 0 < self.max_call_rate < float("inf"):
            raise ValueError(f"max_call_rate must be positive and finite (or None: no limit), got {self.max_call_rate}")
        if self.max_connections is not None and not self.max_connections > 0:
            raise ValueError(f"max_connections must be positive, got {self.max_connections}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        # The policy checks its own numbers (ValueError saying which flag is wrong).
        PublishPolicy(
            max_dp_epsilon=self.max_dp_epsilon, require_audit=self.require_audit, max_mia_auc=self.max_mia_auc
        )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("mutual TLS (--tls-client-ca) needs server TLS too (--tls-cert, --tls-key)")

    @property
    def effective_db_url(self) -> str:
        """The catalog's URL: db_url, or the SQLite file in data_dir."""
        return self.db_url or f"sqlite:///{(self.data_dir / 'xfer.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        """Where the content-addressed blobs live."""
        return self.data_dir / "blobs"

    @property
    def message_limit(self) -> int:
        """gRPC max message size: a chunk plus room for the header/card, never below 4 MiB."""
        return max(4 * MIB, self.chunk_size + MIB)
