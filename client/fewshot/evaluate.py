"""Episodic N-way K-shot evaluation with 95 % confidence intervals.

For each K in `shots`, `episodes` episodes are drawn from the labelled pool
(`xfer.models.episodes`: `ways` random classes, K support and `queries`
query examples each, labels in a random order); every head scores the same
episodes, so heads compare on paired draws. An episode's score is its query
accuracy; the report gives the mean over episodes and the 95 % confidence
interval 1.96·s/√E (s the sample standard deviation across episodes), the
convention of the few-shot literature (Snell et al. 2017; Chen et al. 2019).
Nothing is trained across episodes, so the pool needs no train/test split.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from xfer.client.fewshot.config import FEATURE_HEADS, EpisodeConfig
from xfer.client.fewshot.errors import FewShotError
from xfer.client.fewshot.heads import FeatureHead, feature_head
from xfer.models.episodes import Episode, EpisodeError, EpisodeSampler, EpisodeShape

#: z of a two-sided 95 % normal interval.
Z95 = 1.96

#: A head that needs the episode itself (the model's inputs), not only cached features: episode -> query logits.
EpisodeHead = Callable[[Episode], np.ndarray]


def _feature_episode(head: FeatureHead, features: np.ndarray, ways: int, episode: Episode) -> np.ndarray:
    return head(features[episode.support], episode.support_y, features[episode.query], ways)


def ci95(values: np.ndarray) -> float:
    """Half-width of the 95 % confidence interval of the mean: 1.96·s/√n (0 for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return 0.0
    return float(Z95 * values.std(ddof=1) / math.sqrt(len(values)))


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodeScore:
    """One head at one shot count: every episode's query accuracy."""

    head: str
    ways: int
    shots: int
    queries: int
    accuracies: np.ndarray

    @property
    def episodes(self) -> int:
        """Episodes scored."""
        return int(len(self.accuracies))

    @property
    def mean(self) -> float:
        """Mean query accuracy over episodes."""
        return float(np.mean(self.accuracies))

    @property
    def ci95(self) -> float:
        """Half-width of its 95 % confidence interval."""
        return ci95(self.accuracies)

    @property
    def setting(self) -> str:
        """'5way1shot'."""
        return f"{self.ways}way{self.shots}shot"

    def fmt(self) -> str:
        """'0.712 ± 0.013'."""
        return f"{self.mean:.3f} ± {self.ci95:.3f}"


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodeReport:
    """Every (head, shots) score of one evaluation, and what it ran on."""

    scores: tuple[EpisodeScore, ...]
    pool_examples: int
    pool_classes: int
    config: EpisodeConfig
    seconds: float

    def score(self, head: str, shots: int) -> EpisodeScore:
        """The score of `head` at `shots`; raises KeyError if it was not evaluated."""
        for s in self.scores:
            if s.head == head and s.shots == shots:
                return s
        raise KeyError(f"no score for head {head!r} at {shots} shots")

    def table(self) -> str:
        """A plain-text table: one row per head, one column per shot count."""
        c = self.config
        header = "head        " + "".join(f"{c.ways}-way {k}-shot".rjust(20) for k in c.shots)
        rows = [header]
        for head in c.heads:
            rows.append(head.ljust(12) + "".join(self.score(head, k).fmt().rjust(20) for k in c.shots))
        return "\n".join(rows)


def _sampler(labels: np.ndarray, *, config: EpisodeConfig, shots: int) -> EpisodeSampler:
    try:
        return EpisodeSampler(
            labels, shape=EpisodeShape(config.ways, shots, config.queries), seed=config.seed * 1000 + shots
        )
    except EpisodeError as exc:
        raise FewShotError(str(exc)) from None


def evaluate_episodes(
    features: np.ndarray | None,
    labels: np.ndarray,
    *,
    config: EpisodeConfig,
    episode_heads: dict[str, EpisodeHead] | None = None,
) -> EpisodeReport:
    """Scores `config.heads` on `config.episodes` episodes per shot count.

    `features` (n, D) serve the feature heads (`prototype`, `logreg`); a head outside those needs a
    callable in `episode_heads` (see `evaluate_model_episodes`).
    """
    started = time.perf_counter()
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise FewShotError("episodes need one integer label per example")
    if features is not None and len(features) != len(labels):
        raise FewShotError(f"{len(features)} feature rows for {len(labels)} labels")
    heads: dict[str, EpisodeHead] = {}
    for name in config.heads:
        if name in FEATURE_HEADS:
            if features is None:
                raise FewShotError(f"head {name!r} needs features")
            fn = feature_head(name)
            heads[name] = partial(_feature_episode, fn, features, config.ways)
        elif episode_heads is not None and name in episode_heads:
            heads[name] = episode_heads[name]
        else:
            raise FewShotError(f"head {name!r} adapts the model itself: evaluate with evaluate_model_episodes")
    scores = []
    for shots in config.shots:
        sampler = _sampler(labels, config=config, shots=shots)
        accuracy = {name: np.empty(config.episodes) for name in heads}
        for i in range(config.episodes):
            episode = sampler.sample()
            for name, head in heads.items():
                logits = head(episode)
                if not np.all(np.isfinite(logits)):
                    raise FewShotError(f"head {name!r} produced NaN or infinite logits; check the model's features")
                accuracy[name][i] = float(np.mean(np.argmax(logits, axis=1) == episode.query_y))
        scores += [EpisodeScore(name, config.ways, shots, config.queries, accuracy[name]) for name in heads]
    order = {h: i for i, h in enumerate(config.heads)}
    scores.sort(key=lambda s: (order[s.head], s.shots))
    return EpisodeReport(tuple(scores), len(labels), int(len(np.unique(labels))), config, time.perf_counter() - started)


def model_features(model, x, *, batch_size: int = 256) -> np.ndarray:
    """`model.forward_features` of `x` in eval mode, batched, as float32 numpy (torch)."""
    import torch

    model.eval()
    with torch.no_grad():
        return (
            torch.cat([model.forward_features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
            .float()
            .numpy()
        )


def evaluate_model_episodes(
    model, x, labels: np.ndarray, *, config: EpisodeConfig, card=None, features: np.ndarray | None = None
) -> EpisodeReport:
    """`evaluate_episodes` on a torch model's features (computed once) and, if asked, the `finetune` head.

    `x` are model-ready examples (a tensor); `card` supplies a meta-learned source's inner loop for the
    `finetune` head (`xfer.client.fewshot.adapt`).
    """
    from xfer.models.multitask import select_head

    model = select_head(model, card=card).model  # a multi-task source's extra heads take no part
    if features is None and any(h in FEATURE_HEADS for h in config.heads):
        features = model_features(model, x)
    episode_heads: dict[str, EpisodeHead] | None = None
    if config.needs_model:
        import torch

        from xfer.client.fewshot.adapt import EpisodeTuning, finetune_episode

        tuning = EpisodeTuning.for_card(card, ways=config.ways, steps=config.finetune_steps, lr=config.finetune_lr)

        def tune(e: Episode) -> np.ndarray:
            return finetune_episode(
                model,
                support_x=x[torch.from_numpy(e.support)],
                support_y=e.support_y,
                query_x=x[torch.from_numpy(e.query)],
                ways=config.ways,
                tuning=tuning,
            )

        episode_heads = {"finetune": tune}
    return evaluate_episodes(features, labels, config=config, episode_heads=episode_heads)
