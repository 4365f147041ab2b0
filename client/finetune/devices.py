"""Device selection and the per-device training knobs.

On CUDA the trainer uses bf16 autocast where the GPU supports it (fp16
otherwise would need a GradScaler; we keep the simpler, safer bf16-or-fp32),
pinned host memory and non-blocking copies. CPU runs are seeded and
bit-for-bit repeatable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random

import numpy as np
import torch

from xfer.client.finetune.config import DEVICE_CHOICES
from xfer.client.finetune.errors import DeviceError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DeviceSetup:
    """Where and how to train."""

    device: torch.device
    kind: str  # "cpu" | "cuda" | "mps"
    amp_dtype: torch.dtype | None  # autocast dtype, None for full precision
    pin_memory: bool
    non_blocking: bool


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto", *, mixed_precision: bool = True) -> DeviceSetup:
    """Turns `auto|cpu|cuda|mps` into a DeviceSetup; raises DeviceError if unavailable."""
    if name not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {name!r}; valid: {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
        amp = torch.bfloat16 if mixed_precision and torch.cuda.is_bf16_supported() else None
        return DeviceSetup(torch.device("cuda"), "cuda", amp, pin_memory=True, non_blocking=True)
    if name == "mps":
        if not _mps_available():
            raise DeviceError("--device mps was requested but MPS is not available; use --device cpu or auto")
        return DeviceSetup(torch.device("mps"), "mps", None, pin_memory=False, non_blocking=False)
    return DeviceSetup(torch.device("cpu"), "cpu", None, pin_memory=False, non_blocking=False)


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (all devices) for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(tensor: torch.Tensor, setup: DeviceSetup) -> torch.Tensor:
    """Copies a host tensor to the device, through pinned memory on CUDA."""
    if setup.kind == "cpu":
        return tensor
    if setup.pin_memory and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(setup.device, non_blocking=setup.non_blocking)


def autocast(setup: DeviceSetup, *, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled and supported; a no-op elsewhere."""
    if enabled and setup.amp_dtype is not None:
        return torch.autocast(device_type=setup.kind, dtype=setup.amp_dtype)
    return contextlib.nullcontext()
