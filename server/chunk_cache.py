"""Encoded ReadArtifact chunks shared by every reader of a blob: single-flight reads and a byte-bounded LRU.

When a fleet pulls a new model, many streams ask for the same chunks at
about the same time. Blobs are immutable and named by their sha256, so a
chunk read once can serve every stream: `get_or_read` returns the cached
message, or joins the read another stream already started, or starts the
read itself. Each hit saves a pread, the copy that builds the message and
a hop to a worker thread; the copy into gRPC and the socket remain.

The cache lives on the event loop's thread and is never touched from
another, so it needs no lock. A failed read is not cached: every waiter
sees the error and the next asker reads again.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

#: (sha256, offset, length) of a chunk inside a blob.
ChunkKey = tuple[str, int, int]


class ChunkCache:
    """Chunk messages by (sha256, offset, length), at most `max_bytes` of them kept; 0 disables keeping.

    `on_lookup(hit)` is told of every lookup (the server counts them in Prometheus).
    """

    def __init__(self, max_bytes: int, *, on_lookup: Callable[[bool], None] | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self._on_lookup = on_lookup
        self._entries: collections.OrderedDict[ChunkKey, asyncio.Future[bytes]] = collections.OrderedDict()
        self._bytes = 0  # the sum of the kept keys' lengths

    @property
    def size_bytes(self) -> int:
        """Bytes of the chunks kept (reads still in flight count with their length)."""
        return self._bytes

    async def get_or_read(self, key: ChunkKey, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """The message for `key`: kept, being read by another stream, or read now with `read()`.

        `read` is called at once, on this thread, and only on a miss.
        """
        entry = self._entries.get(key)
        if self._on_lookup is not None:
            self._on_lookup(entry is not None)
        if entry is not None:
            self._entries.move_to_end(key)
            # shield: a reader that gives up (its client left) must not cancel the read others wait on.
            return await asyncio.shield(entry)
        entry = asyncio.ensure_future(read())
        if key[2] <= self.max_bytes:
            self._keep(key, entry)
            entry.add_done_callback(lambda done: self._forget_failed(key, done))
        return await asyncio.shield(entry)

    def _keep(self, key: ChunkKey, entry: asyncio.Future[bytes]) -> None:
        self._entries[key] = entry
        self._bytes += key[2]
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _forget_failed(self, key: ChunkKey, done: asyncio.Future[bytes]) -> None:
        if self._entries.get(key) is done and (done.cancelled() or done.exception() is not None):
            self._drop(key)

    def _drop(self, key: ChunkKey) -> None:
        del self._entries[key]
        self._bytes -= key[2]
