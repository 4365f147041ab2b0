"""Target data sets for fine-tuning, from a one-string *data spec*.

Data specs
----------
``digits[:key=value,...]``
    scikit-learn digits from ``models.digits.load_pool("target")`` (disjoint
    from the source pool). Options (comma separated):

    - ``shift=`` one of ``none, gaussian-noise, blur, invert, rotate,
      permute-labels, unseen-classes`` (``unseen-classes`` = ``classes=5-9``);
    - ``classes=`` a range or list of digits (``5-9``, ``1,3,5``), relabelled 0..k-1;
    - ``per_class=N`` keep only N training examples per class (few-shot;
      validation and test splits are unaffected).

    e.g. ``digits:shift=blur``, ``digits:classes=5-9``,
    ``digits:shift=rotate,per_class=5``.
``path/to/file.npz``
    arrays ``x`` (n, ...) and ``y`` (n,) integer labels, optional
    ``label_names`` (k,) strings.
``path/to/file.csv[:label=column]``
    a header row; the label column (default ``label``; any strings) and
    numeric feature columns.
``path/to/folder/``
    one sub-folder per class holding images, read with Pillow, converted to
    greyscale or RGB and resized to the card's input shape, scaled to [0, 1].

Every source is checked (finite features, integer labels in range, at least
two classes, a shape that fits the card), reshaped to the card's
``input_shape``, normalised with its ``input_mean``/``input_std`` and split
deterministically by seed into stratified train/val/test (60/20/20). Any
problem raises `DataError` saying what is wrong and how to fix it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from xfer.client.finetune.errors import DataError
from xfer.models import digits as digits_mod
from xfer.models.card import ModelCard

log = logging.getLogger(__name__)

FRACTIONS = (0.6, 0.2, 0.2)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
DIGITS_OPTIONS = ("shift", "classes", "per_class")
DIGITS_SHIFTS = (*digits_mod.SHIFTS, "unseen-classes")


@dataclasses.dataclass(frozen=True)
class TensorData:
    """Model-ready examples: normalised float32 `x` of the card's input shape, int64 `y`.

    `index` holds each example's position in the original source (file rows
    or digits pool), so splits can be checked for leakage.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.y.shape[0])

    def subset(self, rows: torch.Tensor | np.ndarray | Sequence[int]) -> TensorData:
        """The examples at `rows` (positions in this data set)."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return TensorData(self.x[rows], self.y[rows], self.index[rows])


@dataclasses.dataclass(frozen=True)
class TargetData:
    """A target task: train/val/test splits plus what the ledger and head need."""

    train: TensorData
    val: TensorData
    test: TensorData
    label_names: tuple[str, ...]
    spec: str
    #: Stable id of the underlying private data, the privacy ledger's key.
    dataset_id: str

    @property
    def num_classes(self) -> int:
        """Number of target classes."""
        return len(self.label_names)


@dataclasses.dataclass(frozen=True)
class RawData:
    """Examples as read from disk, before checks and normalisation."""

    x: np.ndarray
    y: np.ndarray
    label_names: tuple[str, ...]
    dataset_id: str
    per_class: int | None = None
    #: What to stratify the split on (default: the labels). Digits use the original digit, so every
    #: shift of the target pool — permuted labels included — splits into the same examples.
    strata: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class DataSpec:
    kind: str  # "digits" | "npz" | "csv" | "folder"
    path: str
    options: dict[str, str]


def parse_spec(spec: str) -> DataSpec:
    """Splits a data spec into kind, path and `key=value` options."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError("empty data spec; give e.g. 'digits:shift=blur', 'data.npz', 'data.csv:label=y' or a folder")
    spec = spec.strip()
    head, options = spec, {}
    if spec == "digits" or spec.startswith("digits:"):
        head, _, rest = spec.partition(":")
        options = _parse_options(rest, spec)
        return DataSpec("digits", "", options)
    # Options follow the last ':' only if it looks like key=value, so paths with ':' still work.
    base, sep, rest = spec.rpartition(":")
    if sep and "=" in rest and "/" not in rest:
        head, options = base, _parse_options(rest, spec)
    path = Path(head)
    if path.is_dir():
        return DataSpec("folder", head, options)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".csv"):
        if not path.is_file():
            raise DataError(f"data file {head!r} does not exist")
        return DataSpec(suffix[1:], head, options)
    if not path.exists():
        raise DataError(f"data spec {spec!r}: no such file or folder, and not a 'digits' spec")
    raise DataError(f"data file {head!r}: unsupported format; use .npz, .csv, an image folder, or digits:...")


