import numpy as np
import pytest

from xfer.models.digits import SHIFTS, apply_shift, load_digits28, load_pool, parse_classes, select_classes


def test_source_and_target_pools_are_disjoint_halves():
    source, target = load_pool("source"), load_pool("target")
    assert abs(len(source) - len(target)) <= 1 and len(source) + len(target) == 1797
    assert not set(source.index.tolist()) & set(target.index.tolist())
    src = {x.tobytes() for x in source.x}
    # Some digits images are exact duplicates in the data set itself; almost none may be shared.
    shared = sum(x.tobytes() in src for x in target.x)
    assert shared < 5
    assert source.x.shape[1:] == (1, 8, 8) and source.x.dtype == np.float32
    assert 0.0 <= source.x.min() and source.x.max() <= 1.0
    assert len(load_pool("all")) == 1797


def test_digits28_is_the_same_pool_resized():
    small, big = load_pool("target"), load_digits28("target")
    assert big.x.shape == (len(small), 1, 28, 28) and np.array_equal(big.y, small.y)
    assert np.array_equal(big.index, small.index)
    assert 0.0 <= big.x.min() and big.x.max() <= 1.0
    # Resizing keeps the picture: the mean intensity barely moves.
    assert abs(float(big.x.mean()) - float(small.x.mean())) < 0.02


def test_select_classes_relabels_in_order():
    data = select_classes(load_pool("target"), [7, 3])
    assert set(data.y.tolist()) == {0, 1} and data.label_names == ("7", "3")
    with pytest.raises(ValueError):
        select_classes(load_pool("target"), [3])
    with pytest.raises(ValueError):
        select_classes(load_pool("target"), [3, 3])
    with pytest.raises(ValueError, match="0-9"):
        select_classes(load_pool("target"), [3, 10])


def test_parse_classes():
    assert parse_classes("0-4") == [0, 1, 2, 3, 4]
    assert parse_classes("5,7, 9") == [5, 7, 9]
    assert parse_classes("0-1,8") == [0, 1, 8]
    with pytest.raises(ValueError, match="cannot read classes '4-2'"):
        parse_classes("4-2")


@pytest.mark.parametrize("shift", [s for s in SHIFTS if s != "none"])
def test_every_shift_changes_the_data_deterministically(shift):
    data = load_pool("target")
    a, b = apply_shift(data, shift, seed=3), apply_shift(data, shift, seed=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    changed = not np.array_equal(a.x, data.x) or not np.array_equal(a.y, data.y)
    assert changed
    assert a.x.shape == data.x.shape and a.x.dtype == np.float32


def test_unknown_shift_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: none"):
        apply_shift(load_pool("target"), "fog")
