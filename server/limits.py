"""Per-token and server-wide caps on concurrent streams (ReadArtifact, CreateModelVersion).

Streams are what a slow or hostile client can hold open; each cap turns the
(N+1)th stream into RESOURCE_EXHAUSTED (reason STREAM_LIMIT) with a retry
hint, instead of letting one token's streams crowd out everyone else's.
"""

from __future__ import annotations

import threading
from collections import Counter

from xfer.server.errors import Reason, ResourceExhausted

#: Seconds a refused client should wait before trying again.
RETRY_AFTER_S = 2.0


class StreamSlot:
    """A held place in a `StreamLimiter`; `release` is idempotent."""

    def __init__(self, limiter: StreamLimiter, key: str) -> None:
        self._limiter = limiter
        self._key = key
        self._held = True

    def release(self) -> None:
        """Gives the place back (safe to call twice)."""
        if self._held:
            self._held = False
            self._limiter._release(self._key)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StreamLimiter:
    """At most `per_key` concurrent streams per caller key and `total` over all callers."""

    def __init__(self, *, what: str, per_key: int, total: int, flag: str) -> None:
        if per_key <= 0 or total <= 0:
            raise ValueError(f"{what} limits must be positive, got {per_key} per token and {total} in total")
        self._what = what
        self._per_key = per_key
        self._total = total
        self._flag = flag
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    @property
    def open_streams(self) -> int:
        """Streams held now, over all callers."""
        with self._lock:
            return sum(self._open.values())

    def acquire(self, key: str) -> StreamSlot:
        """A slot for caller `key`, or ResourceExhausted (STREAM_LIMIT, with RetryInfo) when a cap is reached."""
        with self._lock:
            if self._open[key] >= self._per_key:
                raise ResourceExhausted(
                    f"this token already has {self._per_key} {self._what} open, the most "
                    f"the server allows per token; finish or cancel one and retry (the operator "
                    f"sets the cap with {self._flag}-per-token)",
                    reason=Reason.STREAM_LIMIT,
                    retry_after=RETRY_AFTER_S,
                    metadata={"limit": str(self._per_key)},
                )
            if sum(self._open.values()) >= self._total:
                raise ResourceExhausted(
                    f"the server has {self._total} {self._what} open, the most it allows; "
                    f"retry shortly (the operator sets the cap with {self._flag})",
                    reason=Reason.STREAM_LIMIT,
                    retry_after=RETRY_AFTER_S,
                    metadata={"limit": str(self._total)},
                )
            self._open[key] += 1
        return StreamSlot(self, key)

    def _release(self, key: str) -> None:
        with self._lock:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
