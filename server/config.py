"""The server's configuration: one frozen dataclass, built only at the edge (__main__)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
    max_artifact_bytes: int = 512 * MIB
    max_workers: int = 16
    #: Seconds in-flight RPCs get to finish on shutdown.
    grace_seconds: float = 5.0
    #: Hash each blob once (per process) before serving it, answering DATA_LOSS if it rotted.
    verify_blobs: bool = True

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
        if self.max_artifact_bytes <= 0:
            raise ValueError(f"max_artifact_bytes must be positive, got {self.max_artifact_bytes}")
        if self.max_workers <= 0:
            raise ValueError(f"max_workers must be positive, got {self.max_workers}")
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
