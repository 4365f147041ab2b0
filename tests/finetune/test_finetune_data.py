"""Data specs: every format loads, every malformed data set gets a clear DataError."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from xfer.client.finetune.data import load_target, parse_spec, split_indices
from xfer.client.finetune.errors import DataError
from xfer.models import card_for_model, create_model
from xfer.models.digits import load_pool


@pytest.fixture(scope="module")
def mlp_card():
    m = create_model("mlp", in_features=4, hidden=(8,), num_classes=3)
    return card_for_model(m, label_names=("a", "b", "c"))


def write_npz(path, x, y, **extra):
    np.savez(path, x=x, y=y, **extra)
    return str(path)


def blobs(n=60, k=3, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32), y


def test_digits_target_is_the_target_pool_split_deterministically(session_card):
    a = load_target("digits", card=session_card, seed=3)
    b = load_target("digits", card=session_card, seed=3)
    c = load_target("digits", card=session_card, seed=4)
    assert torch.equal(a.train.index, b.train.index) and not torch.equal(a.train.index, c.train.index)
    parts = [set(a.train.index.tolist()), set(a.val.index.tolist()), set(a.test.index.tolist())]
    assert sum(map(len, parts)) == len(load_pool("target"))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert a.train.x.shape[1:] == (1, 8, 8) and a.dataset_id == "digits-target"
    # Normalised with the card's mean/std.
    raw = load_pool("target").x[a.train.index.numpy()]
    assert torch.allclose(a.train.x, torch.from_numpy((raw - 0.3) / 0.4), atol=1e-6)


def test_digits_options(session_card):
    five = load_target("digits:classes=5-9", card=session_card)
    assert five.label_names == ("5", "6", "7", "8", "9")
    assert load_target("digits:shift=unseen-classes", card=session_card).label_names == five.label_names
    few = load_target("digits:shift=rotate,per_class=5", card=session_card)
    assert sorted(np.bincount(few.train.y.numpy()).tolist()) == [5] * 10
    listed = load_target("digits:classes=1,3,5", card=session_card)
    assert listed.label_names == ("1", "3", "5")
    base = load_target("digits", card=session_card)
    inverted = load_target("digits:shift=invert", card=session_card)
    assert not torch.allclose(base.train.x, inverted.train.x)
    permuted = load_target("digits:shift=permute-labels", card=session_card)
    assert torch.equal((base.train.y + 1) % 10, permuted.train.y)


@pytest.mark.parametrize("spec, message", [
    ("digits:shift=sideways", "unknown digits shift 'sideways'; valid: none, gaussian-noise"),
    ("digits:colour=red", "unknown digits option"),
    ("digits:per_class=0", "per_class must be a positive integer"),
    ("digits:classes=3", "at least two classes"),
    ("nope/missing.npz", "does not exist"),
    ("", "empty data spec"),
])
def test_bad_digits_and_paths(session_card, spec, message):
    with pytest.raises(DataError, match=message):
        load_target(spec, card=session_card)


def test_npz(tmp_path, mlp_card):
    x, y = blobs()
    target = load_target(write_npz(tmp_path / "d.npz", x, y, label_names=np.array(["a", "b", "c"])), card=mlp_card)
    assert target.label_names == ("a", "b", "c")
    assert len(target.train) + len(target.val) + len(target.test) == 60
    assert target.dataset_id.startswith("npz-")
    # Without names, labels are 0..k-1.
    assert load_target(write_npz(tmp_path / "e.npz", x, y), card=mlp_card).label_names == ("0", "1", "2")


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


def test_image_folder(tmp_path, session_card):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    target = load_target(str(tmp_path / "imgs") + "/", card=session_card)
    assert target.label_names == ("cat", "dog")
    assert target.train.x.shape[1:] == (1, 8, 8)
    assert target.dataset_id.startswith("folder-")


@pytest.mark.parametrize("case, message", [
    ("shape", r"wrong shape: examples have shape \[5\]"),
    ("one_class", "only one class"),
    ("nan", "NaN or infinite features in 1 example"),
    ("negative", "labels out of range"),
    ("too_big", "labels out of range: found 7 but only 3 label_names"),
    ("float_labels", "labels must be integers"),
    ("length", "x has 60 examples but y has 59"),
    ("missing_y", "needs arrays 'x' and 'y'"),
])
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
    elif case == "length":
        y = y[:-1]
    path = tmp_path / "bad.npz"
    if case == "missing_y":
        np.savez(path, x=x)
    else:
        write_npz(path, x, y, **extra)
    with pytest.raises(DataError, match=message):
        load_target(str(path), card=mlp_card)


def test_malformed_csv(tmp_path, mlp_card):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c,d,label\n1,2,3,x,0\n")
    with pytest.raises(DataError, match="non-numeric feature"):
        load_target(str(path), card=mlp_card)
    path.write_text("a,b,c,d,label\n1,2,3,,0\n1,2,3,4,1\n")
    with pytest.raises(DataError, match="NaN"):
        load_target(str(path), card=mlp_card)


def test_folder_without_classes(tmp_path, session_card):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_target(str(tmp_path / "empty"), card=session_card)


def test_unsupported_file(tmp_path, session_card):
    (tmp_path / "d.parquet").write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        load_target(str(tmp_path / "d.parquet"), card=session_card)


def test_spec_parsing():
    assert parse_spec("digits:shift=blur,classes=1,3").options == {"shift": "blur", "classes": "1,3"}


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
    from xfer.client.finetune.data import from_arrays

    x = np.full((4, 64), 0.7, dtype=np.float32)
    data = from_arrays(x, np.array([0, 1, 0, 1]), card=session_card)
    assert data.x.shape == (4, 1, 8, 8) and torch.allclose(data.x, torch.full((4, 1, 8, 8), 1.0))
    with pytest.raises(DataError, match="only one class"):
        from_arrays(x, np.zeros(4, dtype=np.int64), card=session_card)
