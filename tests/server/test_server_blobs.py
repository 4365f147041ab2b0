"""Content-addressed blob store: atomic commits, size limits, verification, clean-up."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from xfer.server.blobs import BlobStore, check_sha256
from xfer.server.errors import DataLoss, InvalidArgument, ResourceExhausted


def _put(store: BlobStore, data: bytes) -> str:
    writer = store.writer(max_bytes=1 << 20)
    for start in range(0, len(data), 7):
        writer.write(data[start : start + 7])
    return store.commit(writer)


def test_commit_is_content_addressed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = _put(store, b"hello world")
    assert sha == hashlib.sha256(b"hello world").hexdigest()
    assert store.path_for(sha) == tmp_path / "blobs" / sha[:2] / sha
    assert _put(store, b"hello world") == sha  # the same bytes twice: one blob
    assert [p for p in (tmp_path / "blobs").iterdir() if p.is_file()] == []  # no temp file left
    with store.open(sha, size=11) as f:
        assert f.read() == b"hello world"


def test_size_limit(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with store.writer(max_bytes=4) as writer:
        writer.write(b"1234")
        with pytest.raises(ResourceExhausted, match="larger than the server's limit of 4 bytes"):
            writer.write(b"5")
        temp = writer.path
    assert not temp.exists()


def test_corruption_is_data_loss(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = _put(store, b"precious bytes")
    with pytest.raises(DataLoss, match="size 14, expected 15"):
        store.open(sha, size=15)
    path = store.path_for(sha)
    path.write_bytes(b"precious bytez")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1000))
    with pytest.raises(DataLoss, match="no longer match"):
        store.open(sha, size=14)
    path.unlink()
    with pytest.raises(DataLoss, match="missing"):
        store.open(sha, size=14)


def test_verification_is_cached_but_notices_rewrites(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = _put(store, b"abc")
    store.open(sha, size=3).close()
    path = store.path_for(sha)
    path.write_bytes(b"abd")  # same size; mtime changes, so it is hashed again
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    with pytest.raises(DataLoss):
        store.open(sha, size=3)


def _age(store: BlobStore, sha: str, seconds: float = 7200) -> None:
    old = time.time() - seconds
    os.utime(store.path_for(sha), (old, old))


def test_garbage_collection_spares_referenced_and_young_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    keep, drop = _put(store, b"keep"), _put(store, b"drop")
    referenced = {keep}

    def collect() -> int:
        return store.collect_garbage(referenced=lambda: set(referenced), is_referenced=lambda sha: sha in referenced)

    assert collect() == 0  # too young
    for sha in (keep, drop):
        _age(store, sha)
    assert collect() == 1
    assert store.exists(keep) and not store.exists(drop)
    assert [p.name for p in store.root.rglob("*") if p.name.startswith(".gc-")] == []


def test_garbage_collection_never_deletes_a_blob_an_upload_reuses_meanwhile(tmp_path: Path) -> None:
    """The documented delete race: a version is deleted while an upload of the same bytes commits.

    Between the collector's listing (unreferenced, old) and its delete, the
    upload adopts the blob (touches it) and commits a version referencing it.
    The collector re-checks after moving the file aside and puts it back.
    """
    store = BlobStore(tmp_path / "blobs")
    sha = _put(store, b"shared bytes")
    _age(store, sha)
    committed: set[str] = set()

    def referenced() -> set[str]:
        # The collector's listing sees no reference; right after it, an upload of the same bytes
        # adopts the existing blob (touching it) and commits.
        snapshot = set(committed)
        writer = store.writer(max_bytes=100)
        writer.write(b"shared bytes")
        store.commit(writer)
        committed.add(sha)
        return snapshot

    assert store.collect_garbage(referenced=referenced, is_referenced=lambda s: s in committed) == 0
    assert store.exists(sha) and store.path_for(sha).read_bytes() == b"shared bytes"
    # Once really unreferenced and old, it goes.
    committed.clear()
    _age(store, sha)
    assert store.collect_garbage(referenced=set, is_referenced=lambda s: False) == 1
    assert not store.exists(sha)


def test_an_upload_after_the_collector_moved_a_blob_aside_writes_its_own_copy(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = _put(store, b"bytes")
    tombstone = store.path_for(sha).with_name(f".gc-otherhost-1-{sha}")
    os.replace(store.path_for(sha), tombstone)  # as a collector on another replica does
    writer = store.writer(max_bytes=100)
    writer.write(b"bytes")
    assert store.commit(writer) == sha and store.path_for(sha).read_bytes() == b"bytes"
    # A leftover tombstone (its collector died) is settled by the next collection: the live copy stays.
    old = time.time() - 7200
    os.utime(tombstone, (old, old))
    import xfer.server.blobs as blobs_module

    settle = blobs_module.TOMBSTONE_SETTLE_SECONDS
    blobs_module.TOMBSTONE_SETTLE_SECONDS = 0.0
    try:
        store.collect_garbage(referenced=lambda: {sha}, is_referenced=lambda s: True)
    finally:
        blobs_module.TOMBSTONE_SETTLE_SECONDS = settle
    assert not tombstone.exists() and store.path_for(sha).read_bytes() == b"bytes"


def test_remove_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer(max_bytes=10)  # owned by this (live) process: a crash would leave it behind
    writer.write(b"half")
    writer.finish()
    sha = _put(store, b"kept")
    host = socket.gethostname()
    dead = _dead_pid()
    crashed = store.root / f".upload-{host}-{dead}-abc.tmp"
    other_replica = store.root / ".upload-replica-2-4242-abc.tmp"
    stale_replica = store.root / ".upload-replica-3-4242-abc.tmp"
    untagged = store.root / ".upload-old-format.tmp"
    for path in (crashed, other_replica, stale_replica, untagged):
        path.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale_replica, (old, old))
    assert store.remove_temp_files() == 4  # our own (start-up runs before any upload), crashed, stale, untagged
    assert not writer.path.exists() and not crashed.exists() and not stale_replica.exists()
    assert other_replica.exists()  # a live upload of another replica sharing the volume
    assert store.exists(sha)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped, so no process has this pid (until reuse)


def test_sha256_syntax() -> None:
    assert check_sha256("a" * 64) == "a" * 64
    for bad in ("A" * 64, "a" * 63, "../" + "a" * 61, ""):
        with pytest.raises(InvalidArgument):
            check_sha256(bad)
