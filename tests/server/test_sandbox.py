"""The validation sandbox (server/sandbox.py): limits hold, the serving process stays small, a dead worker is replaced."""

from __future__ import annotations

import os
import resource

import pytest

from xfer.server.errors import ResourceExhausted
from xfer.server.sandbox import MIB, Limits, Sandbox

pytestmark = pytest.mark.timeout(180)


def _limits(**overrides) -> Limits:
    fields = dict(memory_bytes=256 * MIB, cpu_seconds=20, wall_seconds=60.0, file_bytes=MIB)
    return Limits(**{**fields, **overrides})


def test_memory_limit(sandbox: Sandbox) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert sandbox.run("memory_hog", {"bytes": 64 * MIB}, limits=_limits()).value == {"allocated": 64 * MIB}
    with pytest.raises(ResourceExhausted, match="memory limit of 256 MiB") as caught:
        sandbox.run("memory_hog", {"bytes": 1024 * MIB}, limits=_limits())
    assert caught.value.reason == "VALIDATION_LIMIT"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024  # KiB: none of it here


def test_cpu_limit(sandbox: Sandbox) -> None:
    with pytest.raises(ResourceExhausted, match="more than 1 s of CPU"):
        sandbox.run("spin", {}, limits=_limits(cpu_seconds=1))


def test_wall_clock_limit(sandbox: Sandbox) -> None:
    with pytest.raises(ResourceExhausted, match="longer than 1.5 s"):
        sandbox.run("spin", {}, limits=_limits(wall_seconds=1.5))


def test_outcomes_are_observed(sandbox: Sandbox) -> None:
    seen: list[tuple[str, str]] = []
    sandbox.run("noop", {}, limits=_limits(), observe=lambda job, outcome, seconds: seen.append((job, outcome)))
    with pytest.raises(ResourceExhausted):
        sandbox.run(
            "memory_hog",
            {"bytes": 1024 * MIB},
            limits=_limits(),
            observe=lambda job, outcome, seconds: seen.append((job, outcome)),
        )
    assert seen == [("noop", "ok"), ("memory_hog", "limit")]


def test_a_dead_worker_is_replaced() -> None:
    box = Sandbox(max_concurrent=1)
    try:
        box.warm_up()
        worker = box._worker
        assert worker is not None
        os.kill(worker.process.pid, 9)
        worker.process.wait()
        assert box.run("noop", {}, limits=_limits()).value == {}  # a fresh worker answers
        assert box._worker is not worker
    finally:
        box.close()
