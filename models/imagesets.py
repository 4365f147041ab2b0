"""Labelled image sets as plain arrays, and the operations every data set shares.

An `ImageSet` holds images (n, channels, height, width) as float32 in
[0, 1] with int64 labels; each built-in data set (`xfer.models.datasets`)
loads into one. Class selection and resizing live here so that digits,
MNIST and Fashion-MNIST behave the same. numpy only, except `resize_images`,
which uses torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

#: The pools every built-in data set is split into. `source` is the operator's, `target` the clients';
#: the two never overlap. `all` is both.
SPLITS = ("source", "target", "all")


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Images (n, c, h, w) float32 in [0, 1], int64 labels 0..k-1 and their names.

    `index` is each image's position in its whole data set (the `all` split, before any class
    selection), so that a split can be checked for overlap with another.
    """

    x: np.ndarray
    y: np.ndarray
    label_names: tuple[str, ...]
    index: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise ValueError(f"images must be (n, channels, height, width), got shape {self.x.shape}")
        if not len(self.x) == len(self.y) == len(self.index):
            raise ValueError(f"{len(self.x)} images, {len(self.y)} labels and {len(self.index)} indices")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, rows: np.ndarray) -> ImageSet:
        """The images at positions `rows` (same label names)."""
        rows = np.asarray(rows, dtype=np.int64)
        return ImageSet(self.x[rows], self.y[rows], self.label_names, self.index[rows])


def parse_classes(text: str) -> list[int]:
    """'0-4' or '5,7,9' (or both, '0-2,7') -> list of ints; raises ValueError naming the bad part."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"cannot read classes {part!r}; write a range or a list, e.g. 0-4 or 1,3,5") from None
    return out


def select_classes(data: ImageSet, classes: Sequence[int]) -> ImageSet:
    """Keeps `classes` (in that order) and relabels them 0..k-1."""
    classes = list(classes)
    k = len(data.label_names)
    if len(set(classes)) != len(classes) or not all(0 <= c < k for c in classes):
        raise ValueError(f"classes must be distinct class numbers 0-{k - 1}, got {classes}")
    if len(classes) < 2:
        raise ValueError("at least two classes are needed")
    keep = np.isin(data.y, classes)
    remap = np.full(k, -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    return ImageSet(data.x[keep], remap[data.y[keep]], tuple(data.label_names[c] for c in classes), data.index[keep])


def halves(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of range(n) into a source half and a target half (sorted)."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:])


def resize_images(x: np.ndarray, *, size: tuple[int, int], channels: int | None = None) -> np.ndarray:
    """Bilinear resize of (n, c, h, w) images to `size` (antialiased when shrinking), and greyscale <-> RGB.

    One channel becomes three by repetition; three become one by ITU-R 601 luma. Values stay in the
    input's range (the result is clipped to it, since bilinear upsampling cannot overshoot but
    antialiasing can by a rounding error).
    """
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    out = x
    if (h, w) != tuple(size):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        shrinking = size[0] < h or size[1] < w
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrinking)
        out = np.clip(t.numpy(), float(x.min()) if x.size else 0.0, float(x.max()) if x.size else 1.0)
    if channels is not None and channels != c:
        if c == 1:
            out = np.repeat(out, channels, axis=1)
        elif c == 3 and channels == 1:
            out = np.tensordot(np.asarray([0.299, 0.587, 0.114], dtype=np.float32), out, axes=([0], [1]))[:, None]
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    return np.ascontiguousarray(out, dtype=np.float32)
