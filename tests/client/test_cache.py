"""client/cache.py without a server: verification, resumable partials, atomic writes, locks."""

from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from xfer.client.cache import Cache, CachedRef, default_cache_dir, write_atomic
from xfer.client.errors import IntegrityError
from xfer.client.progress import ProgressBar, human_bytes

DATA = os.urandom(300_000)
DIGEST = hashlib.sha256(DATA).hexdigest()


def test_default_cache_dir_reads_only_the_mapping_it_is_given(tmp_path):
    assert default_cache_dir({"XFER_CACHE": str(tmp_path)}) == tmp_path
    assert default_cache_dir({}) == Path.home() / ".cache" / "xfer"
    assert default_cache_dir({"XFER_CACHE": "  "}) == Path.home() / ".cache" / "xfer"


def test_partial_commit_verifies_before_the_blob_is_visible(tmp_path):
    cache = Cache(tmp_path)
    partial = cache.open_partial(DIGEST)
    partial.write(DATA[:1000])
    assert not cache.has_blob(DIGEST)
    partial.write(DATA[1000:])
    blob = partial.commit(size_bytes=len(DATA))
    assert blob == cache.blob_path(DIGEST) and blob.read_bytes() == DATA
    assert cache.has_blob(DIGEST, size_bytes=len(DATA)) and not cache.has_blob(DIGEST, size_bytes=1)
    assert not cache.partial_path(DIGEST).exists()


def test_a_mismatch_is_discarded_and_never_visible(tmp_path):
    cache = Cache(tmp_path)
    partial = cache.open_partial(DIGEST)
    partial.write(DATA[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="does not match"):
        partial.commit(size_bytes=len(DATA))
    assert partial.offset == 0 and not cache.has_blob(DIGEST)
    partial.remove()
    assert not cache.partial_path(DIGEST).exists()


def test_reopened_partial_resumes_with_the_right_hash(tmp_path):
    cache = Cache(tmp_path)
    first = cache.open_partial(DIGEST)
    first.write(DATA[:123_457])
    first.close()  # an interrupted pull leaves its bytes behind
    second = cache.open_partial(DIGEST)
    assert second.offset == 123_457
    second.write(DATA[123_457:])
    assert second.commit(size_bytes=len(DATA)).read_bytes() == DATA


def _write_past_a_file_size_limit(root: str, queue) -> None:
    # Child process: the kernel refuses writes past RLIMIT_FSIZE with EFBIG (SIGXFSZ ignored).
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    data = bytes(range(256)) * 1200  # this process re-imported the module: DATA is not the parent's
    digest = hashlib.sha256(data).hexdigest()
    cache = Cache(Path(root))
    partial = cache.open_partial(digest)
    try:
        for start in range(0, len(data), 50_000):
            partial.write(data[start : start + 50_000])
        partial.commit(size_bytes=len(data))
        queue.put("committed")
    except OSError as exc:
        queue.put(f"OSError {exc.errno}")
    queue.put((cache.has_blob(digest), cache.partial_path(digest).stat().st_size))


def test_a_failed_write_reaches_the_caller_and_nothing_is_committed(tmp_path):
    # The writer thread hits the error; the pull's thread must see it, not a verified blob.
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_write_past_a_file_size_limit, args=(str(tmp_path), queue))
    child.start()
    outcome, (has_blob, partial_size) = queue.get(timeout=60), queue.get(timeout=60)
    child.join(60)
    assert outcome == f"OSError {errno.EFBIG}"
    assert has_blob is False and partial_size == 100_000  # what was written stays for a resume


def test_malformed_digests_never_become_paths(tmp_path):
    cache = Cache(tmp_path)
    for bad in ("../../etc/passwd", "ABC", "0" * 63, DIGEST.upper()):
        with pytest.raises(IntegrityError):
            cache.blob_path(bad)


def test_refs_are_written_atomically_and_read_back(tmp_path):
    cache = Cache(tmp_path)
    assert cache.read_ref(model="m1", selector="latest") is None
    ref = CachedRef(
        model_version="models/m1/versions/3", version=3, artifacts={"onnx": {"sha256": DIGEST, "size_bytes": 5}}
    )
    cache.write_ref(model="m1", selector="latest", ref=ref)
    assert cache.read_ref(model="m1", selector="latest") == ref
    # No temp files are left beside it.
    assert [p.name for p in (tmp_path / "refs" / "m1").iterdir()] == ["latest.json"]


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "file.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and len(list(target.parent.iterdir())) == 1


def test_snapshot_link_points_at_the_blob(tmp_path):
    cache = Cache(tmp_path)
    partial = cache.open_partial(DIGEST)
    partial.write(DATA)
    partial.commit(size_bytes=len(DATA))
    link = cache.link_snapshot(model="m1", version=2, filename="model.onnx", sha256=DIGEST)
    assert link == tmp_path / "snapshots" / "m1" / "2" / "model.onnx"
    assert link.read_bytes() == DATA and link.resolve() == cache.blob_path(DIGEST).resolve()
    assert cache.link_snapshot(model="m1", version=2, filename="model.onnx", sha256=DIGEST) == link


def _hold_lock(root: str, digest: str, started, seconds: float) -> None:
    with Cache(root).lock(digest):
        started.set()
        time.sleep(seconds)


def test_the_lock_excludes_other_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), DIGEST, started, 1.0))
    holder.start()
    try:
        assert started.wait(30)
        t0 = time.monotonic()
        with Cache(tmp_path).lock(DIGEST):
            waited = time.monotonic() - t0
        assert waited > 0.5  # we only got the lock once the other process let go
    finally:
        holder.join(30)


def test_progress_bar_is_silent_without_a_tty():
    stream = io.StringIO()
    bar = ProgressBar("pull", stream=stream)
    bar(10, 100)
    bar.close()
    assert stream.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = ProgressBar("pull", stream=tty)
    bar(100, 100)
    bar.close()
    assert "100%" in tty.getvalue() and tty.getvalue().endswith("\n")
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(10) == "10 B"
