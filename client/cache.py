"""The local artifact cache: content-addressed, verified, resumable, multi-process safe.

Layout under the root (`$XFER_CACHE` or `~/.cache/xfer`, chosen by the caller)::

    blobs/<sha256>                         verified artifacts, named by their digest
    partial/<sha256>.partial               bytes of an unfinished download (resumed later)
    locks/<sha256>.lock                    file lock (filelock): one downloader per digest at a time
    refs/<model>/<version-or-alias>.json   what a reference last resolved to
    snapshots/<model>/<version>/model.<ext>  readable names: symlinks into blobs/

Invariants (the reasons behind the code below):

* a file appears under `blobs/` only by `os.replace` of a fully written,
  fsynced file whose sha256 was checked, so a reader never sees a partial
  or corrupt blob, and a blob that exists needs no download;
* every metadata file is written to a temp file in the same directory,
  fsynced, then `os.replace`d (what huggingface_hub does for its refs);
* downloaders of the same digest serialise on `locks/<sha256>.lock`, so
  two processes pulling at once end with one correct file, and the second
  finds the blob and transfers nothing;
* lock files are deleted only by `xfer cache prune`, and only while it
  holds them; filelock notices a lock file unlinked under it and retries,
  so no two processes ever hold "the" lock on different inodes.

Maintenance (`ls`, `verify`, `prune`) lives in cache_admin.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from xfer.client.errors import IntegrityError
from xfer.models.files import fsync_dir, write_bytes_atomic
from xfer.names import is_sha256

log = logging.getLogger(__name__)

#: Read size when re-hashing an existing partial file on resume.
_HASH_BLOCK = 1 << 20
#: Bytes between page-cache releases of a growing partial file.
_RELEASE_EVERY = 16 << 20
#: Chunks waiting for the writer thread; bounds memory at this many chunks.
_QUEUE_DEPTH = 8
_STOP = object()


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """`$XFER_CACHE`, else `~/.cache/xfer`. Only edges (CLI, Client defaults) call this with os.environ."""
    configured = environ.get("XFER_CACHE", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "xfer"


def _check_digest(sha256: str) -> str:
    # The digest becomes a file name: refuse anything that is not plain hex.
    if not is_sha256(sha256):
        raise IntegrityError(f"malformed sha256 {sha256!r}: expected 64 lower-case hex digits")
    return sha256


def write_atomic(path: Path, data: bytes) -> None:
    """Writes `data` to `path` via temp file + fsync + os.replace, so readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


@dataclasses.dataclass(frozen=True)
class CachedRef:
    """What a reference resolved to when it was last used online (enough to work offline)."""

    model_version: str
    version: int
    artifacts: dict[str, dict[str, Any]]
    #: The version's model card as a dict (`ModelCard.to_dict()`), so a pulled model loads offline.
    card: dict[str, Any] | None = None
    deprecated: bool = False
    deprecation_message: str = ""
    #: The operator's signatures (`ManifestSignature.to_dict()`), so a signed pull verifies offline too.
    signatures: list[dict[str, str]] = dataclasses.field(default_factory=list)


