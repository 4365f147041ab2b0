"""Leave-one-out k-nearest-neighbour accuracy on L2-normalised features (numpy only).

Each example is classified by the majority label of its k most cosine-similar
other examples (ties go to the class whose tied neighbours are more similar
in total), and the score is the fraction classified correctly: how well the
features separate the client's classes with no training at all. Rows are
processed in chunks, so memory stays at chunk × n similarities.
"""

from __future__ import annotations

import numpy as np

from xfer.client.onnxhead.stats import unit_features

CHUNK = 1024
DEFAULT_K = 5


def knn_predictions(features: np.ndarray, labels: np.ndarray, *, k: int = DEFAULT_K) -> np.ndarray:
    """Each example's leave-one-out k-NN prediction (k is capped at n − 1)."""
    y = np.asarray(labels)
    n = len(y)
    if n < 2:
        raise ValueError("k-NN needs at least two examples")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, n - 1)
    z = unit_features(features)
    classes, codes = np.unique(y, return_inverse=True)
    out = np.empty(n, dtype=y.dtype)
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(start + CHUNK, n))
        sims = z[rows] @ z.T
        sims[np.arange(len(rows)), rows] = -np.inf  # leave the example itself out
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near_sims = np.take_along_axis(sims, nearest, axis=1)
        votes = np.zeros((len(rows), len(classes)))
        np.add.at(votes, (np.repeat(np.arange(len(rows)), k), codes[nearest].ravel()), 1.0)
        weight = np.zeros_like(votes)
        np.add.at(weight, (np.repeat(np.arange(len(rows)), k), codes[nearest].ravel()), near_sims.ravel())
        # Similarities are in [-1, 1]: a tenth of their sum over at most k neighbours never outweighs one vote.
        out[rows] = classes[np.argmax(votes + weight / (10.0 * k + 1.0), axis=1)]
    return out


def knn_accuracy(features: np.ndarray, labels: np.ndarray, *, k: int = DEFAULT_K) -> float:
    """Leave-one-out k-NN accuracy of `labels` on `features`."""
    return float(np.mean(knn_predictions(features, labels, k=k) == np.asarray(labels)))
