import numpy as np
import pytest

from xfer.models.digits import SHIFTS, apply_shift, load_pool, parse_classes, select_classes


def test_source_and_target_pools_are_disjoint_halves():
    source, target = load_pool("source"), load_pool("target")
    assert abs(len(source) - len(target)) <= 1 and len(source) + len(target) == 1797
    src = {x.tobytes() for x in source.x}
    # Some digits images are exact duplicates in the data set itself; almost none may be shared.
    shared = sum(x.tobytes() in src for x in target.x)
    assert shared < 5
    assert source.x.shape[1:] == (1, 8, 8) and source.x.dtype == np.float32
    assert 0.0 <= source.x.min() and source.x.max() <= 1.0


def test_select_classes_relabels_in_order():
    data = select_classes(load_pool("target"), [7, 3])
    assert set(data.y.tolist()) == {0, 1} and data.label_names == ("7", "3")
    with pytest.raises(ValueError):
        select_classes(load_pool("target"), [3])
    with pytest.raises(ValueError):
        select_classes(load_pool("target"), [3, 3])


def test_parse_classes():
    assert parse_classes("0-4") == [0, 1, 2, 3, 4]
    assert parse_classes("5,7, 9") == [5, 7, 9]


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
