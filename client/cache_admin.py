"""Looking after the local cache: list what it holds, re-verify it, prune it.

What `xfer cache ls | verify | prune` run. Like `huggingface-cli scan-cache`
and `delete-cache`, but every deletion happens under the digest's download
lock (taken without waiting), so a pull running in another process is never
cut off: its partial file and lock are skipped, and removed next time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

from filelock import Timeout

from xfer.client.cache import Cache
from xfer.models.files import sha256_file
from xfer.names import is_sha256

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CachedFile:
    """A readable snapshot name and the verified blob behind it."""

    model: str
    version: int
    filename: str
    sha256: str
    size_bytes: int
    #: When the blob was last written or found by a pull (its mtime).
    modified: float


@dataclasses.dataclass(frozen=True)
class PartialFile:
    """The bytes of an unfinished download, kept so a later pull resumes."""

    sha256: str
    size_bytes: int
    modified: float


@dataclasses.dataclass(frozen=True)
class CacheListing:
    """What `xfer cache ls` shows."""

    root: Path
    files: tuple[CachedFile, ...]
    partials: tuple[PartialFile, ...]
    #: Blobs no snapshot name points at (kept until pruned).
    unreferenced_blobs: tuple[str, ...]

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in blobs and partial files (a blob shared by two names counts once)."""
        blobs = {f.sha256: f.size_bytes for f in self.files}
        unreferenced = sum(_size(self.root / "blobs" / d) for d in self.unreferenced_blobs)
        return sum(blobs.values()) + unreferenced + sum(p.size_bytes for p in self.partials)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What `xfer cache verify` found: each blob re-hashed against its name."""

    checked: int
    corrupt: tuple[str, ...]
    removed: bool

    @property
    def ok(self) -> bool:
        """Whether every blob matched its digest."""
        return not self.corrupt


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """What `xfer cache prune` removed, and what it left because another process was using it."""

    removed_files: int
    freed_bytes: int
    skipped_busy: tuple[str, ...]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _snapshot_links(cache: Cache) -> list[tuple[str, int, Path]]:
    root = cache.root / "snapshots"
    found = []
    for model_dir in sorted(root.iterdir()) if root.is_dir() else []:
        for version_dir in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
            if not version_dir.name.isdigit():
                continue
            for link in sorted(version_dir.iterdir()):
                found.append((model_dir.name, int(version_dir.name), link))
    return found


def _blob_of(link: Path) -> str | None:
    # A snapshot is a symlink into blobs/ (or, where symlinks are refused, the blob path is used directly).
    try:
        target = Path(os.readlink(link))
    except OSError:
        return None
    return target.name if is_sha256(target.name) else None


def list_cache(cache: Cache) -> CacheListing:
    """Every snapshot name with its blob, every partial download, and blobs nothing names."""
    files = []
    named: set[str] = set()
    for model, version, link in _snapshot_links(cache):
        digest = _blob_of(link)
        blob = cache.blob_path(digest) if digest else None
        if digest is None or blob is None or not blob.exists():
            continue  # dangling: pruned by `xfer cache prune`
        named.add(digest)
        st = blob.stat()
        files.append(
            CachedFile(
                model=model,
                version=version,
                filename=link.name,
                sha256=digest,
                size_bytes=st.st_size,
                modified=st.st_mtime,
            )
        )
    blobs_dir = cache.root / "blobs"
    blobs = sorted(p.name for p in blobs_dir.iterdir() if is_sha256(p.name)) if blobs_dir.is_dir() else []
    partials = []
    partial_dir = cache.root / "partial"
    for path in sorted(partial_dir.glob("*.partial")) if partial_dir.is_dir() else []:
        digest = path.name.removesuffix(".partial")
        if is_sha256(digest):
            st = path.stat()
            partials.append(PartialFile(sha256=digest, size_bytes=st.st_size, modified=st.st_mtime))
    return CacheListing(
        root=cache.root,
        files=tuple(files),
        partials=tuple(partials),
        unreferenced_blobs=tuple(d for d in blobs if d not in named),
    )


def verify_cache(cache: Cache, *, remove_corrupt: bool = False) -> VerifyReport:
    """Re-hashes every blob; with `remove_corrupt`, deletes those whose bytes no longer match their name.

    A later pull then downloads them again. Blobs are only ever created
    verified, so a mismatch means the disk or someone else changed them.
    """
    blobs_dir = cache.root / "blobs"
    digests = sorted(p.name for p in blobs_dir.iterdir() if is_sha256(p.name)) if blobs_dir.is_dir() else []
    corrupt = []
    for digest in digests:
        if sha256_file(cache.blob_path(digest)) != digest:
            log.warning("blob %s does not match its sha256", digest[:12])
            corrupt.append(digest)
            if remove_corrupt:
                with cache.lock(digest):
                    cache.blob_path(digest).unlink(missing_ok=True)
    return VerifyReport(checked=len(digests), corrupt=tuple(corrupt), removed=remove_corrupt and bool(corrupt))


def prune_cache(
    cache: Cache, *, models: tuple[str, ...] = (), everything: bool = False, partials_older_than: float = 0.0
) -> PruneReport:
    """Removes leftovers; with `models` (or `everything`) also those models' files.

    Always: partial downloads older than `partials_older_than` seconds, lock
    files, snapshot names whose blob is gone, and blobs no name points at.
    With `models`: their snapshot names, refs and blobs no other model uses.
    A digest whose lock another process holds (a pull in progress) is skipped.
    """
    removed = 0
    freed = 0
    busy: list[str] = []
    now = time.time()
    links = _snapshot_links(cache)
    drop_models = {m for m, _, _ in links} if everything else set(models)
    keep: set[str] = set()
    for model, _version, link in links:
        digest = _blob_of(link)
        if model in drop_models or digest is None or not cache.blob_path(digest).exists():
            link.unlink(missing_ok=True)
            removed += 1
        else:
            keep.add(digest)
    for model in drop_models:
        for directory in (cache.root / "refs" / model, cache.root / "snapshots" / model):
            removed += _remove_tree(directory)

    candidates: set[str] = set()
    for folder, suffix in (("blobs", ""), ("partial", ".partial"), ("locks", ".lock")):
        directory = cache.root / folder
        for path in directory.iterdir() if directory.is_dir() else []:
            digest = path.name.removesuffix(suffix) if suffix else path.name
            if is_sha256(digest):
                candidates.add(digest)
    for digest in sorted(candidates):
        try:
            with cache.lock(digest, timeout=0):
                targets = [cache.partial_path(digest)]
                if now - _mtime(cache.partial_path(digest)) < partials_older_than:
                    targets = []
                if digest not in keep:
                    targets.append(cache.blob_path(digest))
                for path in targets:
                    size = _size(path)
                    if path.exists():
                        path.unlink()
                        removed += 1
                        freed += size
                # Unlinked while held: a process that opens the old name afterwards gets a new inode,
                # and filelock re-checks that the inode it locked is still linked.
                cache.lock_path(digest).unlink(missing_ok=True)
        except Timeout:
            busy.append(digest)
    return PruneReport(removed_files=removed, freed_bytes=freed, skipped_busy=tuple(busy))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _remove_tree(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    count = 0
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
            count += 1
    directory.rmdir()
    return count
