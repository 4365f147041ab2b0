"""Evaluation in numpy: accuracy, macro-F1, loss, expected calibration error, per-class accuracy.

The one definition of these scores: `xfer.client.finetune.metrics` scores
torch models through it, so a torch-free head and a torch probe are scored
the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from xfer.client.onnxhead.head import log_softmax

ECE_BINS = 15


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Exact scores on one split (local; `report.py` rounds what leaves the machine)."""

    accuracy: float
    macro_f1: float
    loss: float
    ece: float
    per_class_accuracy: dict[str, float]
    examples: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what metrics.json holds)."""
        return dataclasses.asdict(self)

    def scalars(self) -> dict[str, float]:
        """The scalar metrics, named as the metrics report expects."""
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": self.loss, "ece": self.ece}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """ECE: Σ_bins (|bin|/n)·|accuracy − mean confidence|; bin b holds confidences in (b/B, (b+1)/B]."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def macro_f1(predicted: np.ndarray, y: np.ndarray, *, num_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in `y` or the predictions."""
    scores = []
    for c in range(num_classes):
        tp = int(np.sum((predicted == c) & (y == c)))
        fp = int(np.sum((predicted == c) & (y != c)))
        fn = int(np.sum((predicted != c) & (y == c)))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def metrics_from_logits(logits: np.ndarray, y: np.ndarray, *, label_names: tuple[str, ...]) -> Metrics:
    """All metrics from logits (n, K) and true labels (n,)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("cannot score an empty split")
    logp = log_softmax(logits)
    predicted = logits.argmax(axis=1)
    per_class = {name: float(np.mean(predicted[y == c] == c)) for c, name in enumerate(label_names) if np.any(y == c)}
    return Metrics(
        accuracy=float(np.mean(predicted == y)),
        macro_f1=macro_f1(predicted, y, num_classes=len(label_names)),
        loss=float(-np.mean(logp[np.arange(len(y)), y])),
        ece=expected_calibration_error(np.exp(logp), y),
        per_class_accuracy=per_class,
        examples=int(len(y)),
    )
