"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence): 70,000 28x28 greyscale product images.

Read from the IDX files of the Debian package `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist/`), which installs offline from the
distribution's archive; nothing is downloaded at run time. The official
training file (60,000 images) is the *source* pool, the operator's data;
the official test file (10,000) is the *target* pool that clients draw
their own data from, so the two never overlap.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from xfer.models.errors import DatasetUnavailableError
from xfer.models.idx import IdxFormatError, read_idx
from xfer.models.imagesets import SPLITS, ImageSet

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
LABEL_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "source": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "target": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SIZES = {"source": 60_000, "target": 10_000}
INSTALL_HINT = (
    f"Fashion-MNIST is not installed: install the Debian package {DEBIAN_PACKAGE} "
    f"(as root: apt-get install {DEBIAN_PACKAGE}; `make data` does it), which puts it in {DEFAULT_DIR}"
)


def available(root: str | os.PathLike = DEFAULT_DIR) -> bool:
    """Whether all four IDX files are present under `root`."""
    return all((Path(root) / name).is_file() for pair in FILES.values() for name in pair)


@functools.lru_cache(maxsize=4)
def _read(root: str, pool: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, int64 labels) of one official file pair, checked; cached as uint8 (55 MB for all)."""
    images_name, labels_name = FILES[pool]
    if not available(root):
        raise DatasetUnavailableError(
            INSTALL_HINT if Path(root) == DEFAULT_DIR else f"Fashion-MNIST IDX files not found in {root}"
        )
    try:
        images = read_idx(Path(root) / images_name)
        labels = read_idx(Path(root) / labels_name)
    except IdxFormatError as exc:
        raise DatasetUnavailableError(f"Fashion-MNIST is damaged: {exc}; reinstall {DEBIAN_PACKAGE}") from None
    if images.shape != (SIZES[pool], 28, 28) or labels.shape != (SIZES[pool],) or images.dtype != np.uint8:
        raise DatasetUnavailableError(
            f"Fashion-MNIST {images_name}: unexpected shape {images.shape} / {labels.shape}; reinstall {DEBIAN_PACKAGE}"
        )
    if labels.min() < 0 or labels.max() > 9:
        raise DatasetUnavailableError(f"Fashion-MNIST {labels_name}: labels outside 0-9; reinstall {DEBIAN_PACKAGE}")
    return images, labels.astype(np.int64)


def load_fashion(pool: str, *, root: str | os.PathLike = DEFAULT_DIR) -> ImageSet:
    """A pool of Fashion-MNIST as images (n, 1, 28, 28) in [0, 1]: `source` (train file), `target` (test file), `all`.

    Raises DatasetUnavailableError with one line saying how to install it when the files are missing.
    """
    if pool not in SPLITS:
        raise ValueError(f"unknown Fashion-MNIST pool {pool!r}; valid: {', '.join(SPLITS)}")
    parts = ("source", "target") if pool == "all" else (pool,)
    xs, ys, idx = [], [], []
    for part in parts:
        images, labels = _read(str(root), part)
        xs.append(images)
        ys.append(labels)
        offset = 0 if part == "source" else SIZES["source"]
        idx.append(np.arange(offset, offset + len(labels)))
    x = np.concatenate(xs)[:, None].astype(np.float32) / 255.0
    return ImageSet(x, np.concatenate(ys), LABEL_NAMES, np.concatenate(idx))
