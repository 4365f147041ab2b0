"""Torch-free data for `xfer fit-head`: `.npz` files and the built-in digits targets.

``file.npz``
    arrays ``x`` (n, ...) and ``y`` (n,) integer labels 0..k-1, optional
    ``label_names`` (k,) strings. Read with ``allow_pickle=False``.
``digits[:shift=S,classes=5-9,per_class=N]``
    the digits target pool, as `xfer finetune` reads it (needs scikit-learn,
    which ships the images).

Examples are checked (finite numbers, one integer label each, a shape that
fits the card), reshaped to the card's ``input_shape`` and normalised with
its ``input_mean``/``input_std``. Splits are the ones `xfer finetune` makes
from the same spec and seed — stratified 60/20/20 train/val/test, digits
stratified on the original digit, ``per_class`` keeping N training
examples per class — so the two commands train and test on the same
examples and their reports compare. A separate ``--test`` file replaces
the split: all of DATA is then split 80/20 into train and val.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from xfer.client.domain import pow2_at_least
from xfer.client.onnxhead.errors import HeadDataError
from xfer.models.card import ModelCard

FRACTIONS = (0.6, 0.2, 0.2)
DIGITS_OPTIONS = ("shift", "classes", "per_class")


@dataclasses.dataclass(frozen=True, eq=False)
class Examples:
    """Model-ready examples: float32 x of the card's input shape, int64 y."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        """Number of examples."""
        return int(len(self.y))

    def take(self, rows: np.ndarray) -> "Examples":
        """The examples at `rows`."""
        return Examples(self.x[rows], self.y[rows])


@dataclasses.dataclass(frozen=True, eq=False)
class HeadData:
    """Train/val/test splits, label names, the ledger key, and what the report may round to.

    `min_eval_examples` is the smallest test split any data set with a training
    split in the same power-of-two bucket could have produced: metric fractions
    rounded to 1/2^⌊log2 of it⌋ stay consistent with every size in the bucket.
    """

    train: Examples
    val: Examples | None
    test: Examples
    label_names: tuple[str, ...]
    dataset_id: str
    min_eval_examples: int


@dataclasses.dataclass(frozen=True, eq=False)
class RawArrays:
    x: np.ndarray
    y: np.ndarray
    label_names: tuple[str, ...]
    dataset_id: str
    per_class: int | None = None
    strata: np.ndarray | None = None
    explicit_names: bool = True


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def integer_labels(y: Any, *, where: str) -> np.ndarray:
    """Labels as int64, or HeadDataError for anything but whole numbers."""
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise HeadDataError(f"{where}: labels must be integers, found non-integer or NaN values")
        return y.astype(np.int64)
    raise HeadDataError(f"{where}: labels must be integers, got dtype {y.dtype}")


