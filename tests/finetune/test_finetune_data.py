"""Data specs: every format loads, labelled or not, in few-label mode or not; every malformed data set gets a
clear DataError."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from xfer.client.finetune.data import from_arrays, load_target, parse_spec, split_indices
from xfer.client.finetune.errors import DataError
from xfer.models import card_for_model, create_model
from xfer.models.digits import load_pool
from xfer.models.fashion import INSTALL_HINT as FASHION_HINT
from xfer.models.fashion import available as fashion_available

needs_fashion = pytest.mark.skipif(not fashion_available(), reason=FASHION_HINT)


@pytest.fixture(scope="module")
def mlp_card():
    m = create_model("mlp", in_features=4, hidden=(8,), num_classes=3)
    return card_for_model(m, label_names=("a", "b", "c"))


@pytest.fixture(scope="module")
def card28():
    """A 28x28 greyscale convnet card with ten digit labels."""
    m = create_model("convnet", image_size=28, width=8, depth=2)
    return card_for_model(m, label_names=tuple(str(i) for i in range(10)), input_mean=(0.2,), input_std=(0.3,))


@pytest.fixture(scope="module")
def rgb_card():
    m = create_model("convnet", in_channels=3, image_size=16, width=8, depth=2)
    return card_for_model(m, input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))


def write_npz(path, x, y=None, **extra):
    arrays = {"x": x, **extra}
    if y is not None:
        arrays["y"] = y
    np.savez(path, **arrays)
    return str(path)


def blobs(n=60, k=3, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32), y


def indices(data):
    return set(data.index.tolist())


# -- built-in data sets -----------------------------------------------------------------------


def test_digits_target_is_the_target_pool_split_deterministically(session_card):
    a = load_target("digits", card=session_card, seed=3)
    b = load_target("digits", card=session_card, seed=3)
    c = load_target("digits", card=session_card, seed=4)
    assert torch.equal(a.train.index, b.train.index) and not torch.equal(a.train.index, c.train.index)
    parts = [indices(a.train), indices(a.val), indices(a.test)]
    assert sum(map(len, parts)) == len(load_pool("target"))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert a.train.x.shape[1:] == (1, 8, 8) and a.dataset_id == "digits"
    assert a.per_class is None and a.unlabeled is None and a.labeled
    # Normalised with the card's mean/std.
    raw = load_pool("target").x[a.train.index.numpy()]
    assert torch.allclose(a.train.x, torch.from_numpy((raw - 0.3) / 0.4), atol=1e-6)


def test_digits_options(session_card):
    five = load_target("digits:classes=5-9", card=session_card)
    assert five.label_names == ("5", "6", "7", "8", "9")
    assert load_target("digits:shift=unseen-classes", card=session_card).label_names == five.label_names
    listed = load_target("digits:classes=1,3,5", card=session_card)
    assert listed.label_names == ("1", "3", "5")
    base = load_target("digits", card=session_card)
    inverted = load_target("digits:shift=invert", card=session_card)
    assert not torch.allclose(base.train.x, inverted.train.x)
    permuted = load_target("digits:shift=permute-labels", card=session_card)
    assert torch.equal((base.train.y + 1) % 10, permuted.train.y)
    assert torch.equal(base.test.index, permuted.test.index)  # every shift splits into the same examples


def test_split_option_picks_disjoint_pools(card28):
    source = load_target("digits28:split=source", card=card28)
    target = load_target("digits28", card=card28)
    both = load_target("digits28:split=all", card=card28)
    n = lambda t: len(t.train) + len(t.val) + len(t.test)  # noqa: E731
    assert (n(source), n(target), n(both)) == (898, 899, 1797)
    src = {x.numpy().tobytes() for x in source.train.x}
    assert sum(x.numpy().tobytes() in src for x in target.train.x) < 5  # digits has a few duplicate images


def test_images_are_resized_to_the_card(session_card, card28, rgb_card):
    small = load_target("digits28", card=session_card)  # 28x28 -> 8x8
    assert small.train.x.shape[1:] == (1, 8, 8)
    big = load_target("digits", card=card28)  # 8x8 -> 28x28
    assert big.train.x.shape[1:] == (1, 28, 28)
    rgb = load_target("digits", card=rgb_card)  # greyscale -> RGB, normalised per channel
    assert rgb.train.x.shape[1:] == (3, 16, 16)
    assert torch.equal(rgb.train.x[:, 0], rgb.train.x[:, 2])
    assert -1.0 - 1e-6 <= float(rgb.train.x.min()) and float(rgb.train.x.max()) <= 1.0 + 1e-6


def test_mnist5k(card28):
    target = load_target("mnist5k:classes=0-4,per_class=5", card=card28, seed=1)
    assert target.label_names == ("0", "1", "2", "3", "4") and target.dataset_id == "mnist5k"
    assert len(target.train) == 25 and target.test is not None and len(target.test) > 200


@pytest.mark.parametrize("shift", ["gaussian-noise", "blur", "contrast", "impulse-noise", "invert", "rotate"])
def test_shift_severity_changes_the_images(card28, shift):
    mild = load_target(f"mnist5k:shift={shift},severity=1", card=card28, seed=2)
    strong = load_target(f"mnist5k:shift={shift},severity=5", card=card28, seed=2)
    clean = load_target("mnist5k", card=card28, seed=2)
    assert torch.equal(mild.test.index, clean.test.index)
    assert not torch.allclose(mild.test.x, clean.test.x)
    if shift not in ("invert", "rotate"):  # no severity
        far = lambda t: float((t.test.x - clean.test.x).abs().mean())  # noqa: E731
        assert far(strong) > far(mild)


@needs_fashion
def test_fashion_mnist(card28):
    target = load_target("fashion-mnist:classes=5-9,per_class=5", card=card28, seed=0)
    assert target.label_names == ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert len(target.train) == 25 and target.val is None and target.dataset_id == "fashion-mnist"
    # The target pool is the official test file (10,000 images, 1,000 per class): 20% of 5,000 is the test split.
    assert len(target.test) == 1000 and len(target.unlabeled) == 3000 - 25


def test_fashion_mnist_missing_says_how_to_install(card28, monkeypatch):
    from xfer.models import fashion

    monkeypatch.setattr(fashion, "DEFAULT_DIR", fashion.Path("/nonexistent/fashion"))
    monkeypatch.setattr(fashion.load_fashion, "__kwdefaults__", {"root": fashion.DEFAULT_DIR})
    with pytest.raises(
        DataError, match="Fashion-MNIST is not installed: install the Debian package dataset-fashion-mnist"
    ):
        load_target("fashion-mnist", card=card28)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("digits:shift=sideways", "unknown digits shift 'sideways'; valid: none, gaussian-noise"),
        ("digits:colour=red", "unknown option"),
        ("digits:per_class=0", "per_class must be a positive integer"),
        ("digits:classes=3", "at least two classes"),
        ("digits:classes=a-b", "cannot read classes"),
        ("digits:severity=9", "severities are 1"),
        ("digits:split=train", "valid splits are source, target, all"),
        ("digits:unlabeled=yes", "'unlabeled' is a flag"),
        ("digits:per_class=5,unlabeled", "few-label mode already keeps the rest"),
        ("digits:per_class=500", "a class has only"),
        ("nope/missing.npz", "does not exist"),
        ("imagenet:classes=1-3", "not a built-in data set"),
        ("", "empty data spec"),
    ],
)
def test_bad_specs(session_card, spec, message):
    with pytest.raises(DataError, match=message):
        load_target(spec, card=session_card)


# -- few-label mode ---------------------------------------------------------------------------


def test_few_label_mode_has_no_validation_split(session_card):
    full = load_target("digits:shift=rotate", card=session_card, seed=5)
    few = load_target("digits:shift=rotate", card=session_card, seed=5, per_class=5)
    assert few.per_class == 5 and few.val is None
    assert sorted(np.bincount(few.train.y.numpy()).tolist()) == [5] * 10
    # The few labels come out of the training split; the test split is the same held-out split.
    assert indices(few.train) <= indices(full.train)
    assert torch.equal(few.test.index, full.test.index) and torch.equal(few.test.y, full.test.y)
    # The rest of the training split stays with the client, unlabelled.
    assert few.unlabeled.y is None and indices(few.unlabeled) == indices(full.train) - indices(few.train)
    # The keyword and the spec option are the same thing; disagreeing values are an error.
    spec = load_target("digits:shift=rotate,per_class=5", card=session_card, seed=5)
    assert torch.equal(spec.train.index, few.train.index)
    with pytest.raises(DataError, match="disagrees"):
        load_target("digits:per_class=5", card=session_card, per_class=6)


def test_few_label_mode_picks_the_same_examples_under_every_shift(session_card):
    plain = load_target("digits", card=session_card, seed=1, per_class=3)
    permuted = load_target("digits:shift=permute-labels", card=session_card, seed=1, per_class=3)
    assert torch.equal(plain.train.index, permuted.train.index)


def test_few_label_mode_on_files(tmp_path, mlp_card, session_card):
    x, y = blobs(n=90)
    npz = load_target(write_npz(tmp_path / "d.npz", x, y) + ":per_class=4", card=mlp_card)
    assert np.bincount(npz.train.y.numpy()).tolist() == [4, 4, 4] and npz.val is None
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["f1", "f2", "f3", "f4", "label"])
        for row, label in zip(x, y):
            w.writerow([*row, "abc"[label]])
    table = load_target(f"{path}:label=label,per_class=2", card=mlp_card)
    assert np.bincount(table.train.y.numpy()).tolist() == [2, 2, 2] and table.val is None
    _image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=10)
    folder = load_target(str(tmp_path / "imgs") + "/:per_class=3", card=session_card)
    assert len(folder.train) == 6 and folder.val is None and folder.test is not None


# -- unlabelled data --------------------------------------------------------------------------


def test_unlabeled_builtin_keeps_labels_only_on_the_test_split(session_card):
    labelled = load_target("digits:shift=blur", card=session_card, seed=2)
    hidden = load_target("digits:shift=blur,unlabeled", card=session_card, seed=2)
    assert hidden.train.y is None and hidden.val.y is None and not hidden.labeled
    assert torch.equal(hidden.train.x, labelled.train.x) and torch.equal(hidden.test.y, labelled.test.y)
    assert hidden.label_names == labelled.label_names
    with pytest.raises(DataError, match="training needs labelled data"):
        hidden.train.labels("training")


def test_npz_without_y_is_unlabelled(tmp_path, mlp_card):
    x, _ = blobs(n=50)
    target = load_target(write_npz(tmp_path / "u.npz", x), card=mlp_card, seed=0)
    assert target.train.y is None and target.val.y is None and target.test is None
    assert (len(target.train), len(target.val)) == (40, 10)
    assert not indices(target.train) & indices(target.val)
    assert target.label_names == mlp_card.label_names  # closed set: the source's labels
    assert target.dataset_id.startswith("npz-")


def test_labelled_npz_read_unlabelled(tmp_path, mlp_card):
    x, y = blobs()
    target = load_target(write_npz(tmp_path / "d.npz", x, y) + ":unlabeled", card=mlp_card)
    assert target.train.y is None and target.test.y is not None


def test_csv_without_labels(tmp_path, mlp_card):
    x, _ = blobs(n=20)
    path = tmp_path / "u.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "d"])
        w.writerows(x.tolist())
    with pytest.raises(DataError, match=r"no label column 'label'.*:unlabeled"):
        load_target(str(path), card=mlp_card)
    target = load_target(f"{path}:unlabeled", card=mlp_card)
    assert target.train.y is None and target.test is None and target.train.x.shape[1:] == (4,)


def test_image_folder_without_class_folders_is_unlabelled(tmp_path, session_card):
    folder = tmp_path / "loose"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    target = load_target(str(folder), card=session_card)
    assert target.train.y is None and len(target.train) + len(target.val) == 10 and target.test is None
    (folder / "cats").mkdir()
    with pytest.raises(DataError, match="both class sub-folders and 10 image"):
        load_target(str(folder), card=session_card)


def test_from_arrays_without_labels(session_card):
    data = from_arrays(np.full((4, 64), 0.7, dtype=np.float32), card=session_card)
    assert data.y is None and data.x.shape == (4, 1, 8, 8) and not data.has_labels
    assert data.subset([0, 2]).y is None and len(data.subset([0, 2])) == 2


# -- files ------------------------------------------------------------------------------------


def test_npz(tmp_path, mlp_card):
    x, y = blobs()
    target = load_target(write_npz(tmp_path / "d.npz", x, y, label_names=np.array(["a", "b", "c"])), card=mlp_card)
    assert target.label_names == ("a", "b", "c")
    assert len(target.train) + len(target.val) + len(target.test) == 60
    assert target.dataset_id.startswith("npz-")
    # Without names, labels are 0..k-1.
    assert load_target(write_npz(tmp_path / "e.npz", x, y), card=mlp_card).label_names == ("0", "1", "2")


def test_npz_images_are_resized(tmp_path, session_card):
    rng = np.random.default_rng(0)
    x = rng.random((30, 1, 16, 16)).astype(np.float32)
    target = load_target(write_npz(tmp_path / "i.npz", x, np.arange(30) % 3), card=session_card)
    assert target.train.x.shape[1:] == (1, 8, 8)


def test_csv_with_named_label_column(tmp_path, mlp_card):
    x, y = blobs()
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["f1", "target", "f2", "f3", "f4"])
        for row, label in zip(x, y):
            w.writerow([row[0], "abc"[label], *row[1:]])
    target = load_target(f"{path}:label=target", card=mlp_card)
    assert target.label_names == ("a", "b", "c")
    with pytest.raises(DataError, match="no label column 'label'"):
        load_target(str(path), card=mlp_card)


@pytest.mark.parametrize(
    ("delimiter", "encoding"), [(",", "utf-8-sig"), (";", "utf-8"), ("\t", "utf-8"), (";", "utf-8-sig")]
)
def test_csv_as_spreadsheets_write_it(tmp_path, mlp_card, delimiter, encoding):
    x, y = blobs()
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding=encoding) as f:  # utf-8-sig: a byte-order mark first
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["label", "f1", "f2", "f3", "f4"])
        for row, label in zip(x, y):
            w.writerow(["abc"[label], *row])
    target = load_target(str(path), card=mlp_card)
    assert target.label_names == ("a", "b", "c") and target.train.x.shape[1:] == (4,)


def test_csv_that_is_not_utf8_or_lacks_the_label_column(tmp_path, mlp_card):
    path = tmp_path / "latin.csv"
    path.write_bytes("label,a,b,c,d\ncafé,1,2,3,4\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text .*; save it as UTF-8"):
        load_target(str(path), card=mlp_card)
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"p{i}" for i in range(784)) + "\n" + ",".join("0" * 784) + "\n")
    with pytest.raises(DataError, match=r"columns are \['p0', .*'p7', '\.\.\. \(784 columns\)'\]\. Name it"):
        load_target(str(wide), card=mlp_card)


def _image_folder(root, *, classes, per_class, size=(16, 12)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder(tmp_path, session_card):
    _image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=6)
    target = load_target(str(tmp_path / "imgs") + "/", card=session_card)
    assert target.label_names == ("cat", "dog")
    assert target.train.x.shape[1:] == (1, 8, 8)
    assert target.dataset_id.startswith("folder-")


@pytest.mark.parametrize(
    "case, message",
    [
        ("shape", r"wrong shape: examples have shape \[5\]"),
        ("one_class", "only one class"),
        ("nan", "NaN or infinite features in 1 example"),
        ("negative", "labels out of range"),
        ("too_big", "labels out of range: found 7 but only 3 label_names"),
        ("float_labels", "labels must be integers"),
        # Ids, not class numbers: 10^12 label names would exhaust memory before any check.
        ("huge_label", "found label 2000000000000, but labels without names are class numbers"),
        ("length", "x has 60 examples but y has 59"),
        ("missing_x", "needs an array 'x'"),
        ("options", r"unknown option\(s\) \['label'\]"),
    ],
)
def test_malformed_npz(tmp_path, mlp_card, case, message):
    x, y = blobs()
    extra = {}
    if case == "shape":
        x = np.concatenate([x, x[:, :1]], axis=1)
    elif case == "one_class":
        y = np.zeros_like(y)
    elif case == "nan":
        x[7, 2] = np.nan
    elif case == "negative":
        y = y - 1
    elif case == "too_big":
        y = y.copy()
        y[0] = 7
        extra["label_names"] = np.array(["a", "b", "c"])
    elif case == "float_labels":
        y = y + 0.5
    elif case == "huge_label":
        y = y * 10**12
    elif case == "length":
        y = y[:-1]
    path = tmp_path / "bad.npz"
    if case == "missing_x":
        np.savez(path, y=y)
    else:
        write_npz(path, x, y, **extra)
    spec = f"{path}:label=y" if case == "options" else str(path)
    with pytest.raises(DataError, match=message):
        load_target(spec, card=mlp_card)


def test_8bit_images_in_an_npz_are_pixels_as_in_image_files(tmp_path, session_card, mlp_card):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30, 8, 8), dtype=np.uint8)
    y = np.arange(30) % 3
    as_bytes = load_target(write_npz(tmp_path / "u8.npz", pixels, y), card=session_card)
    as_fractions = load_target(write_npz(tmp_path / "f.npz", pixels.astype(np.float32) / 255, y), card=session_card)
    assert torch.allclose(as_bytes.train.x, as_fractions.train.x)
    # The privacy ledger keys a file by its stored values, as before pixels were scaled.
    assert as_bytes.dataset_id != as_fractions.dataset_id
    assert from_arrays(pixels, y, card=session_card).x.max() <= (1 - 0.3) / 0.4 + 1e-6
    # A model that does not take images reads 8-bit features as the numbers they are.
    features = rng.integers(0, 256, size=(60, 4), dtype=np.uint8)
    tabular = load_target(write_npz(tmp_path / "t.npz", features, np.arange(60) % 3), card=mlp_card)
    assert tabular.train.x.max() > 100


def test_image_arrays_may_be_channels_last_or_single_channel(tmp_path, rgb_card):
    rng = np.random.default_rng(0)
    nchw = rng.random((30, 3, 20, 20)).astype(np.float32)
    y = np.arange(30) % 3
    want = load_target(write_npz(tmp_path / "nchw.npz", nchw, y), card=rgb_card).train.x
    # Reshaped rather than transposed, channels-last arrays would reach the model scrambled.
    nhwc = load_target(write_npz(tmp_path / "nhwc.npz", nchw.transpose(0, 2, 3, 1), y), card=rgb_card).train.x
    assert torch.equal(nhwc, want)
    grey = load_target(write_npz(tmp_path / "hw.npz", nchw[:, 0], y), card=rgb_card).train.x
    assert torch.equal(grey, load_target(write_npz(tmp_path / "1hw.npz", nchw[:, :1], y), card=rgb_card).train.x)
    assert torch.equal(
        from_arrays(nchw.transpose(0, 2, 3, 1), y, card=rgb_card).x, from_arrays(nchw, y, card=rgb_card).x
    )


def test_16_bit_images_are_read_at_their_depth(tmp_path, session_card):
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, size=(6, 8, 8), dtype=np.uint16)
    for name, bits in (("deep", deep), ("shallow", (deep // 257).astype(np.uint8))):
        for label in ("a", "b"):
            (tmp_path / name / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(bits[3 * (label == "b") + i]).save(tmp_path / name / label / f"{i}.png")
    assert Image.open(tmp_path / "deep" / "a" / "0.png").mode.startswith("I")  # not clipped to 8-bit "L"
    deep_x = load_target(f"{tmp_path / 'deep'}/", card=session_card, seed=0).train.x
    shallow_x = load_target(f"{tmp_path / 'shallow'}/", card=session_card, seed=0).train.x
    assert torch.allclose(deep_x, shallow_x, atol=1 / 255 / 0.4)  # the same picture, to 8-bit precision


def test_a_class_folder_without_images_is_named(tmp_path, session_card):
    _image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3)
    (tmp_path / "imgs" / "emu").mkdir()
    with pytest.raises(DataError, match="imgs/emu: a class folder without images .*add some, or remove the folder"):
        load_target(str(tmp_path / "imgs") + "/", card=session_card)


def test_an_image_too_large_to_read_safely_is_a_data_error(tmp_path, session_card, monkeypatch):
    _image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3)
    # Pillow refuses images of more than twice MAX_IMAGE_PIXELS (a decompression bomb): these are 16x12.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)
    with pytest.raises(DataError, match="too large to read safely"):
        load_target(str(tmp_path / "imgs") + "/", card=session_card)


def test_malformed_csv(tmp_path, mlp_card):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c,d,label\n1,2,3,x,0\n")
    with pytest.raises(DataError, match="non-numeric feature"):
        load_target(str(path), card=mlp_card)
    path.write_text("a,b,c,d,label\n1,2,3,,0\n1,2,3,4,1\n")
    with pytest.raises(DataError, match="NaN"):
        load_target(str(path), card=mlp_card)


def test_empty_folder(tmp_path, session_card):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_target(str(tmp_path / "empty"), card=session_card)


def test_unsupported_file(tmp_path, session_card):
    (tmp_path / "d.parquet").write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        load_target(str(tmp_path / "d.parquet"), card=session_card)


def test_spec_parsing(tmp_path):
    assert parse_spec("digits:shift=blur,classes=1,3").options == {"shift": "blur", "classes": "1,3"}
    assert parse_spec("fashion-mnist:classes=1,3,unlabeled,severity=2").options == {
        "classes": "1,3",
        "unlabeled": "",
        "severity": "2",
    }
    np.savez(tmp_path / "a:b.npz", x=np.zeros((3, 2)))
    assert parse_spec(str(tmp_path / "a:b.npz")).path == str(tmp_path / "a:b.npz")  # a ':' in a path
    assert parse_spec(str(tmp_path / "a:b.npz") + ":unlabeled").unlabeled


def test_split_is_stratified():
    y = np.repeat(np.arange(4), 25)
    s = split_indices(y, seed=0)
    for part, share in ((s.train, 15), (s.val, 5), (s.test, 5)):
        assert np.bincount(y[part]).tolist() == [share] * 4


def test_too_few_examples_to_split(tmp_path, mlp_card):
    x, y = blobs(n=6)
    with pytest.raises(DataError, match="too few examples"):
        load_target(write_npz(tmp_path / "tiny.npz", x, y), card=mlp_card)


def test_from_arrays_checks_and_normalises(session_card):
    x = np.full((4, 64), 0.7, dtype=np.float32)
    data = from_arrays(x, np.array([0, 1, 0, 1]), card=session_card)
    assert data.x.shape == (4, 1, 8, 8) and torch.allclose(data.x, torch.full((4, 1, 8, 8), 1.0))
    with pytest.raises(DataError, match="only one class"):
        from_arrays(x, np.zeros(4, dtype=np.int64), card=session_card)
