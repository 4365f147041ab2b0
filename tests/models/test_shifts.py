"""Shifts: deterministic per seed, graded by severity, on any image size."""

import numpy as np
import pytest

from xfer.models.imagesets import ImageSet
from xfer.models.shifts import INPUT_SHIFTS, SEVERITIES, apply_shift


def images(n=20, size=28, channels=1, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, channels, size, size), dtype=np.float32)
    x[:, :, size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = 1.0  # a bar, like a stroke
    x = np.clip(x + rng.uniform(0, 0.1, x.shape), 0, 1).astype(np.float32)
    return ImageSet(x, np.arange(n) % 4, ("a", "b", "c", "d"), np.arange(n))


@pytest.mark.parametrize("size, channels", [(8, 1), (28, 1), (32, 3)])
@pytest.mark.parametrize("shift", list(INPUT_SHIFTS))
def test_shifts_keep_shape_and_range(shift, size, channels):
    data = images(size=size, channels=channels)
    out = apply_shift(data, shift, seed=1, severity=5)
    assert out.x.shape == data.x.shape and out.x.dtype == np.float32
    assert np.isfinite(out.x).all() and -1e-6 <= out.x.min() and out.x.max() <= 1 + 1e-6
    assert np.array_equal(out.y, data.y) and not np.array_equal(out.x, data.x)


@pytest.mark.parametrize("shift", ["gaussian-noise", "blur", "contrast", "impulse-noise"])
def test_severity_grades_the_corruption(shift):
    data = images()
    distance = [float(np.abs(apply_shift(data, shift, seed=0, severity=s).x - data.x).mean()) for s in SEVERITIES]
    assert distance == sorted(distance) and distance[0] < distance[-1]


def test_blur_and_contrast_keep_the_mean_intensity():
    data = images()
    for shift in ("blur", "contrast"):
        out = apply_shift(data, shift, severity=5)
        assert abs(float(out.x.mean()) - float(data.x.mean())) < 0.01


def test_noise_depends_on_the_seed_only():
    data = images()
    a, b = apply_shift(data, "gaussian-noise", seed=1), apply_shift(data, "gaussian-noise", seed=1)
    c = apply_shift(data, "gaussian-noise", seed=2)
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)


def test_permuted_labels_move_every_class():
    data = images()
    out = apply_shift(data, "permute-labels")
    assert np.array_equal(out.x, data.x) and np.all(out.y != data.y)
    assert np.array_equal(out.y, (data.y + 1) % 4)


@pytest.mark.parametrize("severity", [0, 6, 2.5])
def test_bad_severity(severity):
    with pytest.raises(ValueError, match="severity must be one of 1-5"):
        apply_shift(images(), "blur", severity=severity)