def read_npz(path: str | Path) -> RawArrays:
    """x, y (and label_names) from an .npz file; the ledger key digests its content, as `xfer finetune` does."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise HeadDataError(f"{path}: the .npz needs arrays 'x' and 'y'; missing {missing} "
                                    f"(has {archive.files})")
            x, y = archive["x"], archive["y"]
            names = tuple(str(n) for n in archive["label_names"]) if "label_names" in archive.files else None
    except HeadDataError:
        raise
    except (OSError, ValueError) as exc:
        raise HeadDataError(f"{path}: not a readable .npz file ({exc})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise HeadDataError(f"{path}: x must be numeric, got dtype {x.dtype}")
    y = integer_labels(y, where=str(path))
    if y.ndim != 1 or len(y) != len(x):
        raise HeadDataError(f"{path}: y must hold one label per example of x: x has {len(x)} examples, "
                            f"y has shape {list(y.shape)}")
    if len(y) and y.min() < 0:
        raise HeadDataError(f"{path}: labels must be 0..k-1, found {int(y.min())}")
    explicit = names is not None
    if names is None:
        names = tuple(str(i) for i in range(int(y.max()) + 1 if len(y) else 0))
    elif len(y) and y.max() >= len(names):
        raise HeadDataError(f"{path}: label {int(y.max())} but only {len(names)} label_names")
    return RawArrays(x, y, names, "npz-" + _digest(x, y), explicit_names=explicit)


def read_digits(options: dict[str, str], *, seed: int) -> RawArrays:
    """The digits target pool under the spec's options (scikit-learn ships the images)."""
    try:
        from xfer.models import digits as digits_mod

        pool = digits_mod.load_pool("target")
    except ImportError:
        raise HeadDataError("the built-in digits data needs scikit-learn (pip install scikit-learn), "
                            "or give your data as an .npz file") from None
    unknown = sorted(set(options) - set(DIGITS_OPTIONS))
    if unknown:
        raise HeadDataError(f"unknown digits option(s) {unknown}; valid: {', '.join(DIGITS_OPTIONS)}")
    shift = options.get("shift", "none")
    shifts = (*digits_mod.SHIFTS, "unseen-classes")
    if shift not in shifts:
        raise HeadDataError(f"unknown digits shift {shift!r}; valid: {', '.join(shifts)}")
    classes = options.get("classes", "5-9" if shift == "unseen-classes" else None)
    data, original = pool, pool.y
    if classes is not None:
        try:
            chosen = digits_mod.parse_classes(classes)
            data = digits_mod.select_classes(pool, chosen)
        except ValueError as exc:
            raise HeadDataError(f"digits classes={classes!r}: {exc}") from None
        original = pool.y[np.isin(pool.y, chosen)]
    if shift != "unseen-classes":
        data = digits_mod.apply_shift(data, shift, seed=seed)
    per_class = None
    if "per_class" in options:
        per_class = int(options["per_class"]) if options["per_class"].isdigit() else 0
        if per_class < 1:
            raise HeadDataError(f"digits per_class must be a positive integer, got {options['per_class']!r}")
    # Every digits target derives from the same private pool, so they share one ledger id (as in finetune).
    return RawArrays(data.x, data.y, data.label_names, "digits-target", per_class, strata=original)


def _parse(spec: str) -> tuple[str, str, dict[str, str]]:
    spec = spec.strip()
    if spec == "digits" or spec.startswith("digits:"):
        options: dict[str, str] = {}
        key = None
        for part in filter(None, (p.strip() for p in spec.partition(":")[2].split(","))):
            if "=" in part:
                key, value = (s.strip() for s in part.split("=", 1))
                options[key] = value
            elif key is not None:  # classes=1,3,5: a part without '=' continues the previous value
                options[key] += "," + part
            else:
                raise HeadDataError(f"data spec {spec!r}: option {part!r} must be key=value")
        return "digits", "", options
    if spec.lower().endswith(".npz"):
        if not Path(spec).is_file():
            raise HeadDataError(f"data file {spec!r} does not exist")
        return "npz", spec, {}
    raise HeadDataError(f"data spec {spec!r}: give an .npz file (arrays x, y) or digits[:options]; "
                        f"CSV files and image folders need `xfer finetune` (torch)")