def _parse_options(text: str, spec: str) -> dict[str, str]:
    options: dict[str, str] = {}
    # Values such as classes=1,3,5 contain commas: a part without '=' continues the previous value.
    key = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            options[key] = value
        elif key is not None:
            options[key] += "," + part
        else:
            raise DataError(f"data spec {spec!r}: option {part!r} must be key=value")
    return options


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# -- readers ----------------------------------------------------------------------------------


def _read_digits(spec: DataSpec, *, seed: int) -> RawData:
    unknown = sorted(set(spec.options) - set(DIGITS_OPTIONS))
    if unknown:
        raise DataError(f"unknown digits option(s) {unknown}; valid: {', '.join(DIGITS_OPTIONS)}")
    shift = spec.options.get("shift", "none")
    if shift not in DIGITS_SHIFTS:
        raise DataError(f"unknown digits shift {shift!r}; valid: {', '.join(DIGITS_SHIFTS)}")
    data = digits_mod.load_pool("target")
    original = data.y
    classes = spec.options.get("classes")
    if shift == "unseen-classes" and classes is None:
        classes = "5-9"
    if classes is not None:
        try:
            chosen = digits_mod.parse_classes(classes)
            data = digits_mod.select_classes(data, chosen)
        except ValueError as exc:
            raise DataError(f"digits classes={classes!r}: {exc}") from None
        original = original[np.isin(original, chosen)]
    if shift != "unseen-classes":
        data = digits_mod.apply_shift(data, shift, seed=seed)
    per_class = None
    if "per_class" in spec.options:
        try:
            per_class = int(spec.options["per_class"])
        except ValueError:
            per_class = 0
        if per_class < 1:
            raise DataError(f"digits per_class must be a positive integer, got {spec.options['per_class']!r}")
    # Every digits target derives from the same private pool, so they share one ledger id.
    return RawData(data.x, data.y, data.label_names, "digits-target", per_class, strata=original)


def _read_npz(spec: DataSpec) -> RawData:
    if spec.options:
        raise DataError(f"{spec.path}: .npz data takes no options, got {sorted(spec.options)}")
    try:
        with np.load(spec.path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"{spec.path}: the .npz needs arrays 'x' and 'y'; missing {missing} "
                                f"(has {archive.files})")
            x, y = archive["x"], archive["y"]
            names = tuple(str(n) for n in archive["label_names"]) if "label_names" in archive.files else None
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{spec.path}: not a readable .npz file ({exc})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{spec.path}: x must be numeric, got dtype {x.dtype}")
    y = _integer_labels(y, where=spec.path)
    if y.ndim != 1:
        raise DataError(f"{spec.path}: y must be one label per example (shape (n,)), got shape {y.shape}")
    if len(y) != len(x):
        raise DataError(f"{spec.path}: x has {len(x)} examples but y has {len(y)} labels")
    if len(y) and y.min() < 0:
        raise DataError(f"{spec.path}: labels out of range: found {int(y.min())}; labels must be 0..k-1")
    if names is None:
        names = tuple(str(i) for i in range(int(y.max()) + 1 if len(y) else 0))
    elif len(y) and y.max() >= len(names):
        raise DataError(f"{spec.path}: labels out of range: found {int(y.max())} but only "
                        f"{len(names)} label_names")
    return RawData(x.astype(np.float32, copy=False), y, names, "npz-" + _digest(x, y))


def _integer_labels(y: np.ndarray, *, where: str) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}: labels must be integers, found non-integer or NaN values")
        return y.astype(np.int64)
    raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")


