"""The server's open-file budget: the soft limit is lifted at start, and connections get what streams leave.

Every TCP connection holds a descriptor from the moment it is accepted, before
it has sent a byte. Without a cap, anyone who can reach the port can open
connections that never speak until the process runs out of descriptors; then
health checks, new clients and even the blob reads of streams already running
fail for as long as the flood lasts. So the number of connections is capped
(`grpc.max_allowed_incoming_connections`, enforced at accept: a connection
over the cap is closed at once, and a client sees UNAVAILABLE and retries)
at what the limit leaves after every stream the caps admit has its files,
and a connection that has not finished its handshake (TLS, and the HTTP/2
SETTINGS every client sends first) within `handshake_timeout_s` is closed.
A flood then costs the server at most the cap, the calls on connections
already open go on, and new connections are accepted again as soon as the
flood's are closed.
"""

from __future__ import annotations

import logging
import resource

from xfer.server.config import ServerConfig

logger = logging.getLogger("xfer.server")

#: Descriptors a server needs beyond its connections and streams: database, listening sockets, logs, sandbox.
SPARE_FILES = 128
#: The derived cap never goes below this: with fewer, a server is of no use (the start-up warning says why).
MIN_CONNECTIONS = 16


def stream_files(config: ServerConfig) -> int:
    """Descriptors the streams may hold besides their connections: each read the blob and, while a chunk is
    read, a duplicate of it; each upload a temporary file; plus SPARE_FILES."""
    return 2 * config.max_reads + config.max_uploads + SPARE_FILES


def open_file_limit() -> int | None:
    """This process's soft limit on open files (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(config: ServerConfig) -> int | None:
    """The most connections the server accepts at once: `config.max_connections`, or else what the open-file
    limit leaves after the streams' files (at least MIN_CONNECTIONS); None: no cap (no limit on files)."""
    if config.max_connections is not None:
        return config.max_connections
    limit = open_file_limit()
    return None if limit is None else max(MIN_CONNECTIONS, limit - stream_files(config))


def raise_open_file_limit(config: ServerConfig) -> None:
    """Lifts the soft limit on open files to the hard one, as Go's runtime does, and warns if it is short.

    At the usual soft limit of 1024, a full server would fail to accept connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft == resource.RLIM_INFINITY:
        return
    connections = config.max_connections if config.max_connections is not None else MIN_CONNECTIONS
    needed = stream_files(config) + connections
    if soft < needed:
        logger.warning(
            "the open-file limit is %d, but --max-reads %d, --max-uploads %d and %d connections may need %d; "
            "raise it (ulimit -n, or LimitNOFILE= in a systemd unit) or lower those caps",
            soft,
            config.max_reads,
            config.max_uploads,
            connections,
            needed,
        )
