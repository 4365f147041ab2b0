"""Training-free heads for one episode, on cached features (numpy only).

- ``prototype``: nearest class mean on centred, unit-normalised features
  (SimpleShot's CL2N, cosine), the ProtoNet test-time rule on the pulled
  model's features — `xfer fit-head --head prototype`'s head, built from the
  episode's support set (centred on the support mean).
- ``logreg``: multinomial logistic regression on L2-normalised features with
  scikit-learn's default penalty (C = 1, i.e. λ = 1/n in the mean-loss form):
  the linear-probe baseline of Tian et al. (ECCV 2020, "Rethinking few-shot
  image classification: a good embedding is all you need?"), fitted with the
  same L-BFGS as `xfer fit-head --head logreg`.

Each takes support features and labels 0..ways-1 and returns query logits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xfer.client.onnxhead.logreg import fit_multinomial
from xfer.client.onnxhead.prototype import head_from_prototypes
from xfer.client.onnxhead.stats import class_stats, prototypes, unit_features

#: The prototype head's logit scale: it changes confidence, never which class wins.
PROTOTYPE_SCALE = 10.0

FeatureHead = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def prototype_logits(support: np.ndarray, support_y: np.ndarray, query: np.ndarray, ways: int) -> np.ndarray:
    """Cosine logits of the queries to the centred class means of the support set (CL2N)."""
    stats = class_stats(unit_features(support), support_y, num_classes=ways)
    head = head_from_prototypes(prototypes(stats), metric="cosine", scale=PROTOTYPE_SCALE)
    return head.logits(query)


def logreg_logits(support: np.ndarray, support_y: np.ndarray, query: np.ndarray, ways: int) -> np.ndarray:
    """Logits of a logistic regression fitted on the L2-normalised support features (λ = 1/n)."""
    x = unit_features(support)
    fit = fit_multinomial(x, support_y, num_classes=ways, l2=1.0 / len(support_y))
    return unit_features(query) @ fit.weight.T + fit.bias[None, :]


FEATURE_HEADS: dict[str, FeatureHead] = {"prototype": prototype_logits, "logreg": logreg_logits}


def feature_head(name: str) -> FeatureHead:
    """The feature head called `name`; raises listing the valid ones if unknown."""
    try:
        return FEATURE_HEADS[name]
    except KeyError:
        from xfer.client.fewshot.errors import FewShotError

        raise FewShotError(f"unknown feature head {name!r}; valid: {', '.join(FEATURE_HEADS)}") from None
