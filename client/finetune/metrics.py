"""Evaluation: accuracy, macro-F1, loss, expected calibration error, per-class accuracy."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

ECE_BINS = 15


@dataclasses.dataclass(frozen=True)
class Metrics:
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


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 512, device: torch.device | None = None
) -> torch.Tensor:
    """Logits for every row of `x`, in eval mode, batched, returned on the CPU as float32."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device, non_blocking=True)).float() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros((0, 0))


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, *, bins: int = ECE_BINS) -> float:
    """ECE: Σ_bins (|bin|/n)·|accuracy − mean confidence|, equal-width confidence bins."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    # Bin b holds confidences in (edges[b], edges[b+1]]; confidence is never 0 for a softmax.
    which = torch.bucketize(confidence, edges[1:-1], right=False)
    ece = torch.zeros(())
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.float().mean() * (correct[mask].mean() - confidence[mask].mean()).abs()
    return float(ece)


def macro_f1(predicted: torch.Tensor, y: torch.Tensor, *, num_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in `y` or the predictions."""
    scores = []
    for c in range(num_classes):
        tp = int(((predicted == c) & (y == c)).sum())
        fp = int(((predicted == c) & (y != c)).sum())
        fn = int(((predicted != c) & (y == c)).sum())
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / len(scores)) if scores else 0.0


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, *, label_names: tuple[str, ...]) -> Metrics:
    """All metrics from logits and true labels."""
    y = y.cpu()
    logits = logits.float().cpu()
    k = len(label_names)
    predicted = logits.argmax(dim=1)
    per_class = {}
    for c, name in enumerate(label_names):
        mask = y == c
        if mask.any():
            per_class[name] = float((predicted[mask] == c).float().mean())
    return Metrics(
        accuracy=float((predicted == y).float().mean()),
        macro_f1=macro_f1(predicted, y, num_classes=k),
        loss=float(nn.functional.cross_entropy(logits, y)),
        ece=expected_calibration_error(logits.softmax(dim=1), y),
        per_class_accuracy=per_class,
        examples=len(y),
    )


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, label_names: tuple[str, ...], batch_size: int = 512
) -> Metrics:
    """Evaluates `model` on (x, y)."""
    return metrics_from_logits(predict_logits(model, x, batch_size=batch_size), y, label_names=label_names)
