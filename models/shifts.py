"""Distribution shifts that turn one image set into a shifted target, deterministic per seed.

The transfer literature sorts shifts by where they act (Lee et al., ICLR
2023): *input-level* corruptions of the pixels (noise, blur, contrast,
inversion, rotation, impulse noise), *feature-level* changes such as classes
the source never saw (chosen by class selection, not here), and
*output-level* changes of the labels (a permutation). Corruptions come in
five severities, in the spirit of CIFAR-10-C (Hendrycks & Dietterich, ICLR
2019); severity 3 is the default. They work on any image size: blur is
specified for a 28-pixel image and scales with the image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from xfer.models.imagesets import ImageSet

SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITY = 3

#: Per-severity parameters (index severity - 1).
NOISE_SIGMA = (0.1, 0.2, 0.3, 0.4, 0.5)
BLUR_SIGMA_28PX = (0.5, 0.8, 1.1, 1.6, 2.2)
CONTRAST_FACTOR = (0.6, 0.45, 0.3, 0.2, 0.1)
IMPULSE_FRACTION = (0.03, 0.06, 0.1, 0.15, 0.25)


def _gaussian_noise(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    return np.clip(x + rng.normal(0.0, NOISE_SIGMA[severity - 1], x.shape), 0.0, 1.0)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def _blur(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    sigma = BLUR_SIGMA_28PX[severity - 1] * x.shape[-1] / 28.0
    kernel = _gaussian_kernel(max(sigma, 0.3))
    r = len(kernel) // 2
    out = x
    for axis in (2, 3):  # separable: rows, then columns; reflected borders keep the mean intensity
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > r else "edge")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + length), axis=axis) for i, w in enumerate(kernel))
    return out


def _contrast(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * CONTRAST_FACTOR[severity - 1] + mean


def _impulse_noise(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    out = x.copy()
    hit = rng.random(x.shape) < IMPULSE_FRACTION[severity - 1]
    out[hit] = rng.integers(0, 2, int(hit.sum())).astype(x.dtype)
    return out


def _invert(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    return 1.0 - x


def _rotate(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    return np.rot90(x, k=1, axes=(2, 3))


#: Input-level shifts: the same labels, corrupted pixels. `invert` and `rotate` (90°) have no severity.
INPUT_SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator, int], np.ndarray]] = {
    "gaussian-noise": _gaussian_noise,
    "blur": _blur,
    "contrast": _contrast,
    "impulse-noise": _impulse_noise,
    "invert": _invert,
    "rotate": _rotate,
}
#: Output-level shifts: the same images, different labels.
OUTPUT_SHIFTS = ("permute-labels",)
#: Every named shift; `unseen-classes` (feature level) is a class selection, made by the data spec.
SHIFTS = ("none", *INPUT_SHIFTS, *OUTPUT_SHIFTS)


@dataclasses.dataclass(frozen=True)
class ShiftSpec:
    """A shift by name and severity (1-5; ignored by shifts that have none)."""

    name: str = "none"
    severity: int = DEFAULT_SEVERITY

    def __post_init__(self) -> None:
        if self.name not in SHIFTS:
            raise ValueError(f"unknown shift {self.name!r}; valid: {', '.join(SHIFTS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of 1-5, got {self.severity!r}")


def apply_shift(data: ImageSet, shift: str, *, seed: int = 0, severity: int = DEFAULT_SEVERITY) -> ImageSet:
    """Returns `data` under the named shift (deterministic for a seed and severity)."""
    spec = ShiftSpec(shift, severity)
    if spec.name == "none":
        return data
    if spec.name == "permute-labels":
        # A cyclic shift of the labels: every class moves, the images stay (an output-level shift).
        y = (data.y + 1) % len(data.label_names)
        return dataclasses.replace(data, y=y)
    rng = np.random.default_rng(seed)
    x = INPUT_SHIFTS[spec.name](data.x, rng, spec.severity).astype(np.float32)
    return dataclasses.replace(data, x=np.ascontiguousarray(x))