class _Stage:
    """A daemon thread applying `work` to the items put to it, in order, through a bounded queue.

    The first error stops the work (later items are dropped) and is re-raised
    by `drain` or `raise_error` in the caller's thread.
    """

    def __init__(self, work: Callable[[Any], None], *, name: str) -> None:
        self._work = work
        self._name = name
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:
                    self._work(item)
            except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
                self._error = exc
            finally:
                self._queue.task_done()

    def put(self, item: Any) -> None:
        """Queues `item`, starting the thread on first use; blocks while the queue is full."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._queue.put(item)

    def raise_error(self) -> None:
        """Re-raises (once) the error the thread hit, if any."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def drain(self) -> None:
        """Waits until every queued item is done; re-raises an error."""
        if self._thread is not None:
            self._queue.join()
        self.raise_error()

    def stop(self) -> None:
        """Finishes the queued items, then ends the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None


class PartialDownload:
    """An open `.partial` file that grows by `write` and becomes a blob by `commit`.

    Hashes incrementally as bytes arrive; on open it re-hashes what an earlier,
    interrupted attempt left, so the final digest covers every byte.

    Hashing and writing happen on two background threads, each fed by a
    small bounded queue, so they overlap with each other and with receiving
    the next chunks (hashlib on large buffers and os.pwrite release the GIL,
    as does gRPC's wait). sha256 is the slowest step of a pull; with the
    write on its own thread, a 32 MiB pull on two 2 GHz vCPUs went from a
    median 151 to 175 MiB/s. Every `release_every` bytes the writer calls
    posix_fadvise(DONTNEED)
    on the recent range: the kernel starts writing it back, and the next
    call drops the (by then clean) pages from the page cache. So the final
    fsync has little left to do, and a large download recycles a few MiB of
    page cache instead of growing it by the artifact's size, which on VMs
    costs more than the copy itself (bench/pull.py: a 256 MiB file written
    at 200-350 MB/s without this, 900-2000 MB/s with it).
    """

    def __init__(self, cache: Cache, sha256: str, *, release_every: int = _RELEASE_EVERY) -> None:
        self.sha256 = sha256
        self.path = cache.partial_path(sha256)
        self._blob = cache.blob_path(sha256)
        self._release_every = release_every
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fd_open = True
        self._hash = hashlib.sha256()
        size = 0
        while block := os.pread(self._fd, _HASH_BLOCK, size):
            self._hash.update(block)
            size += len(block)
        #: Bytes accepted so far (some maybe still queued for the writer thread).
        self.offset = size
        self._written = size  # bytes handed to the OS
        # [_release_from, _written) may still be in the page cache; _release_mark is the
        # end of the range the last release started writing back.
        self._release_from = self._release_mark = size
        self._stages = (
            _Stage(lambda data: self._hash.update(data), name=f"xfer-hash-{sha256[:8]}"),
            _Stage(self._write_out, name=f"xfer-write-{sha256[:8]}"),
        )

    # -- the two pipeline stages --------------------------------------------------------
    def _write_out(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self._written)
            self._written += n
            view = view[n:]
        if self._written - self._release_mark >= self._release_every:
            self._release_cache()

    def _release_cache(self) -> None:
        # DONTNEED drops clean pages and starts writeback of dirty ones without
        # waiting, so each range is advised twice: once to write, once to drop.
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, self._release_from, self._written - self._release_from, os.POSIX_FADV_DONTNEED)
        self._release_from, self._release_mark = self._release_mark, self._written

    def _drain(self) -> None:
        """Waits until every queued chunk is hashed and in the file; re-raises a write error."""
        for stage in self._stages:
            stage.drain()

    def _stop(self) -> None:
        for stage in self._stages:
            stage.stop()

    # -- API ------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        """Queues `data` to be hashed and written (at most a few chunks are ever queued)."""
        for stage in self._stages:
            stage.raise_error()
        self.offset += len(data)
        for stage in self._stages:
            stage.put(data)

    def discard(self) -> None:
        """Throws away everything received so far and starts over at offset 0."""
        self._drain()
        os.ftruncate(self._fd, 0)
        self._hash = hashlib.sha256()
        self.offset = self._written = self._release_from = self._release_mark = 0

    def flush(self) -> None:
        """Waits until every accepted byte is in the file, so a later attempt resumes after it."""
        self._drain()

    def commit(self, *, size_bytes: int) -> Path:
        """Verifies size and sha256, then moves the file to blobs/<sha256>.

        On a mismatch the partial file is discarded and IntegrityError raised;
        nothing appears under blobs/.
        """
        self._drain()
        actual = self._hash.hexdigest()
        if self.offset != size_bytes or actual != self.sha256:
            got = self.offset
            self.discard()
            raise IntegrityError(
                f"downloaded artifact does not match its digest: expected {size_bytes} bytes with sha256 "
                f"{self.sha256}, got {got} bytes with sha256 {actual}"
            )
        self._stop()
        os.fsync(self._fd)
        self.close()
        self._blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, self._blob)
        fsync_dir(self._blob.parent)
        return self._blob

    def close(self) -> None:
        """Writes what is queued, then closes the file, keeping the bytes for a later resume."""
        self._stop()
        if self._fd_open:
            os.close(self._fd)
            self._fd_open = False

    def remove(self) -> None:
        """Closes and deletes the partial file."""
        self.close()
        self.path.unlink(missing_ok=True)


class Cache:
    """The cache rooted at `root` (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def blob_path(self, sha256: str) -> Path:
        """Where the verified blob of `sha256` lives (whether or not it exists yet)."""
        return self.root / "blobs" / _check_digest(sha256)

    def partial_path(self, sha256: str) -> Path:
        """Where the unfinished download of `sha256` lives."""
        return self.root / "partial" / f"{_check_digest(sha256)}.partial"

    def has_blob(self, sha256: str, *, size_bytes: int | None = None) -> bool:
        """Whether a verified blob is present (and, if given, of the expected size)."""
        try:
            st = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return False
        return size_bytes is None or st.st_size == size_bytes

    def lock_path(self, sha256: str) -> Path:
        """The lock file that serialises downloads of `sha256`."""
        return self.root / "locks" / f"{_check_digest(sha256)}.lock"

    @contextlib.contextmanager
    def lock(self, sha256: str, *, timeout: float = -1) -> Iterator[None]:
        """Holds the exclusive lock for downloading `sha256` (blocks while another process holds it).

        The OS releases it when the process dies, so a crash never leaves a stale lock.
        """
        path = self.lock_path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=timeout, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if timeout == 0:
                raise
            log.info("another process is downloading %s; waiting for it", sha256[:12])
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def open_partial(self, sha256: str) -> PartialDownload:
        """Opens (or creates) the partial file of `sha256`; call only while holding `lock`."""
        return PartialDownload(self, sha256)

    # -- refs -------------------------------------------------------------------
    def _ref_path(self, model: str, selector: str) -> Path:
        return self.root / "refs" / model / f"{selector}.json"

    def write_ref(self, *, model: str, selector: str, ref: CachedRef) -> None:
        """Records what `model` + `selector` (a version number or alias) resolved to, atomically."""
        data = json.dumps(dataclasses.asdict(ref), indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(self._ref_path(model, selector), data)

    def read_ref(self, *, model: str, selector: str) -> CachedRef | None:
        """The last recorded resolution of `model` + `selector`, or None."""
        try:
            data = json.loads(self._ref_path(model, selector).read_text())
            known = {f.name for f in dataclasses.fields(CachedRef)}
            return CachedRef(**{k: v for k, v in data.items() if k in known})
        except (FileNotFoundError, ValueError, TypeError):
            return None

    # -- snapshots --------------------------------------------------------------
    def link_snapshot(self, *, model: str, version: int, filename: str, sha256: str) -> Path:
        """A readable name (`snapshots/<model>/<version>/<filename>`) linking to the blob.

        Falls back to the blob path itself where symlinks are unsupported.
        """
        link = self.root / "snapshots" / model / str(version) / filename
        blob = self.blob_path(sha256)
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(blob, link.parent)
        try:
            if os.readlink(link) == target:
                return link
        except OSError:
            pass
        tmp = link.parent / f".{filename}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.unlink(missing_ok=True)
            os.symlink(target, tmp)
            os.replace(tmp, link)  # atomic even when another process links the same name
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                return blob
            raise
        return link
