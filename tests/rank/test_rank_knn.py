"""Leave-one-out k-NN accuracy on cosine similarity."""

from __future__ import annotations

import numpy as np
import pytest

from xfer.client.rank import knn
from xfer.client.rank.knn import knn_accuracy, knn_predictions


def test_each_example_is_left_out_of_its_own_vote():
    # Two tight clusters by direction; a lone point of class 1 sits inside class 0's cluster.
    f = np.array([[1, 0.0], [1, 0.05], [1, -0.05], [1, 0.02], [0, 1.0], [0.05, 1], [-0.05, 1]])
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    pred = knn_predictions(f, y, k=3)
    assert pred.tolist() == [0, 0, 0, 0, 1, 1, 1]  # the stray is outvoted by its neighbours, never by itself
    assert knn_accuracy(f, y, k=3) == pytest.approx(6 / 7)
    # k=1: the stray is the nearest neighbour of [1, 0] and [1, 0.05] and misleads both, and is itself wrong.
    assert knn_accuracy(f, y, k=1) == pytest.approx(4 / 7)


def test_ties_go_to_the_more_similar_neighbours_and_k_is_capped():
    f = np.array([[1.0, 0.0], [1.0, 0.3], [1.0, -0.9], [0.0, 1.0]])
    y = np.array([0, 1, 2, 2])
    # Example 0's two nearest: class 1 (cos 0.96) and class 2 (cos 0.74): one vote each, class 1 is closer.
    assert knn_predictions(f, y, k=2)[0] == 1
    assert len(knn_predictions(f, y, k=50)) == 4  # k above n − 1 is capped, not an error


def test_chunks_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(0)
    f, y = rng.normal(size=(50, 5)), rng.integers(0, 3, 50)
    whole = knn_predictions(f, y, k=5)
    monkeypatch.setattr(knn, "CHUNK", 7)
    assert (knn_predictions(f, y, k=5) == whole).all()


def test_too_little_is_refused():
    with pytest.raises(ValueError, match="two examples"):
        knn_accuracy(np.ones((1, 3)), np.array([0]))
    with pytest.raises(ValueError, match="at least 1"):
        knn_accuracy(np.ones((3, 3)), np.array([0, 1, 0]), k=0)
