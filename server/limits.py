"""Per-token limits: concurrent streams (ReadArtifact, CreateModelVersion) and the rate of calls.

Streams are what a slow or hostile client can hold open; each cap turns the
(N+1)th stream into RESOURCE_EXHAUSTED (reason STREAM_LIMIT) with a retry
hint, instead of letting one token's streams crowd out everyone else's.
Calls are what a fast one can send: past its rate, a token's calls get
RESOURCE_EXHAUSTED (reason RATE_LIMITED) with the wait until it may call again.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable

from xfer.server.errors import Reason, ResourceExhausted

#: Seconds a refused client should wait before trying again.
RETRY_AFTER_S = 2.0
#: A token may burst this many seconds' worth of its call rate at once (after as long a pause).
CALL_BURST_SECONDS = 4.0


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


class CallRateLimiter:
    """At most `rate` calls per second per caller key, in bursts of `burst_seconds` worth (a token bucket per key).

    Keys are token names, so the buckets are as many as the token file has entries.
    """

    def __init__(
        self, *, rate: float, burst_seconds: float = CALL_BURST_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(rate) and rate > 0 and math.isfinite(burst_seconds) and burst_seconds > 0):
            raise ValueError(f"call rate limits must be positive and finite, got {rate}/s over {burst_seconds}s")
        self._rate = rate
        self._burst = max(1.0, rate * burst_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> None:
        """Spends one call of `key`'s budget, or raises ResourceExhausted (RATE_LIMITED) with the wait."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self._rate
                raise ResourceExhausted(
                    f"this token made more than {self._rate:g} calls per second; retry in {wait:.2f}s "
                    f"(the operator sets the rate with --max-call-rate)",
                    reason=Reason.RATE_LIMITED,
                    retry_after=wait,
                    metadata={"limit": f"{self._rate:g}"},
                )
            self._buckets[key] = (tokens - 1, now)
