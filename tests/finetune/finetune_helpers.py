"""Helpers shared by the fine-tuning tests (imported by module name; tests/ has no packages)."""

from __future__ import annotations

from typing import Any

import torch

from xfer.client.finetune.config import FinetuneConfig
from xfer.models import create_model
from xfer.models.base import XferModel

DIGIT_NAMES = tuple(str(i) for i in range(10))


def tiny_model(seed: int = 0) -> XferModel:
    """convnet width 8, depth 2: blocks stem, block1, block2, head."""
    torch.manual_seed(seed)
    return create_model("convnet", width=8, depth=2)


def cfg(**fields: Any) -> FinetuneConfig:
    """A CPU FinetuneConfig for tests."""
    return FinetuneConfig(**{"device": "cpu", **fields})


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], after: torch.nn.Module) -> set[str]:
    """Names of parameters that are not bit-identical to `before`."""
    return {
        name for name, p in after.named_parameters() if name in before and not torch.equal(before[name], p.detach())
    }
