"""Small file helpers shared by every writer of files other processes read (atomic writes, digests)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike) -> str:
    """Lower-case hex sha256 of a file (streamed by `hashlib.file_digest`, never read whole)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_dir(directory: str | os.PathLike) -> None:
    """Makes a rename in `directory` durable; a filesystem that cannot fsync a folder is tolerated."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = 0o600) -> Iterator[Path]:
    """Yields a temp path beside `path` for a writer to fill (readers see the old file or the new one, never half).

    When the block succeeds the temp file is fsynced, given `mode` (0o600 is
    mkstemp's own) and moved into place with `os.replace`, so readers see the
    old file or the new one, never half; when it raises, the temp file is removed.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o600) -> None:
    """Writes `data` to `path` through `atomic_path`."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Writes indented, key-sorted JSON to `path` through `atomic_path`."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
