"""server/chunk_cache.py: single-flight reads, the byte bound, failures and cancellations; then in a real server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import grpc
import pytest
from server_testkit import Stubs, store_artifact

from xfer.server.chunk_cache import ChunkCache
from xfer.v1 import transfer_service_pb2 as ts


class Reads:
    """A fake disk: counts reads per key and can be told to hold or fail them."""

    def __init__(self) -> None:
        self.count: dict[tuple, int] = {}
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None

    def reader(self, key: tuple):
        def start():
            self.count[key] = self.count.get(key, 0) + 1
            return self._read(key)

        return start

    async def _read(self, key: tuple) -> bytes:
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return f"{key}".encode()


def test_concurrent_askers_share_one_read() -> None:
    async def scenario():
        cache, reads = ChunkCache(1000), Reads()
        reads.release.clear()
        key = ("a" * 64, 0, 10)
        askers = [asyncio.ensure_future(cache.get_or_read(key, reads.reader(key))) for _ in range(5)]
        await asyncio.sleep(0)
        reads.release.set()
        results = await asyncio.gather(*askers)
        again = await cache.get_or_read(key, reads.reader(key))
        return reads.count[key], set(results), again

    count, results, again = asyncio.run(scenario())
    assert count == 1 and results == {again}


def test_kept_bytes_stay_within_the_bound_oldest_out_first() -> None:
    async def scenario():
        cache, reads = ChunkCache(25), Reads()
        keys = [("b" * 64, offset, 10) for offset in (0, 10, 20)]
        for key in keys:
            await cache.get_or_read(key, reads.reader(key))
        assert cache.size_bytes == 20  # the third pushed the first out
        await cache.get_or_read(keys[2], reads.reader(keys[2]))
        await cache.get_or_read(keys[0], reads.reader(keys[0]))
        return reads.count, keys

    count, keys = asyncio.run(scenario())
    assert count[keys[2]] == 1 and count[keys[0]] == 2


def test_chunks_larger_than_the_cache_and_a_zero_cache_keep_nothing() -> None:
    async def scenario(max_bytes: int, length: int):
        cache, reads = ChunkCache(max_bytes), Reads()
        key = ("c" * 64, 0, length)
        for _ in range(2):
            await cache.get_or_read(key, reads.reader(key))
        return reads.count[key], cache.size_bytes

    assert asyncio.run(scenario(5, 10)) == (2, 0)
    assert asyncio.run(scenario(0, 10)) == (2, 0)


def test_a_failed_read_reaches_every_waiter_and_is_not_kept() -> None:
    async def scenario():
        cache, reads = ChunkCache(1000), Reads()
        reads.release.clear()
        reads.fail = OSError("disk gone")
        key = ("d" * 64, 0, 10)
        askers = [asyncio.ensure_future(cache.get_or_read(key, reads.reader(key))) for _ in range(3)]
        await asyncio.sleep(0)
        reads.release.set()
        outcomes = await asyncio.gather(*askers, return_exceptions=True)
        reads.fail = None
        retried = await cache.get_or_read(key, reads.reader(key))
        return outcomes, retried, reads.count[key], cache.size_bytes

    outcomes, retried, count, kept = asyncio.run(scenario())
    assert all(isinstance(o, OSError) for o in outcomes)
    assert retried and count == 2 and kept == 10


def test_a_waiter_that_gives_up_does_not_cancel_the_read_others_wait_for() -> None:
    async def scenario():
        cache, reads = ChunkCache(1000), Reads()
        reads.release.clear()
        key = ("e" * 64, 0, 10)
        first = asyncio.ensure_future(cache.get_or_read(key, reads.reader(key)))
        second = asyncio.ensure_future(cache.get_or_read(key, reads.reader(key)))
        await asyncio.sleep(0)
        first.cancel()  # the stream that started the read: its client left
        await asyncio.sleep(0)
        reads.release.set()
        return await second, first.cancelled(), reads.count[key]

    result, cancelled, count = asyncio.run(scenario())
    assert result and cancelled and count == 1


def test_a_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        ChunkCache(-1)


def test_a_second_pull_is_served_from_the_cache_byte_for_byte(start_server, source_model_dir: Path) -> None:
    running = start_server(chunk_size=64 * 1024, chunk_cache_bytes=8 * 1024 * 1024)
    data = os.urandom(3 * 1024 * 1024 + 12_345)
    sha = store_artifact(running, source_model_dir, "cached", [data], size=len(data))
    lookups = running.metrics.registry.get_sample_value

    def pull(**request) -> bytes:
        with grpc.insecure_channel(running.target) as channel:
            request = ts.ReadArtifactRequest(name="models/cached/versions/1", format=1, **request)
            return b"".join(r.data for r in Stubs.on(channel).transfer.ReadArtifact(request))

    assert hashlib.sha256(pull()).hexdigest() == sha
    misses = lookups("xfer_chunk_cache_lookups_total", {"result": "miss"})
    assert misses > 0 and not lookups("xfer_chunk_cache_lookups_total", {"result": "hit"})
    assert hashlib.sha256(pull()).hexdigest() == sha
    assert lookups("xfer_chunk_cache_lookups_total", {"result": "hit"}) == misses
    # A resumed read asks for other ranges: still the right bytes.
    assert pull(read_offset=777_777) == data[777_777:]
    assert pull(read_offset=100, read_limit=200_000) == data[100:200_100]


def test_pulls_cancelled_mid_stream_leave_no_descriptor_behind(start_server, source_model_dir: Path) -> None:
    # Each chunk read takes its own duplicate descriptor; an abandoned read-ahead must still close it.
    running = start_server(chunk_size=64 * 1024)
    store_artifact(running, source_model_dir, "churned", [os.urandom(2 * 1024 * 1024)], size=2 * 1024 * 1024)
    open_descriptors = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    with grpc.insecure_channel(running.target) as channel:
        stub = Stubs.on(channel).transfer
        list(stub.ReadArtifact(ts.ReadArtifactRequest(name="models/churned/versions/1", format=1)))
        before = open_descriptors()
        for i in range(200):
            call = stub.ReadArtifact(ts.ReadArtifactRequest(name="models/churned/versions/1", format=1))
            responses = iter(call)
            for _ in range(i % 4):
                next(responses)
            call.cancel()
        # A leak would be at least one descriptor per stream (200); gRPC, SQLite and the sandbox may
        # open a few of their own meanwhile.
        deadline = time.monotonic() + 30
        while open_descriptors() > before + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_descriptors() <= before + 20