def _label_order(values: list[str]) -> list[str]:
    unique = sorted(set(values))
    try:  # numeric labels sort numerically so '10' follows '9'
        return sorted(unique, key=float)
    except ValueError:
        return unique


def _read_csv(spec: DataSpec) -> RawData:
    unknown = sorted(set(spec.options) - {"label"})
    if unknown:
        raise DataError(f"{spec.path}: unknown CSV option(s) {unknown}; valid: label")
    label = spec.options.get("label", "label")
    with open(spec.path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{spec.path}: empty CSV file")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if label not in header:
        raise DataError(f"{spec.path}: no label column {label!r}; columns are {header}. "
                        f"Name it with {spec.path}:label=<column>")
    col = header.index(label)
    labels, features = [], []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{spec.path}:{line}: {len(row)} fields, the header has {len(header)}")
        labels.append(row[col].strip())
        try:
            features.append([float(v) if v.strip() else math.nan for i, v in enumerate(row) if i != col])
        except ValueError as exc:
            raise DataError(f"{spec.path}:{line}: non-numeric feature ({exc})") from None
    names = _label_order(labels)
    lookup = {name: i for i, name in enumerate(names)}
    x = np.asarray(features, dtype=np.float32).reshape(len(body), len(header) - 1)
    y = np.asarray([lookup[v] for v in labels], dtype=np.int64)
    return RawData(x, y, tuple(names), "csv-" + _digest(x, y))


def _read_folder(spec: DataSpec, *, input_shape: tuple[int, ...]) -> RawData:
    from PIL import Image, UnidentifiedImageError

    if spec.options:
        raise DataError(f"{spec.path}: image folders take no options, got {sorted(spec.options)}")
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise DataError(f"{spec.path}: image folders need a model that takes images (1 or 3 channels, H, W); "
                        f"this one takes {list(input_shape)}")
    channels, height, width = input_shape
    classes = sorted(p for p in Path(spec.path).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{spec.path}: no class sub-folders; put each class's images in its own sub-folder")
    images, labels = [], []
    for label, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                    array = np.asarray(img, dtype=np.float32) / 255.0
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"{file}: not a readable image ({exc})") from None
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{spec.path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    return RawData(x, y, tuple(p.name for p in classes), "folder-" + _digest(x, y))


def load_raw(spec: str, *, card: ModelCard, seed: int = 0) -> RawData:
    """Reads the data a spec names, without checks or normalisation."""
    parsed = parse_spec(spec)
    if parsed.kind == "digits":
        return _read_digits(parsed, seed=seed)
    if parsed.kind == "npz":
        return _read_npz(parsed)
    if parsed.kind == "csv":
        return _read_csv(parsed)
    return _read_folder(parsed, input_shape=tuple(card.input_shape))


# -- checks, normalisation, splits -------------------------------------------------------------


def check_and_shape(raw: RawData, *, card: ModelCard) -> np.ndarray:
    """Validates `raw` against the card and returns x reshaped to (n, *input_shape)."""
    x, y = raw.x, raw.y
    shape = tuple(card.input_shape)
    if len(x) == 0:
        raise DataError("the data set is empty")
    if len(y) != len(x):
        raise DataError(f"{len(x)} examples but {len(y)} labels")
    size = int(np.prod(shape))
    per_example = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    if per_example != size:
        raise DataError(f"wrong shape: examples have shape {list(x.shape[1:])} ({per_example} values) but the "
                        f"model takes {list(shape)} ({size} values); resize or select features to match")
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad.reshape(len(x), -1))[0])
        raise DataError(f"NaN or infinite features in {len(rows)} example(s) (first rows: {rows[:5].tolist()}); "
                        f"impute or drop them")
    if y.min() < 0 or y.max() >= len(raw.label_names):
        raise DataError(f"labels out of range: they must be 0..{len(raw.label_names) - 1}, "
                        f"found {int(y.min())}..{int(y.max())}")
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"only one class ({raw.label_names[present[0]]!r}) in the data; "
                        f"classification needs at least two")
    return x.reshape(len(x), *shape).astype(np.float32, copy=False)


