"""Content-addressed blob store: blobs/ab/abcdef... named by the sha256 of their bytes.

Uploads stream into temp files in the blob directory itself (same filesystem,
so `os.replace` is atomic), are fsynced, and only then moved into place. A
blob that exists is never rewritten: same name, same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from xfer.names import is_sha256
from xfer.server.errors import DataLoss, InvalidArgument, Reason, ResourceExhausted

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".upload-"
TEMP_SUFFIX = ".tmp"
#: A blob the collector has moved aside while it re-checks that nothing uses it.
TOMBSTONE_PREFIX = ".gc-"
#: A tombstone older than this was left by a collector that crashed; the next collection settles it.
TOMBSTONE_SETTLE_SECONDS = 600.0
#: A temp file nobody has written to for this long is abandoned, whoever owns it.
STALE_TEMP_SECONDS = 3600.0
# Temp names carry their owner (host and pid): replicas sharing one blob volume
# must not delete each other's in-flight uploads when one of them restarts.
_OWNER_RE = re.compile(r"^\.+upload-(?P<host>.+)-(?P<pid>\d+)-")


def _temp_prefix() -> str:
    return f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


_READ_BLOCK = 1024 * 1024


def check_sha256(value: str, *, what: str = "sha256") -> str:
    """Returns `value` if it is 64 lower-case hex digits, else raises InvalidArgument."""
    if not is_sha256(value):
        raise InvalidArgument(
            f"{what} must be 64 lower-case hex digits, got {str(value)[:80]!r}", reason=Reason.INVALID_UPLOAD
        )
    return value


class BlobWriter:
    """A temp file being filled, with a running sha256 and a size limit.

    Never holds more than one chunk in memory. Call `discard` on every path
    that does not `commit` (it is idempotent), or use it as a context manager.
    """

    def __init__(self, directory: Path, *, max_bytes: int, label: str = "artifact") -> None:
        fd, path = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(), suffix=TEMP_SUFFIX)
        self._file = os.fdopen(fd, "wb")
        self.path = Path(path)
        self._hash = hashlib.sha256()
        self._max_bytes = max_bytes
        self._label = label
        self.size = 0

    def write(self, data: bytes) -> None:
        """Appends `data`; ResourceExhausted once the total passes the limit."""
        if self.size + len(data) > self._max_bytes:
            raise ResourceExhausted(
                f"{self._label} is larger than the server's limit of {self._max_bytes} bytes; "
                "ask the operator to raise --max-artifact-mb or upload a smaller model"
            )
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes written so far."""
        return self._hash.hexdigest()

    def finish(self) -> None:
        """Flushes and fsyncs; the file stays a temp file until `BlobStore.commit`."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def discard(self) -> None:
        """Closes and removes the temp file (safe to call twice or after commit)."""
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class BlobStore:
    """Blobs under `root`, addressed by sha256."""

    def __init__(self, root: Path, *, verify: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._verify = verify
        # (sha256, size, mtime_ns) of blobs hashed since start; a changed file is hashed again.
        self._verified: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()

    def path_for(self, sha256: str) -> Path:
        """Where the blob with this digest lives."""
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def writer(self, *, max_bytes: int, label: str = "artifact") -> BlobWriter:
        """A new temp file in the blob directory."""
        return BlobWriter(self.root, max_bytes=max_bytes, label=label)

    def commit(self, writer: BlobWriter) -> str:
        """Moves a finished writer's file into place under its digest; returns the digest."""
        writer.finish()
        return self.adopt(writer.path, sha256=writer.sha256)

    def adopt(self, path: Path, *, sha256: str) -> str:
        """Moves a fsynced temp file `path` (in this store's root) into place as blob `sha256`."""
        target = self.path_for(sha256)
        target.parent.mkdir(exist_ok=True)
        try:
            # Content-addressed: if the bytes are already there, keep them and touch the file, so the
            # collector (which spares young blobs and re-checks after moving one aside) leaves it alone.
            os.utime(target)
        except FileNotFoundError:
            # Not there, or the collector moved it aside a moment ago: this upload's bytes take its place.
            os.replace(path, target)
            _fsync_dir(target.parent)
        else:
            Path(path).unlink(missing_ok=True)
        return sha256

    def temp_path(self, suffix: str = TEMP_SUFFIX) -> Path:
        """A fresh, empty temp file path in the store (removed at start-up if left behind)."""
        fd, path = tempfile.mkstemp(dir=self.root, prefix=_temp_prefix(), suffix=suffix)
        os.close(fd)
        return Path(path)

    def open(self, sha256: str, *, size: int) -> BinaryIO:
        """Opens a blob for reading, checking its size (and, once per process, its sha256).

        Raises DataLoss when the file is missing, has the wrong size or the wrong digest.
        """
        path = self.path_for(sha256)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            logger.error("blob %s is missing from %s", sha256, self.root)
            raise DataLoss(
                f"the stored artifact {sha256} is missing on the server; ask the operator to re-upload this version",
                reason=Reason.BLOB_MISSING,
                metadata={"sha256": sha256},
            ) from None
        try:
            stat = os.fstat(f.fileno())
            if stat.st_size != size:
                logger.error("blob %s has %d bytes, the catalog says %d", sha256, stat.st_size, size)
                raise DataLoss(
                    f"the stored artifact {sha256} is corrupt (size {stat.st_size}, expected {size}); "
                    "ask the operator to re-upload this version",
                    reason=Reason.BLOB_CORRUPT,
                    metadata={"sha256": sha256},
                )
            if self._verify:
                self._check_digest(f, sha256=sha256, size=size, mtime_ns=stat.st_mtime_ns)
            return f
        except BaseException:
            f.close()
            raise

    def _check_digest(self, f: BinaryIO, *, sha256: str, size: int, mtime_ns: int) -> None:
        key = (sha256, size, mtime_ns)
        with self._lock:
            if key in self._verified:
                return
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(_READ_BLOCK), b""):
            digest.update(block)
        f.seek(0)
        if digest.hexdigest() != sha256:
            logger.error("blob %s has digest %s", sha256, digest.hexdigest())
            raise DataLoss(
                f"the stored artifact {sha256} is corrupt (its bytes no longer match their sha256); "
                "ask the operator to re-upload this version",
                reason=Reason.BLOB_CORRUPT,
                metadata={"sha256": sha256},
            )
        with self._lock:
            self._verified.add(key)

    def exists(self, sha256: str) -> bool:
        """Whether the blob file is present."""
        return self.path_for(sha256).exists()

    def remove_temp_files(self, *, stale_seconds: float = STALE_TEMP_SECONDS) -> int:
        """Deletes temp files left by a crash or a cut-off upload; returns how many.

        Run at start-up. A temp file is kept only while its owner may still be
        writing it: another live process on this host, or another host (a
        replica sharing the volume) that touched it within `stale_seconds`.
        Tombstones of an interrupted garbage collection are resolved by the
        next collection, not here.
        """
        removed = 0
        host, now = socket.gethostname(), time.time()
        # Blobs live in two-character subdirectories; every plain file directly in
        # the root is a temp file (ours, or one models.export wrote beside it).
        for path in self.root.iterdir():
            if not path.is_file():
                continue
            owner = _OWNER_RE.match(path.name)
            if owner is not None:
                pid = int(owner["pid"])
                fresh = now - path.stat().st_mtime < stale_seconds
                if owner["host"] == host and pid != os.getpid() and _pid_alive(pid) and fresh:
                    continue
                if owner["host"] != host and fresh:
                    continue
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.info("removed %d leftover upload temp file(s) from %s", removed, self.root)
        return removed

    def collect_garbage(
        self, *, referenced: Callable[[], set[str]], is_referenced: Callable[[str], bool], min_age_s: float = 3600.0
    ) -> int:
        """Deletes blobs no version references and untouched for `min_age_s`; returns how many.

        Deleting a version never deletes files; this collector does, safely
        against uploads of the same bytes running at the same time, on this
        replica or another one sharing the volume:

        1. candidates: blob files older than `min_age_s` that `referenced()`
           (one query) does not list;
        2. each is renamed to a tombstone (atomic; a concurrent upload that now
           finds no file writes its own copy in its place);
        3. the tombstone is checked again: touched in the meantime (an upload
           re-used it) or referenced by the catalog now (`is_referenced`) ->
           it is put back, unless a fresh copy already took its place;
           otherwise it is deleted.
        """
        removed = 0
        cutoff = time.time() - min_age_s
        in_use = referenced()
        for path in sorted(self.root.glob("??/*")):
            name = path.name
            if name.startswith(TOMBSTONE_PREFIX):
                self._settle_tombstone(path, is_referenced=is_referenced, cutoff=cutoff, leftover=True)
                continue
            if not is_sha256(name) or name in in_use:
                continue
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
                tombstone = path.with_name(f"{TOMBSTONE_PREFIX}{_temp_prefix()[len(TEMP_PREFIX) :]}{name}")
                os.replace(path, tombstone)
            except FileNotFoundError:
                continue  # another collector got there first
            removed += self._settle_tombstone(tombstone, is_referenced=is_referenced, cutoff=cutoff)
        if removed:
            logger.info("garbage collection removed %d unreferenced blob(s)", removed)
        return removed

    @staticmethod
    def _settle_tombstone(
        tombstone: Path, *, is_referenced: Callable[[str], bool], cutoff: float, leftover: bool = False
    ) -> int:
        """Deletes a tombstone (returns 1) or puts the blob back (returns 0)."""
        sha256 = tombstone.name[-64:]
        target = tombstone.with_name(sha256)
        try:
            stat = tombstone.stat()
        except FileNotFoundError:
            return 0
        # The rename that made a tombstone sets its ctime; one younger than this is still being settled
        # by the collector (maybe another replica's) that made it, which takes milliseconds.
        if leftover and stat.st_ctime > time.time() - TOMBSTONE_SETTLE_SECONDS:
            return 0
        if stat.st_mtime >= cutoff or is_referenced(sha256):
            try:
                if target.exists():
                    tombstone.unlink(missing_ok=True)  # an upload already wrote a fresh copy
                else:
                    os.replace(tombstone, target)
            except FileNotFoundError:
                pass
            return 0
        tombstone.unlink(missing_ok=True)
        return 1


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable, not only the file's bytes.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
