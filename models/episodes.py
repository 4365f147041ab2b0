"""N-way K-shot episodes: the unit of meta-training and of few-shot evaluation (numpy only).

An episode draws `ways` classes, then `shots` support and `queries` query
examples of each, without overlap; its labels are the positions 0..ways-1 of
the drawn classes in a random order, so no head can rely on which class is
which (Vinyals et al. 2016; Snell et al. 2017). Used by
`python -m xfer.models.train --meta` on the operator's data and by the
client's episodic evaluation (`xfer.client.fewshot`) on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


class EpisodeError(ValueError):
    """Episodes of this shape cannot be drawn from these labels."""


@dataclasses.dataclass(frozen=True)
class EpisodeShape:
    """How each episode looks: `ways` classes, `shots` support and `queries` query examples per class."""

    ways: int
    shots: int
    queries: int

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EpisodeError(f"{name} must be a positive integer, got {value!r}")
        if self.ways < 2:
            raise EpisodeError(f"an episode needs at least 2 ways (classes), got {self.ways}")

    @property
    def per_class(self) -> int:
        """Examples each drawn class must have."""
        return self.shots + self.queries


@dataclasses.dataclass(frozen=True, eq=False)
class Episode:
    """Row indices into the labelled pool, and the episode's own labels 0..ways-1."""

    classes: np.ndarray  # (ways,) original class of each episode label
    support: np.ndarray  # (ways * shots,) rows
    support_y: np.ndarray
    query: np.ndarray  # (ways * queries,) rows
    query_y: np.ndarray


class EpisodeSampler:
    """Draws episodes of one shape from integer labels, reproducibly from a seed."""

    def __init__(self, labels: np.ndarray, *, shape: EpisodeShape, seed: int) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise EpisodeError("episodes need one integer label per example")
        self.shape = shape
        classes, counts = np.unique(labels, return_counts=True)
        usable = classes[counts >= shape.per_class]
        if len(usable) < shape.ways:
            short = {int(c): int(n) for c, n in zip(classes, counts) if n < shape.per_class}
            raise EpisodeError(
                f"{shape.ways}-way {shape.shots}-shot episodes with {shape.queries} queries need {shape.ways} classes "
                f"with at least {shape.per_class} examples each; only {len(usable)} of the {len(classes)} classes have "
                f"that many"
                + (f" (too few: {short})" if short else "")
                + "; lower --ways, --shots or --queries, or give more examples"
            )
        self.classes = usable
        self.rows = {int(c): np.nonzero(labels == c)[0] for c in usable}
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        """One episode."""
        s = self.shape
        chosen = self.rng.choice(self.classes, size=s.ways, replace=False)
        support, query = [], []
        for c in chosen:
            picked = self.rng.choice(self.rows[int(c)], size=s.per_class, replace=False)
            support.append(picked[: s.shots])
            query.append(picked[s.shots :])
        ways = np.arange(s.ways)
        return Episode(
            classes=chosen,
            support=np.concatenate(support),
            support_y=np.repeat(ways, s.shots),
            query=np.concatenate(query),
            query_y=np.repeat(ways, s.queries),
        )

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()
