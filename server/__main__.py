"""`xfer-server` / `python -m xfer.server`: serve, migrate the database, or manage tokens.

    xfer-server [serve] [--data-dir DIR] [--port N] ...   run the server (the default command)
    xfer-server migrate [--db-url URL | --data-dir DIR]   apply schema migrations once, then exit
    xfer-server tokens add|list|remove ...                manage the token file (imports no torch)

The only place the server reads environment variables: XFER_DATA_DIR and
XFER_DB_URL (a database URL with a password does not belong on a command
line, where `ps` shows it).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xfer.server.config import MIB, ServerConfig

logger = logging.getLogger("xfer.server")

COMMANDS = ("serve", "migrate", "tokens")


def _number(parse: Callable[[str], float], *, low: float, high: float | None = None, above: bool = False) -> Any:
    """An argparse type: a finite `parse`d number >= `low` (> `low` if `above`) and <= `high`.

    Checked here, so that a bad value is reported against its flag, in the
    flag's own unit, before ServerConfig (which guards library callers) sees it.
    """
    what = "an integer" if parse is int else "a finite number"
    bound = f"more than {low:g}" if above else f"at least {low:g}" if high is None else f"from {low:g} to {high:.0f}"

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if above else value >= low) and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text}")
        return value

    return convert


PORT = _number(int, low=0, high=65535)
POSITIVE_INT = _number(int, low=0, above=True)
POSITIVE_SECONDS = _number(float, low=0, above=True)


def _storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("XFER_DATA_DIR", "./xfer-data")),
        help="SQLite catalog and blobs live here (default: $XFER_DATA_DIR or ./xfer-data)",
    )
    parser.add_argument(
        "--db-url",
        default=os.environ.get("XFER_DB_URL"),
        help="SQLAlchemy URL, e.g. postgresql://user@host/xfer (default: $XFER_DB_URL or "
        "a SQLite file in the data dir)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line, each with the request id",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `serve` command line (also what `xfer-server` without a command parses)."""
    defaults = ServerConfig(data_dir=Path("."))
    parser = argparse.ArgumentParser(
        prog="xfer-server",
        description="Serve xfer source models over gRPC. Other commands: `xfer-server migrate`, `xfer-server tokens`.",
    )
    _storage_flags(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; anything else needs --token-file)"
    )
    parser.add_argument("--port", type=PORT, default=50051, help="port (default 50051; 0 picks a free one)")
    parser.add_argument("--token-file", type=Path, help="bearer tokens (see `xfer-server tokens --help`)")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="CA for client certificates: turns on mutual TLS")
    parser.add_argument(
        "--chunk-size",
        type=_number(int, low=4096, high=64 * MIB),
        default=MIB,
        help="ReadArtifact chunk size in bytes (default 1 MiB)",
    )
    parser.add_argument(
        "--chunk-cache-mb",
        type=_number(int, low=0),
        default=defaults.chunk_cache_bytes // MIB,
        help="memory for recently read chunks, shared by all pulls of a model (default %(default)s; 0: off)",
    )
    parser.add_argument(
        "--max-artifact-mb", type=POSITIVE_INT, default=512, help="largest accepted artifact (default 512)"
    )
    parser.add_argument(
        "--max-workers",
        type=POSITIVE_INT,
        default=defaults.max_workers,
        help=f"threads for blocking work (database, disk) (default {defaults.max_workers})",
    )
    parser.add_argument(
        "--grace", type=_number(float, low=0), default=5.0, help="seconds in-flight RPCs get on shutdown"
    )
    parser.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_false",
        help="do not migrate the schema at start; refuse to start unless `xfer-server migrate` ran",
    )
    limits = parser.add_argument_group("what one client can hold")
    limits.add_argument(
        "--stall-timeout",
        type=POSITIVE_SECONDS,
        default=defaults.stall_timeout_s,
        help="seconds a stream may make no progress before it is ended (default %(default)s)",
    )
    limits.add_argument("--max-reads-per-token", type=POSITIVE_INT, default=defaults.max_reads_per_token)
    limits.add_argument(
        "--max-reads", type=POSITIVE_INT, default=defaults.max_reads, help="concurrent ReadArtifact streams"
    )
    limits.add_argument("--max-uploads-per-token", type=POSITIVE_INT, default=defaults.max_uploads_per_token)
    limits.add_argument(
        "--max-uploads", type=POSITIVE_INT, default=defaults.max_uploads, help="concurrent CreateModelVersion streams"
    )
    limits.add_argument(
        "--max-call-rate",
        type=_number(float, low=0),
        default=defaults.max_call_rate,
        help="calls per second per token, in bursts of up to 4 s worth; 0: no limit (default %(default)s)",
    )
    limits.add_argument(
        "--max-connection-age",
        type=POSITIVE_SECONDS,
        default=defaults.max_connection_age_s,
        help="seconds before a connection is closed (clients reconnect; default %(default)s)",
    )
    limits.add_argument(
        "--max-connections",
        type=POSITIVE_INT,
        help="connections accepted at once; more are closed at once (default: what the open-file limit "
        "leaves after the stream caps)",
    )
    limits.add_argument(
        "--handshake-timeout",
        type=POSITIVE_SECONDS,
        default=defaults.handshake_timeout_s,
        help="seconds a new connection gets to finish its TLS and HTTP/2 handshake (default %(default)s)",
    )
    validation = parser.add_argument_group("validation sandbox")
    validation.add_argument(
        "--validation-workers",
        type=POSITIVE_INT,
        default=defaults.validation_workers,
        help="uploads validated at once (default %(default)s)",
    )
    validation.add_argument(
        "--validation-memory-mb",
        type=POSITIVE_INT,
        default=defaults.validation_memory_bytes // MIB,
        help="memory a validation may use beyond 4x the bytes it checks (default %(default)s)",
    )
    validation.add_argument("--validation-cpu-seconds", type=POSITIVE_INT, default=defaults.validation_cpu_seconds)
    validation.add_argument(
        "--validation-timeout",
        type=POSITIVE_SECONDS,
        default=defaults.validation_timeout_s,
        help="wall-clock seconds per validation (default %(default)s)",
    )
    validation.add_argument(
        "--lazy-sandbox",
        dest="warm_sandbox",
        action="store_false",
        help="start the sandbox worker (which imports torch) at the first upload, not at start-up",
    )
    ops = parser.add_argument_group("operations")
    ops.add_argument("--metrics-port", type=PORT, help="serve Prometheus /metrics on this port (0 picks one)")
    ops.add_argument("--metrics-host", help="address of the metrics endpoint (default: --host)")
    ops.add_argument(
        "--health-interval",
        type=POSITIVE_SECONDS,
        default=defaults.health_interval_s,
        help="seconds between database checks behind health (default %(default)s)",
    )
    ops.add_argument(
        "--gc-interval",
        type=POSITIVE_SECONDS,
        default=defaults.gc_interval_s,
        help="seconds between blob garbage collections (default %(default)s)",
    )
    policy = parser.add_argument_group("publishing policy (refused with FAILED_PRECONDITION naming the rule)")
    policy.add_argument(
        "--max-dp-epsilon",
        type=float,
        default=None,
        help="publish only models trained with DP at this epsilon or below",
    )
    policy.add_argument(
        "--require-audit",
        action="store_true",
        help="publish only models whose card carries a membership-inference audit",
    )
    policy.add_argument(
        "--max-mia-auc",
        type=float,
        default=None,
        help="publish only audited models whose strongest membership attack has AUC <= this",
    )
    return parser


