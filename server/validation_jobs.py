"""What runs inside the validation sandbox: the card job and the artifacts job.

The sandbox worker (server/sandbox_worker.py) imports this module once
(torch, onnx, onnxruntime and the architectures with it), and every job runs
in a fresh child forked from the worker, under the limits `apply_limits`
sets first: address space (memory), CPU seconds, file size, no core dumps.
The child answers with one JSON document on a pipe: JSON, never pickle, so a
child subverted by a hostile artifact can at worst send a wrong verdict, not
code.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import traceback
from typing import Any

# Imported once by the worker, before it forks: a job starts in milliseconds.
import numpy  # noqa: F401
import onnx  # noqa: F401
import onnxruntime
import safetensors.torch  # noqa: F401
import torch
import torch.onnx  # noqa: F401

from xfer.models import list_models
from xfer.models.card import ModelCard, validate_card
from xfer.models.errors import ModelError
from xfer.server import validate
from xfer.server.errors import RequestError

logger = logging.getLogger(__name__)

list_models()  # imports every built-in architecture now, not in each child
onnxruntime.set_default_logger_severity(4)


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_limits(limits: dict[str, int]) -> None:
    """Limits this (child) process: address space above today's, CPU seconds, file size, no core dumps."""
    # The address-space limit is relative to what the preloaded libraries already map.
    memory = _vm_size_bytes() + limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    torch.set_num_threads(1)
    os.nice(5)


# -- jobs --------------------------------------------------------------------------------
def card_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Checks the card against its architecture on the meta device (nothing allocated) and sizes the model.

    Returns the canonical architecture config, the parameter count and the
    bytes the weights must hold, so the server can refuse an oversized model
    before any artifact byte arrives.
    """
    from xfer.models.weights import model_from_card, weights_size

    card = ModelCard.from_dict(payload["card"])
    validate_card(card)
    with torch.device("meta"):
        model = model_from_card(card)
    parameters, weight_bytes = weights_size(model)
    return {
        "config": model.config_dict(),
        "parameters": parameters,
        "weight_bytes": weight_bytes,
        "tensors": len(model.state_dict()),
    }


def artifacts_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Checks the weights (converting a torch state dict first) and the ONNX artifact, or derives one.

    Paths in the payload are temp files the server chose in its blob
    directory, never names from the wire.
    """
    from xfer.models.export import export_onnx

    card = ModelCard.from_dict(payload["card"])
    weights_path = payload["weights_path"]
    if payload.get("convert_to"):
        validate.convert_torch_state_dict(weights_path, payload["convert_to"])
        weights_path = payload["convert_to"]
    header = validate.parse_safetensors_header(weights_path)
    model = validate.check_tensors_match(header, card)
    validate.load_weights(model, weights_path)
    probes = validate.probe_plan()
    onnx_path = payload.get("onnx_path")
    derived = onnx_path is None
    if derived:
        onnx_path = payload["derive_to"]
        try:
            export_onnx(model, onnx_path)
        except ModelError as exc:
            if validate.is_memory_error(exc):
                raise MemoryError(str(exc)[:300]) from None
            raise validate.InvalidArgument(
                f"could not derive ONNX from the weights: {exc}; upload an ONNX artifact",
                reason=validate.Reason.INVALID_ARTIFACT,
            ) from None
    report = validate.check_onnx(onnx_path, model=model, probes=probes)
    return {
        "derived_onnx": derived,
        "max_abs_diff": report.max_abs_diff,
        "probes": report.probes,
        "opset": report.opset,
    }


def noop_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Starts nothing; used to warm the fork server up."""
    return {}


def memory_hog_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Allocates `bytes` (tests use it to prove the memory limit holds)."""
    block = bytearray(int(payload["bytes"]))
    return {"allocated": len(block)}


def spin_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Burns CPU until killed (tests use it to prove the CPU and wall limits hold)."""
    while True:
        pass


JOBS = {"card": card_job, "artifacts": artifacts_job, "noop": noop_job, "memory_hog": memory_hog_job, "spin": spin_job}


# -- child side ------------------------------------------------------------------------------
def _error(kind: str, exc: BaseException | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, **extra}
    if isinstance(exc, RequestError):
        body.update(message=str(exc), reason=str(exc.reason), field=exc.field, code=exc.code.name)
    elif exc is not None and "message" not in body:
        body["message"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    return {"error": body}


def run_job(job: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Runs one job and returns its answer: {"result": ...} or {"error": {...}} (never raises)."""
    try:
        return {"result": JOBS[job](payload)}
    except MemoryError as exc:
        return _error("memory", exc)
    except RecursionError as exc:
        return _error("invalid", exc, message="the artifact nests too deeply to be checked")
    except RequestError as exc:
        return _error("request", exc)
    except ModelError as exc:
        return _error("model", exc, message=str(exc))
    except Exception as exc:
        if validate.is_memory_error(exc):
            return _error("memory", exc)
        return _error("crash", exc, traceback=traceback.format_exc()[-2000:])


def child_main(answer_fd: int, *, job: str, payload: dict[str, Any], limits: dict[str, int]) -> None:
    """Runs in the forked child: set limits, run the job, write one JSON answer to `answer_fd`."""
    try:
        apply_limits(limits)
        answer = run_job(job, payload)
    except MemoryError:
        answer = _error("memory")
    try:
        data = json.dumps(answer).encode()
    except MemoryError:
        data = b'{"error": {"kind": "memory"}}'
    with os.fdopen(answer_fd, "wb") as f:
        f.write(data)
