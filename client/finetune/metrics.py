"""Evaluation of torch models: batched logits, then the scores of `xfer.client.onnxhead.metrics`.

One definition of accuracy, macro-F1, loss, expected calibration error and
per-class accuracy serves the torch trainer and the torch-free ONNX head
alike (in numpy, float64), so the two are scored the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from xfer.client.onnxhead import metrics as scores
from xfer.client.onnxhead.metrics import ECE_BINS, Metrics

__all__ = ["ECE_BINS", "Metrics", "evaluate", "expected_calibration_error", "metrics_from_logits", "predict_logits"]


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
    """ECE of class probabilities (see `scores.expected_calibration_error`)."""
    return scores.expected_calibration_error(probs.detach().double().cpu().numpy(), y.cpu().numpy(), bins=bins)


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, *, label_names: tuple[str, ...]) -> Metrics:
    """All metrics from logits and true labels."""
    return scores.metrics_from_logits(logits.detach().float().cpu().numpy(), y.cpu().numpy(), label_names=label_names)


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, label_names: tuple[str, ...], batch_size: int = 512
) -> Metrics:
    """Evaluates `model` on (x, y)."""
    return metrics_from_logits(predict_logits(model, x, batch_size=batch_size), y, label_names=label_names)
