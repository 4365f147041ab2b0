"""Resumable, verified artifact download into the cache (the heart of `Client.pull`).

The protocol follows ByteStream: ReadArtifact from `read_offset` = the size
of the partial file, with the first response announcing total size and
sha256. The rules, and why:

* a blob already under blobs/<sha256> is never transferred again;
* downloaders of one digest take its lock, then re-check for the blob, so a
  concurrent second process waits and then transfers nothing;
* an UNAVAILABLE mid-stream keeps the bytes received and resumes from them
  after a backoff; the attempt counter restarts whenever bytes arrived, so
  a flaky but progressing link still finishes;
* RESOURCE_EXHAUSTED STREAM_LIMIT (no pull slot free for this token or on
  the server) or RATE_LIMITED (the token is over its call rate) is retried
  like UNAVAILABLE, after the server's RetryInfo delay, so a fleet larger
  than the server's caps queues instead of failing;
* a partial longer than the artifact (OUT_OF_RANGE) or a digest mismatch
  at the end discards the partial and restarts from zero, once: a second
  mismatch means the server sends bad bytes and retrying cannot help;
* DATA_LOSS (the server found its stored blob corrupt) removes the partial
  and fails at once: nothing is cached.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from xfer.client.cache import Cache, PartialDownload
from xfer.client.domain import ArtifactFormat
from xfer.client.errors import (
    DataLossError,
    IntegrityError,
    OutOfRangeError,
    RateLimitedError,
    TooManyStreamsError,
    UnavailableError,
)
from xfer.client.transport import RetryPolicy, Transport

log = logging.getLogger(__name__)

#: progress(done_bytes, total_bytes)
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class DownloadOutcome:
    """What a fetch did: where the blob is and how many bytes crossed the wire."""

    blob_path: Path
    cache_hit: bool
    transferred_bytes: int
    resumed_from: int
    restarts: int


def fetch_artifact(
    *,
    transport: Transport,
    cache: Cache,
    version_name: str,
    fmt: ArtifactFormat,
    sha256: str,
    size_bytes: int,
    retry: RetryPolicy = RetryPolicy(),
    progress: Progress | None = None,
    stream_timeout: float | None = None,
) -> DownloadOutcome:
    """Makes blobs/<sha256> exist and be correct, downloading (or resuming) only if needed."""
    if cache.has_blob(sha256, size_bytes=size_bytes):
        return DownloadOutcome(cache.blob_path(sha256), cache_hit=True, transferred_bytes=0, resumed_from=0, restarts=0)
    with cache.lock(sha256):
        if cache.has_blob(sha256, size_bytes=size_bytes):
            # Another process finished it while we waited for the lock.
            return DownloadOutcome(
                cache.blob_path(sha256), cache_hit=True, transferred_bytes=0, resumed_from=0, restarts=0
            )
        partial = cache.open_partial(sha256)
        try:
            return _download(
                transport=transport,
                partial=partial,
                version_name=version_name,
                fmt=fmt,
                sha256=sha256,
                size_bytes=size_bytes,
                retry=retry,
                progress=progress,
                stream_timeout=stream_timeout,
            )
        finally:
            partial.close()


def _download(
    *,
    transport: Transport,
    partial: PartialDownload,
    version_name: str,
    fmt: ArtifactFormat,
    sha256: str,
    size_bytes: int,
    retry: RetryPolicy,
    progress: Progress | None,
    stream_timeout: float | None,
) -> DownloadOutcome:
    transferred = 0
    restarts = 0
    failures = 0
    first_offset: int | None = None
    while True:
        if partial.offset > size_bytes:
            log.info("partial file of %s is longer than the artifact; starting over", sha256[:12])
            partial.discard()
        start = partial.offset
        if first_offset is None:
            first_offset = start
        if start:
            log.info("resuming %s at byte %d of %d", version_name, start, size_bytes)
        received_before = transferred
        try:
            with transport.read_artifact(version_name, fmt, offset=start, timeout=stream_timeout) as stream:
                first = True
                for piece in stream:
                    if first:
                        first = False
                        if piece.sha256 != sha256 or piece.total_size != size_bytes:
                            raise IntegrityError(
                                f"the server announced {piece.total_size} bytes with sha256 {piece.sha256} "
                                f"for {version_name}, but the version lists {size_bytes} bytes with {sha256}"
                            )
                    if not piece.data:
                        continue
                    if piece.offset != partial.offset:
                        raise IntegrityError(
                            f"chunk at offset {piece.offset} arrived where {partial.offset} was expected"
                        )
                    partial.write(piece.data)
                    transferred += len(piece.data)
                    if progress is not None:
                        progress(partial.offset, size_bytes)
            blob = partial.commit(size_bytes=size_bytes)
            return DownloadOutcome(
                blob, cache_hit=False, transferred_bytes=transferred, resumed_from=first_offset, restarts=restarts
            )
        except (IntegrityError, OutOfRangeError) as exc:
            if restarts >= 1:
                partial.remove()
                raise IntegrityError(
                    f"{version_name} ({fmt.value}) failed verification twice; nothing was cached: {exc}"
                ) from None
            restarts += 1
            log.warning("%s; discarding the partial download and starting over", exc)
            partial.discard()
        except DataLossError as exc:
            partial.remove()
            raise DataLossError(
                f"the server's stored {fmt.value} artifact of {version_name} is corrupt; "
                f"nothing was cached ({exc}). Ask the operator to re-register it.",
                code=exc.code,
            ) from None
        except (UnavailableError, TooManyStreamsError, RateLimitedError) as exc:
            partial.flush()
            failures = 0 if transferred > received_before else failures + 1
            if failures >= retry.max_attempts:
                raise
            delay = retry.delay(failures, server_hint=exc.retry_after)
            if isinstance(exc, TooManyStreamsError):
                log.info("the server has no pull slot free (%s); trying again in %.2fs", exc, delay)
            elif isinstance(exc, RateLimitedError):
                log.info("this token is over the server's call rate (%s); trying again in %.2fs", exc, delay)
            else:
                log.info("connection lost at byte %d; resuming in %.2fs", partial.offset, delay)
            time.sleep(delay)
