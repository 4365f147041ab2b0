"""`xfer-server` / `python -m xfer.server`: flags and environment -> ServerConfig -> serve until a signal.

The only place the server reads environment variables: XFER_DATA_DIR and
XFER_DB_URL (a database URL with a password does not belong on a command
line, where `ps` shows it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from xfer.server.config import MIB, ServerConfig

logger = logging.getLogger("xfer.server")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="xfer-server", description="Serve xfer source models over gRPC.")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("XFER_DATA_DIR", "./xfer-data")),
                        help="SQLite catalog and blobs live here (default: $XFER_DATA_DIR or ./xfer-data)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; anything else needs --token-file)")
    parser.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 picks a free one)")
    parser.add_argument("--db-url", default=os.environ.get("XFER_DB_URL"),
                        help="SQLAlchemy URL, e.g. postgresql://user@host/xfer (default: $XFER_DB_URL or "
                             "a SQLite file in the data dir)")
    parser.add_argument("--token-file", type=Path, help="bearer tokens (see `python -m xfer.server.auth --help`)")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="CA for client certificates: turns on mutual TLS")
    parser.add_argument("--chunk-size", type=int, default=MIB, help="ReadArtifact chunk size in bytes (default 1 MiB)")
    parser.add_argument("--max-artifact-mb", type=int, default=512, help="largest accepted artifact (default 512)")
    parser.add_argument("--max-workers", type=int, default=16, help="RPC worker threads (default 16)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds in-flight RPCs get on shutdown")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the server until SIGTERM or SIGINT; exit code 0 after a clean shutdown, 2 on bad config."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported after logging is set up: importing torch & co. takes a moment and may log.
    from xfer.server.app import ConfigError, create_server

    try:
        config = ServerConfig(
            data_dir=args.data_dir, host=args.host, port=args.port, db_url=args.db_url, token_file=args.token_file,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
            chunk_size=args.chunk_size, max_artifact_bytes=args.max_artifact_mb * MIB,
            max_workers=args.max_workers, grace_seconds=args.grace,
        )
        running = create_server(config)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"xfer-server: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # A parseable line for scripts and tests that start the server on port 0.
    print(f"xfer-server listening on {running.target}", flush=True)
    stop.wait()
    running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
