"""Learning-rate schedules as pure functions of training progress.

Each maps (step, total_steps) to a multiplier on a parameter group's base
learning rate. They are applied by the trainer per step by writing the
group's `lr`, which keeps per-group scales (discriminative, Auto-RGN)
independent of the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from xfer.client.finetune.errors import FinetuneError

Schedule = Callable[[int, int], float]


def constant(step: int, total: int) -> float:
    """No decay."""
    return 1.0


def cosine(step: int, total: int) -> float:
    """Cosine decay from 1 to 0 over `total` steps (Loshchilov & Hutter)."""
    if total <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def slanted_triangular(step: int, total: int, *, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """ULMFiT's STLR: short linear warm-up to 1 over `cut_frac`, then linear decay to 1/ratio."""
    if total <= 1:
        return 1.0
    cut = max(1, math.floor(total * cut_frac))
    if step < cut:
        p = step / cut
    else:
        p = 1.0 - (step - cut) / max(1, total - cut)
    return (1.0 + p * (ratio - 1.0)) / ratio


SCHEDULES: dict[str, Schedule] = {
    "cosine": cosine,
    "slanted-triangular": slanted_triangular,
    "constant": constant,
}


def get_schedule(name: str) -> Schedule:
    """The schedule called `name`; raises listing the valid ones if unknown."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise FinetuneError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}") from None
