"""The validation sandbox's worker process: imports torch & co. once, then forks one child per job.

Started by `xfer.server.sandbox.Sandbox` as `python -m xfer.server.sandbox_worker`.
Protocol, one JSON document per line:

* stdin, from the server: {"id", "job", "payload", "limits", "wall_seconds"}
* stdout, to the server: {"ready": true} once, then per job
  {"id", "answer": <the child's JSON or null>, "exit": <exit code or -signal>, "timed_out": bool}

The worker is single-threaded (forking a multi-threaded process can deadlock
the child) and waits on every child's answer pipe with select. A child that
passes its wall-clock deadline is killed. End of stdin (the server went away)
kills every child and ends the worker. A child's own stdout is redirected to
stderr so nothing a library prints can corrupt the protocol.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import sys
import time
from typing import Any, BinaryIO

from xfer.server import validation_jobs

MAX_ANSWER_BYTES = 1 << 20


@dataclasses.dataclass
class _Running:
    job_id: str
    pid: int
    fd: int
    deadline: float
    data: bytearray = dataclasses.field(default_factory=bytearray)
    timed_out: bool = False


def _fork_job(request: dict[str, Any]) -> _Running:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_fd)
            os.dup2(2, 1)  # library prints go to stderr, never into the protocol
            os.close(0)
            validation_jobs.child_main(
                write_fd, job=request["job"], payload=request["payload"], limits=request["limits"]
            )
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    return _Running(
        job_id=str(request["id"]), pid=pid, fd=read_fd, deadline=time.monotonic() + float(request["wall_seconds"])
    )


def _send(out: BinaryIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def _finish(out: BinaryIO, job: _Running) -> None:
    os.close(job.fd)
    _, status = os.waitpid(job.pid, 0)
    exit_code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    try:
        answer = json.loads(job.data) if job.data else None
    except ValueError:
        answer = None
    _send(out, {"id": job.job_id, "answer": answer, "exit": exit_code, "timed_out": job.timed_out})


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The worker's loop: read requests, fork jobs, relay answers, enforce deadlines."""
    running: dict[int, _Running] = {}
    in_fd = stdin.fileno()
    pending = b""
    _send(stdout, {"ready": True})
    while True:
        now = time.monotonic()
        live = [job.deadline - now for job in running.values() if not job.timed_out]
        timeout = max(0.0, min(live)) if live else None
        readable, _, _ = select.select([in_fd, *running], [], [], timeout)
        for fd in readable:
            if fd == in_fd:
                chunk = os.read(in_fd, 1 << 16)
                if not chunk:
                    for job in running.values():
                        os.kill(job.pid, signal.SIGKILL)
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    job = _fork_job(json.loads(line))
                    running[job.fd] = job
                continue
            job = running[fd]
            chunk = os.read(fd, 1 << 16)
            if chunk and len(job.data) < MAX_ANSWER_BYTES:
                job.data += chunk
                continue
            if chunk:  # an answer larger than any real one: treat as garbage
                os.kill(job.pid, signal.SIGKILL)
                job.data.clear()
            del running[fd]
            _finish(stdout, job)
        now = time.monotonic()
        for job in running.values():
            if not job.timed_out and now >= job.deadline:
                job.timed_out = True
                os.kill(job.pid, signal.SIGKILL)


def main() -> int:
    """Entry point of `python -m xfer.server.sandbox_worker`."""
    # Ctrl-C in a terminal reaches the whole process group; the server decides when the worker ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
