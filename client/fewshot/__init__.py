"""Few-shot evaluation: N-way K-shot episodes on the client's labelled data, with 95 % confidence intervals.

`evaluate_episodes(features, labels, config=EpisodeConfig(...))` scores
training-free heads (a prototype / nearest-class-mean head, ProtoNet-style;
a logistic regression on L2-normalised features, the "good embedding"
baseline of Tian et al. 2020) on cached features, and
`evaluate_model_episodes(model, x, y, config=...)` adds the `finetune` head
(the whole network adapted on each episode's support set, MAML-style).
`xfer finetune REF DATA --episodes 600 --ways 5 --shots 1,5` is the command
(`xfer.client.fewshot.command`). Names are imported lazily; the feature
heads need only numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EpisodeConfig": "xfer.client.fewshot.config",
    "EPISODE_HEADS": "xfer.client.fewshot.config",
    "EpisodeReport": "xfer.client.fewshot.evaluate",
    "EpisodeScore": "xfer.client.fewshot.evaluate",
    "evaluate_episodes": "xfer.client.fewshot.evaluate",
    "evaluate_model_episodes": "xfer.client.fewshot.evaluate",
    "ci95": "xfer.client.fewshot.evaluate",
    "FewShotOutcome": "xfer.client.fewshot.outcome",
    "FewShotError": "xfer.client.fewshot.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xfer.client.fewshot' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
