"""A candidate source's scores on the client's labelled training examples (numpy only)."""

from __future__ import annotations

import dataclasses

import numpy as np

from xfer.client.rank.errors import RankError
from xfer.client.rank.knn import DEFAULT_K, knn_accuracy
from xfer.client.rank.logme import logme

#: Ranking criteria: LogME (the default) or the k-NN accuracy.
CRITERIA = ("logme", "knn")


@dataclasses.dataclass(frozen=True)
class SourceScore:
    """LogME and leave-one-out k-NN accuracy of one candidate's features (exact, local)."""

    logme: float
    knn_accuracy: float
    examples: int
    feature_dim: int
    k: int

    def value(self, criterion: str) -> float:
        """The score a ranking by `criterion` sorts on."""
        if criterion not in CRITERIA:
            raise RankError(f"unknown ranking criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
        return self.logme if criterion == "logme" else self.knn_accuracy


def score_features(features: np.ndarray, labels: np.ndarray, *, k: int = DEFAULT_K) -> SourceScore:
    """LogME and k-NN accuracy of `labels` (integers) on `features` (n, D)."""
    f = np.asarray(features)
    y = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y):
        raise RankError(f"features must be (n, D) with one label per row; got {f.shape} for {y.shape} labels")
    if len(np.unique(y)) < 2:
        raise RankError("scoring needs labelled examples of at least two classes")
    try:
        fit = logme(f, y)
        knn = knn_accuracy(f, y, k=k)
    except ValueError as exc:
        raise RankError(f"cannot score these features: {exc}") from None
    return SourceScore(
        logme=fit.score, knn_accuracy=knn, examples=len(y), feature_dim=int(f.shape[1]), k=min(k, len(y) - 1)
    )


def ranking(scores: dict[str, SourceScore], *, by: str) -> list[str]:
    """Candidate names, best first by `by` (ties keep the given order)."""
    order = {name: i for i, name in enumerate(scores)}
    return sorted(scores, key=lambda name: (-scores[name].value(by), order[name]))
