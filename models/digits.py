"""scikit-learn's handwritten digits as source and target tasks, at 8x8 and resized to 28x28.

The 1,797 8x8 images ship with scikit-learn, so everything here runs
offline. A fixed permutation splits them into a *source* pool (the
operator's data) and a *target* pool (a client's data) that never overlap,
mirroring the product: the two sides never see each other's examples.
`load_digits28` is the same images resized to 28x28 (bilinear, the whole
frame), the 28x28 counterpart of MNIST for a real digits domain pair.
Shifts (`xfer.models.shifts`) turn a pool into a shifted target.
"""

from __future__ import annotations

import functools

import numpy as np

from xfer.models.imagesets import SPLITS, ImageSet, halves, parse_classes, resize_images, select_classes
from xfer.models.shifts import SHIFTS, apply_shift

__all__ = ["POOLS", "SHIFTS", "Digits", "apply_shift", "load_digits28", "load_pool", "parse_classes", "select_classes"]

POOLS = SPLITS
LABEL_NAMES = tuple(str(d) for d in range(10))
_SPLIT_SEED = 20261127
#: Kept for callers that name the type; every data set is an ImageSet.
Digits = ImageSet


@functools.lru_cache(maxsize=1)
def _all_digits() -> ImageSet:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return ImageSet(x, data.target.astype(np.int64), LABEL_NAMES, np.arange(len(x)))


def _pool(data: ImageSet, pool: str) -> ImageSet:
    if pool not in POOLS:
        raise ValueError(f"unknown digits pool {pool!r}; valid: {', '.join(POOLS)}")
    if pool == "all":
        return data
    source, target = halves(len(data), seed=_SPLIT_SEED)
    return data.take(source if pool == "source" else target)


def load_pool(pool: str) -> ImageSet:
    """One of the two disjoint halves of the digits data set (8x8, values in [0, 1]), or `all`."""
    return _pool(_all_digits(), pool)


@functools.lru_cache(maxsize=1)
def _all_digits28() -> ImageSet:
    data = _all_digits()
    return ImageSet(resize_images(data.x, size=(28, 28)), data.y, data.label_names, data.index)


def load_digits28(pool: str) -> ImageSet:
    """The same pools as `load_pool`, resized to 28x28."""
    return _pool(_all_digits28(), pool)
