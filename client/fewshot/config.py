"""The episodic evaluation's settings (torch-free): one frozen, checked `EpisodeConfig`."""

from __future__ import annotations

import dataclasses
import math

from xfer.client.fewshot.errors import FewShotError

#: Heads an episode can be scored with. `prototype` and `logreg` work on cached features (numpy only);
#: `finetune` adapts the whole network per episode (torch).
EPISODE_HEADS = ("prototype", "logreg", "finetune")
FEATURE_HEADS = ("prototype", "logreg")
#: The customary reporting protocol (Snell et al. 2017; Chen et al. 2019): 600 episodes, 15 queries per class.
DEFAULT_EPISODES = 600
DEFAULT_QUERIES = 15


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FewShotError(f"{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpisodeConfig:
    """`episodes` N-way K-shot episodes for each K in `shots`, scored with each head in `heads`.

    `finetune_steps`/`finetune_lr` (None: the card's meta-training inner loop when the source was
    meta-trained with one, else 10 steps at 0.01) set the `finetune` head's SGD on the support set.
    """

    episodes: int = DEFAULT_EPISODES
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = DEFAULT_QUERIES
    heads: tuple[str, ...] = ("prototype", "logreg")
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _positive_int("episodes", self.episodes)
        _positive_int("queries", self.queries)
        _positive_int("ways", self.ways)
        if self.ways < 2:
            raise FewShotError(f"ways must be at least 2, got {self.ways}")
        if isinstance(self.shots, (int, str)) or not self.shots:
            raise FewShotError(f"shots must be a non-empty tuple such as (1, 5), got {self.shots!r}")
        for k in self.shots:
            _positive_int("every shot count", k)
        if len(set(self.shots)) != len(self.shots):
            raise FewShotError(f"shots repeat a value: {self.shots}")
        if isinstance(self.heads, str) or not self.heads:
            raise FewShotError(f"heads must be a non-empty tuple of {', '.join(EPISODE_HEADS)}")
        unknown = [h for h in self.heads if h not in EPISODE_HEADS]
        if unknown:
            raise FewShotError(f"unknown episode head(s) {unknown}; valid: {', '.join(EPISODE_HEADS)}")
        if len(set(self.heads)) != len(self.heads):
            raise FewShotError(f"heads repeat a value: {self.heads}")
        if self.finetune_steps is not None:
            _positive_int("finetune_steps", self.finetune_steps)
        if self.finetune_lr is not None and not (
            isinstance(self.finetune_lr, (int, float)) and math.isfinite(self.finetune_lr) and self.finetune_lr > 0
        ):
            raise FewShotError(f"finetune_lr must be a positive number, got {self.finetune_lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise FewShotError(f"seed must be an integer, got {self.seed!r}")

    @property
    def needs_model(self) -> bool:
        """Whether a head adapts the network itself (so features alone are not enough)."""
        return any(h not in FEATURE_HEADS for h in self.heads)
