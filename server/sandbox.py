"""The validation sandbox: upload checks run in separate processes with memory, CPU and wall-time limits.

An upload is hostile until proven otherwise, and proving it means running
it: torch builds the module the card describes, onnxruntime runs the graph.
A 326 KB ONNX file can ask for 1 GiB (ConstantOfShape), a card can describe
a model of billions of parameters, a graph can run for an hour. So every
check that touches torch or onnxruntime runs in a child process:

* forked from one worker process (server/sandbox_worker.py) that imported
  torch/onnx/onnxruntime once, so a job starts in milliseconds and the
  serving process never imports them;
* limited by RLIMIT_AS (memory above what the libraries already map),
  RLIMIT_CPU, RLIMIT_FSIZE and a wall-clock deadline after which the worker
  kills it;
* answering with one JSON document (never pickle).

A job that breaks a limit becomes RESOURCE_EXHAUSTED (reason
VALIDATION_LIMIT); the serving process's memory does not move.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from xfer.server.errors import InvalidArgument, Reason, ResourceExhausted

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Seconds the worker may take to import torch & co. and say it is ready.
WORKER_START_TIMEOUT = 300.0
_CODES = {"INVALID_ARGUMENT": InvalidArgument, "RESOURCE_EXHAUSTED": ResourceExhausted}
_MEMORY_SIGNALS = (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one sandboxed job may use."""

    #: Address space on top of what the worker's libraries map when the child starts.
    memory_bytes: int
    cpu_seconds: int
    wall_seconds: float
    #: Largest file the job may write (a converted or derived artifact).
    file_bytes: int

    def as_dict(self) -> dict[str, int]:
        """The limits the child applies to itself."""
        return {
            "memory_bytes": int(self.memory_bytes),
            "cpu_seconds": max(1, int(self.cpu_seconds)),
            "file_bytes": int(self.file_bytes),
        }


@dataclasses.dataclass(frozen=True)
class JobResult:
    """A job's answer and how long it took."""

    value: dict[str, Any]
    seconds: float


class SandboxUnavailable(RuntimeError):
    """The worker process could not be started or died."""