def build_migrate_parser() -> argparse.ArgumentParser:
    """The `migrate` command line."""
    parser = argparse.ArgumentParser(
        prog="xfer-server migrate",
        description="Apply the database schema migrations once (safe to run from several places at once), then exit.",
    )
    _storage_flags(parser)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    from xfer.server.observability import configure_logging

    configure_logging(level=args.log_level, json_lines=args.log_format == "json")


def migrate_main(argv: Sequence[str]) -> int:
    """`xfer-server migrate`: brings the schema to head under the migration lock; exit 0, or 2 on failure."""
    args = build_migrate_parser().parse_args(argv)
    _configure_logging(args)
    from xfer.server import db, migrate

    config = ServerConfig(data_dir=args.data_dir, db_url=args.db_url)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.create_engine(config.effective_db_url)
    try:
        result = migrate.upgrade(engine)
    except Exception as exc:
        print(f"xfer-server migrate: {str(exc).splitlines()[0][:500]}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    what = "already at" if not result.changed else f"migrated from {result.before or 'empty'} to"
    print(
        f"xfer-server migrate: {what} revision {result.after}"
        + (" (adopted a pre-migration database)" if result.adopted else "")
    )
    return 0


def serve_main(argv: Sequence[str]) -> int:
    """Runs the server until SIGTERM or SIGINT; exit code 0 after a clean shutdown, 2 on bad config."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    # Imported after logging is set up.
    from xfer.server.app import ConfigError, create_server
    from xfer.server.open_files import raise_open_file_limit

    try:
        config = ServerConfig(
            data_dir=args.data_dir,
            host=args.host,
            port=args.port,
            db_url=args.db_url,
            token_file=args.token_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            chunk_size=args.chunk_size,
            chunk_cache_bytes=args.chunk_cache_mb * MIB,
            max_artifact_bytes=args.max_artifact_mb * MIB,
            max_workers=args.max_workers,
            grace_seconds=args.grace,
            migrate=args.migrate,
            stall_timeout_s=args.stall_timeout,
            max_reads_per_token=args.max_reads_per_token,
            max_reads=args.max_reads,
            max_uploads_per_token=args.max_uploads_per_token,
            max_uploads=args.max_uploads,
            max_call_rate=args.max_call_rate or None,
            max_connection_age_s=args.max_connection_age,
            max_connections=args.max_connections,
            handshake_timeout_s=args.handshake_timeout,
            validation_workers=args.validation_workers,
            validation_memory_bytes=args.validation_memory_mb * MIB,
            validation_cpu_seconds=args.validation_cpu_seconds,
            validation_timeout_s=args.validation_timeout,
            warm_sandbox=args.warm_sandbox,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            health_interval_s=args.health_interval,
            gc_interval_s=args.gc_interval,
            max_dp_epsilon=args.max_dp_epsilon,
            require_audit=args.require_audit,
            max_mia_auc=args.max_mia_auc,
        )
        raise_open_file_limit(config)
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
    # Parseable lines for scripts and tests that start the server on port 0.
    if running.metrics_port is not None:
        print(f"xfer-server metrics on {running.host}:{running.metrics_port}", flush=True)
    print(f"xfer-server listening on {running.target}", flush=True)
    stop.wait()
    running.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches to serve (the default), migrate or tokens."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in COMMANDS else "serve"
    rest = args[1:] if args and args[0] in COMMANDS else args
    if command == "tokens":
        from xfer.server.tokens_cli import main as tokens_main

        return tokens_main(rest)
    if command == "migrate":
        return migrate_main(rest)
    return serve_main(rest)


if __name__ == "__main__":
    sys.exit(main())