def normalise(x: np.ndarray, *, card: ModelCard) -> np.ndarray:
    """(x - input_mean) / input_std, per channel (axis 1) or one value for all."""
    if not card.input_mean:
        return x
    mean = np.asarray(card.input_mean, dtype=np.float32)
    std = np.asarray(card.input_std, dtype=np.float32)
    shape = (1, len(mean)) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def align_labels(y: np.ndarray, names: tuple[str, ...], *, card: ModelCard) -> tuple[np.ndarray, tuple[str, ...]]:
    """Reorders labels to the card's order when the sets agree, so the pretrained head fits."""
    if card.label_names and set(names) == set(card.label_names) and names != tuple(card.label_names):
        position = {name: i for i, name in enumerate(card.label_names)}
        remap = np.asarray([position[name] for name in names], dtype=np.int64)
        return remap[y], tuple(card.label_names)
    return y, names


@dataclasses.dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(y: np.ndarray, *, seed: int, fractions: tuple[float, float, float] = FRACTIONS) -> Splits:
    """Stratified, seeded train/val/test index split; every class lands in train first."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(y):
        rows = rng.permutation(np.nonzero(y == label)[0])
        n = len(rows)
        n_test = round(n * fractions[2]) if n >= 3 else 0
        n_val = round(n * fractions[1]) if n >= 3 else 0
        parts[2].append(rows[:n_test])
        parts[1].append(rows[n_test:n_test + n_val])
        parts[0].append(rows[n_test + n_val:])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return Splits(train, val, test)


def few_shot(train: np.ndarray, y: np.ndarray, *, per_class: int, seed: int) -> np.ndarray:
    """Keeps `per_class` random training rows of each class."""
    rng = np.random.default_rng(seed + 1)
    keep = [rng.permutation(train[y[train] == label])[:per_class] for label in np.unique(y[train])]
    return np.sort(np.concatenate(keep))


def load_target(spec: str, *, card: ModelCard, seed: int = 0) -> TargetData:
    """Reads, checks, normalises and splits the data set `spec` names (see module docstring)."""
    raw = load_raw(spec, card=card, seed=seed)
    x = normalise(check_and_shape(raw, card=card), card=card)
    y, names = align_labels(raw.y, raw.label_names, card=card)
    splits = split_indices(raw.strata if raw.strata is not None else y, seed=seed)
    train = splits.train
    if raw.per_class is not None:
        train = few_shot(train, y, per_class=raw.per_class, seed=seed)
    if len(np.unique(y[train])) < 2:
        raise DataError("the training split has fewer than two classes; add examples")
    if len(splits.test) == 0 or len(splits.val) == 0:
        raise DataError(f"too few examples ({len(y)}) to split into train/val/test; give at least 3 per class")
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def take(rows: np.ndarray) -> TensorData:
        index = torch.from_numpy(rows)
        return TensorData(xt[index].contiguous(), yt[index].contiguous(), index)

    log.info("loaded %s: %d train / %d val / %d test, %d classes", spec, len(train), len(splits.val),
             len(splits.test), len(names))
    return TargetData(take(train), take(splits.val), take(splits.test), names, spec, raw.dataset_id)


def from_arrays(x: np.ndarray, y: np.ndarray, *, card: ModelCard | None = None,
                label_names: Sequence[str] | None = None) -> TensorData:
    """Wraps in-memory arrays as TensorData (checked, reshaped and normalised if a card is given)."""
    y = _integer_labels(np.asarray(y), where="y")
    names = tuple(label_names) if label_names is not None else tuple(str(i) for i in range(int(y.max()) + 1))
    raw = RawData(np.asarray(x, dtype=np.float32), y, names, "arrays")
    if card is not None:
        xs = normalise(check_and_shape(raw, card=card), card=card)
    else:
        xs = raw.x
    return TensorData(torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(y),
                      torch.arange(len(y)))