class _Worker:
    """One `python -m xfer.server.sandbox_worker` process and the thread reading its answers."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xfer.server.sandbox_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self.pending: dict[str, concurrent.futures.Future] = {}
        self.lock = threading.Lock()
        self.ready: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self.dead = False
        threading.Thread(target=self._read, name="xfer-sandbox-reader", daemon=True).start()

    def _read(self) -> None:
        stdout: IO[bytes] = self.process.stdout  # type: ignore[assignment]
        try:
            for line in stdout:
                message = json.loads(line)
                if message.get("ready"):
                    self.ready.set_result(True)
                    continue
                with self.lock:
                    future = self.pending.pop(message["id"], None)
                if future is not None:
                    future.set_result(message)
        except (OSError, ValueError):
            logger.exception("the validation sandbox worker sent something unreadable")
        finally:
            with self.lock:
                self.dead = True
                pending, self.pending = self.pending, {}
            error = SandboxUnavailable("the validation sandbox worker exited")
            if not self.ready.done():
                self.ready.set_exception(error)
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)

    def submit(self, request: dict[str, Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            if self.dead:
                raise SandboxUnavailable("the validation sandbox worker exited")
            self.pending[request["id"]] = future
            try:
                self.process.stdin.write(json.dumps(request).encode() + b"\n")  # type: ignore[union-attr]
            except OSError as exc:
                self.pending.pop(request["id"], None)
                raise SandboxUnavailable(f"cannot reach the validation sandbox worker: {exc}") from None
        return future

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Sandbox:
    """Runs validation jobs in limited child processes, at most `max_concurrent` at a time."""

    def __init__(self, *, max_concurrent: int = 2) -> None:
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._ids = itertools.count(1)

    def _current_worker(self) -> _Worker:
        with self._lock:
            if self._worker is None or self._worker.dead or self._worker.process.poll() is not None:
                if self._worker is not None:
                    logger.warning("the validation sandbox worker exited; starting a new one")
                    self._worker.stop()
                self._worker = _Worker()
            worker = self._worker
        try:
            worker.ready.result(WORKER_START_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise SandboxUnavailable("the validation sandbox worker did not start in time") from None
        return worker

    def warm_up(self) -> None:
        """Starts the worker (imports torch & co. once) so the first upload does not wait for it."""
        try:
            self._current_worker()
        except Exception:
            logger.exception("could not start the validation sandbox")

    def close(self) -> None:
        """Stops the worker (its running jobs are killed)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def run(
        self,
        job: str,
        payload: dict[str, Any],
        *,
        limits: Limits,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> JobResult:
        """Runs `job` (a name in validation_jobs.JOBS) on `payload` in a child process; blocks until it ends.

        Returns the job's JSON result. Raises the job's own InvalidArgument /
        ResourceExhausted, ResourceExhausted (VALIDATION_LIMIT) when it broke a
        limit, or RuntimeError when it failed for a reason of its own.
        `observe(job, outcome, seconds)` hears how it went (outcome: ok,
        rejected, limit or error), waiting for a free slot included.
        """
        started = time.monotonic()
        outcome = "error"
        try:
            result = self._run(job, payload, limits)
            outcome = "ok"
            return result
        except ResourceExhausted:
            outcome = "limit"
            raise
        except InvalidArgument:
            outcome = "rejected"
            raise
        finally:
            if observe is not None:
                observe(job, outcome, time.monotonic() - started)

    def _run(self, job: str, payload: dict[str, Any], limits: Limits) -> JobResult:
        with self._slots:
            request = {
                "id": str(next(self._ids)),
                "job": job,
                "payload": payload,
                "limits": limits.as_dict(),
                "wall_seconds": limits.wall_seconds,
            }
            started = time.monotonic()
            try:
                future = self._current_worker().submit(request)
            except SandboxUnavailable:
                # The worker died between two jobs (its exit not yet noticed): one fresh start.
                future = self._current_worker().submit(request)
            try:
                # The worker enforces the deadline; the margin only guards against a hung worker.
                message = future.result(limits.wall_seconds + 60)
            except concurrent.futures.TimeoutError:
                logger.error("the validation sandbox worker did not answer job %s; restarting it", job)
                if self._worker is not None:
                    self._worker.stop()
                raise SandboxUnavailable("the validation sandbox did not answer") from None
        seconds = time.monotonic() - started
        answer = message.get("answer")
        if answer is None:
            raise self._death(
                job, message.get("exit"), limits=limits, timed_out=bool(message.get("timed_out")), seconds=seconds
            )
        if "error" in answer:
            raise self._failure(job, answer["error"], limits=limits)
        return JobResult(value=answer["result"], seconds=seconds)

    @staticmethod
    def _death(job: str, exit_code: int | None, *, limits: Limits, timed_out: bool, seconds: float) -> Exception:
        if timed_out:
            return ResourceExhausted(
                f"validation took longer than {limits.wall_seconds:g} s and was stopped; "
                "upload a model that runs faster, or ask the operator to raise "
                "--validation-timeout",
                reason=Reason.VALIDATION_LIMIT,
            )
        if exit_code in (-signal.SIGXCPU, -signal.SIGKILL):
            return ResourceExhausted(
                f"validation used more than {limits.cpu_seconds} s of CPU and was stopped; "
                "upload a model that runs faster, or ask the operator to raise "
                "--validation-cpu-seconds",
                reason=Reason.VALIDATION_LIMIT,
            )
        if exit_code is not None and exit_code < 0 and -exit_code in _MEMORY_SIGNALS:
            # Under RLIMIT_AS, a C++ allocation failure (std::bad_alloc) usually ends in abort().
            name = signal.Signals(-exit_code).name
            return ResourceExhausted(
                f"validation crashed ({name}), most likely by exceeding its memory limit of "
                f"{limits.memory_bytes // MIB} MiB; upload a smaller model, or ask the operator "
                "to raise --validation-memory-mb",
                reason=Reason.VALIDATION_LIMIT,
            )
        logger.error("validation job %s died with exit code %s after %.1fs", job, exit_code, seconds)
        return RuntimeError(f"validation job {job} died with exit code {exit_code}")

    @staticmethod
    def _failure(job: str, error: dict[str, Any], *, limits: Limits) -> Exception:
        kind = error.get("kind")
        message = str(error.get("message", ""))
        if kind == "memory":
            return ResourceExhausted(
                f"validation needed more than its memory limit of {limits.memory_bytes // MIB} "
                "MiB and was stopped (a graph or model that allocates far more than its "
                "artifacts hold); upload a smaller model, or ask the operator to raise "
                "--validation-memory-mb",
                reason=Reason.VALIDATION_LIMIT,
            )
        if kind == "request":
            cls = _CODES.get(str(error.get("code")), InvalidArgument)
            return cls(message, reason=Reason(error.get("reason", Reason.INVALID_ARTIFACT)), field=error.get("field"))
        if kind == "model":
            if job == "card":
                return InvalidArgument(
                    f"invalid model card: {message}", reason=Reason.INVALID_CARD, field="header.card"
                )
            return InvalidArgument(f"the weights do not fit the card: {message}", reason=Reason.INVALID_ARTIFACT)
        if kind == "invalid":
            return InvalidArgument(f"invalid artifact: {message}", reason=Reason.INVALID_ARTIFACT)
        logger.error("validation job %s failed unexpectedly: %s\n%s", job, message, error.get("traceback", ""))
        return RuntimeError(f"validation job {job} failed: {message}")
