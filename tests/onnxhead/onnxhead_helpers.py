"""Small data makers shared by the torch-free head tests."""

from __future__ import annotations

import numpy as np


def blobs(*, n: int, dim: int, classes: int, seed: int = 0, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: (n, dim) float64 features and balanced labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (classes, dim))
    y = np.arange(n) % classes
    return centres[y] + rng.normal(0.0, spread, (n, dim)), y