def prepare_examples(x: Any, *, card: ModelCard, where: str = "x") -> np.ndarray:
    """Checks, reshapes to (n, *card.input_shape) and normalises raw examples as the card says."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number):
        raise HeadDataError(f"{where}: examples must be numbers, got dtype {x.dtype}")
    shape = tuple(card.input_shape)
    size = math.prod(shape)
    per_example = math.prod(x.shape[1:]) if x.ndim > 1 else 1
    if len(x) == 0:
        raise HeadDataError(f"{where}: no examples")
    if per_example != size:
        raise HeadDataError(f"{where}: examples have shape {list(x.shape[1:])} ({per_example} values) but the "
                            f"model takes {list(shape)} ({size} values); resize or select features to match")
    x = x.reshape(len(x), *shape).astype(np.float32)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise HeadDataError(f"{where}: NaN or infinite values in {int(bad.sum())} example(s) "
                            f"(first rows: {np.nonzero(bad)[0][:5].tolist()}); impute or drop them")
    if card.input_mean:
        view = (1, len(card.input_mean)) + (1,) * (x.ndim - 2)
        mean = np.asarray(card.input_mean, dtype=np.float32).reshape(view)
        std = np.asarray(card.input_std, dtype=np.float32).reshape(view)
        x = ((x - mean) / std).astype(np.float32)
    return x


def split_indices(strata: np.ndarray, *, seed: int, fractions: tuple[float, ...] = FRACTIONS
                  ) -> tuple[np.ndarray, ...]:
    """Stratified, seeded index split (the same as `xfer finetune`'s); classes under 3 go to train."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for label in np.unique(strata):
        rows = rng.permutation(np.nonzero(strata == label)[0])
        n = len(rows)
        held = [round(n * f) if n >= 3 else 0 for f in fractions[1:]][::-1]  # test first, then val
        start = 0
        for i, size in zip(range(len(fractions) - 1, 0, -1), held):
            parts[i].append(rows[start:start + size])
            start += size
        parts[0].append(rows[start:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)


def few_shot(train: np.ndarray, y: np.ndarray, *, per_class: int, seed: int) -> np.ndarray:
    """Keeps `per_class` random training rows of each class (as `xfer finetune`)."""
    rng = np.random.default_rng(seed + 1)
    keep = [rng.permutation(train[y[train] == label])[:per_class] for label in np.unique(y[train])]
    return np.sort(np.concatenate(keep))


def min_eval_for_split(*, train_pow2: int, num_classes: int) -> int:
    """Smallest test split of a 60/20/20 split whose training split is in the bucket (B/2, B].

    Per class, t_c >= (r_c − 1)/3 − 1/2 for training part r_c (rounding of 0.2·n_c),
    so m = Σ t_c >= (n_train − K)/3 − K/2 with n_train >= B/2 + 1.
    """
    return max(1, math.ceil((train_pow2 // 2 + 1 - num_classes) / 3 - num_classes / 2))


def own_bucket_floor(examples: int) -> int:
    """The smallest size in an independent eval set's own power-of-two bucket."""
    return pow2_at_least(examples) // 2 + 1 if examples > 1 else 1


def load_data(spec: str, *, card: ModelCard, seed: int = 0, test: str | None = None) -> HeadData:
    """Reads, checks, normalises and splits DATA (and an optional separate test .npz)."""
    kind, path, options = _parse(spec)
    raw = read_digits(options, seed=seed) if kind == "digits" else read_npz(path)
    x = prepare_examples(raw.x, card=card, where=spec)
    names = raw.label_names
    strata = raw.strata if raw.strata is not None else raw.y
    if test is None:
        train, val, test_rows = split_indices(strata, seed=seed)
    else:
        train, val = split_indices(strata, seed=seed, fractions=(0.8, 0.2))
        test_rows = None
    if raw.per_class is not None:
        train = few_shot(train, raw.y, per_class=raw.per_class, seed=seed)
    examples = Examples(x, raw.y)
    if test_rows is not None:
        if len(test_rows) == 0:
            raise HeadDataError(f"too few examples ({len(raw.y)}) to hold out a test split; give at least "
                                f"3 per class, or a separate test file")
        test_set = examples.take(test_rows)
    else:
        extra = read_npz(test)
        if (extra.explicit_names and extra.label_names != names) or len(extra.label_names) > len(names):
            raise HeadDataError(f"{test}: its labels {list(extra.label_names)} are not the training data's "
                                f"{list(names)}; both files must use the same label numbering")
        test_set = Examples(prepare_examples(extra.x, card=card, where=test), extra.y)
    if len(np.unique(raw.y[train])) < 2:
        raise HeadDataError("the training split has fewer than two classes; add examples")
    independent = test is not None or raw.per_class is not None
    floor = (own_bucket_floor(len(test_set)) if independent
             else min_eval_for_split(train_pow2=pow2_at_least(len(train)), num_classes=len(names)))
    return HeadData(examples.take(train), examples.take(val) if len(val) else None, test_set, names,
                    raw.dataset_id, min(floor, len(test_set)))
