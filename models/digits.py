"""scikit-learn's handwritten digits as source and target tasks.

The 1,797 8x8 images ship with scikit-learn, so everything here runs
offline. A fixed permutation splits them into a *source* pool (the
operator's data) and a *target* pool (a client's data) that never overlap,
mirroring the product: the two sides never see each other's examples.
Shifts turn the target pool into the kinds of distribution shift the
transfer-learning literature distinguishes (input-, feature-, output-level).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

POOLS = ("source", "target")
_SPLIT_SEED = 20261127


@dataclasses.dataclass(frozen=True)
class Digits:
    """Images (n, 1, 8, 8) float32 in [0, 1] and int64 labels."""

    x: np.ndarray
    y: np.ndarray
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)


def load_pool(pool: str) -> Digits:
    """One of the two disjoint halves of the digits data set."""
    from sklearn.datasets import load_digits

    if pool not in POOLS:
        raise ValueError(f"unknown digits pool {pool!r}; valid: {', '.join(POOLS)}")
    data = load_digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(data.target))
    half = len(order) // 2
    index = order[:half] if pool == "source" else order[half:]
    x = (data.images[index] / 16.0).astype(np.float32)[:, None]
    return Digits(x=x, y=data.target[index].astype(np.int64), label_names=tuple(str(d) for d in range(10)))


def select_classes(data: Digits, classes: Sequence[int]) -> Digits:
    """Keeps `classes` (in that order) and relabels them 0..k-1."""
    classes = list(classes)
    if len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes):
        raise ValueError(f"classes must be distinct digits 0-9, got {classes}")
    if len(classes) < 2:
        raise ValueError("at least two classes are needed")
    keep = np.isin(data.y, classes)
    remap = np.full(10, -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    return Digits(x=data.x[keep], y=remap[data.y[keep]], label_names=tuple(str(c) for c in classes))


def parse_classes(text: str) -> list[int]:
    """'0-4' or '5,7,9' -> list of ints."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-", 1))
            out.extend(range(lo, hi + 1))
        elif part:
            out.append(int(part))
    return out


def _gaussian_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + rng.normal(0.0, 0.3, x.shape), 0.0, 1.0)


def _blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    out = sum(padded[:, :, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9.0
    return out


def _invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - x


def _rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.rot90(x, k=1, axes=(2, 3))


#: Input-level shifts: the same labels, corrupted pixels.
INPUT_SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gaussian-noise": _gaussian_noise,
    "blur": _blur,
    "invert": _invert,
    "rotate": _rotate,
}
#: Every named shift; `unseen-classes` is chosen by class selection, not here.
SHIFTS = ("none", *INPUT_SHIFTS, "permute-labels")


def apply_shift(data: Digits, shift: str, *, seed: int = 0) -> Digits:
    """Returns `data` under the named shift (deterministic for a seed)."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; valid: {', '.join(SHIFTS)}")
    rng = np.random.default_rng(seed)
    if shift == "none":
        return data
    if shift == "permute-labels":
        # A fixed derangement-free cyclic shift: every class moves, output-level shift.
        k = len(data.label_names)
        y = (data.y + 1) % k
        return Digits(x=data.x, y=y, label_names=data.label_names)
    x = INPUT_SHIFTS[shift](data.x, rng).astype(np.float32)
    return Digits(x=np.ascontiguousarray(x), y=data.y, label_names=data.label_names)
