"""The source-training loop, once: Adam, optionally Opacus DP-SGD to a target epsilon.

`python -m xfer.models.train` trains published source models with it, and
the privacy audits (`xfer.models.audit`) train their reference and canary
models with the very same loop, so an audit measures the product's own
training and not a look-alike.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import cast

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How a source model is trained."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    #: Train with DP-SGD to this epsilon (None: no DP).
    dp_epsilon: float | None = None
    #: DP delta (None: min(1e-5, 1/n^1.1) for n training examples).
    dp_delta: float | None = None
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs, batch_size and lr must be positive")


@dataclasses.dataclass(frozen=True)
class FitResult:
    """The trained (plain, unwrapped) module and the privacy the accountant reports."""

    model: nn.Module
    dp_epsilon: float | None
    dp_delta: float | None


def default_delta(n: int) -> float:
    """The default DP delta for `n` training examples: min(1e-5, 1/n^1.1)."""
    return min(1e-5, 1.0 / max(n, 1) ** 1.1)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FitConfig,
    *,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Trains `model` on (x, y) in place; with `config.dp_epsilon`, Opacus DP-SGD with the PRV accountant.

    `loss(logits, targets)` replaces the mean cross-entropy (multi-task sources: the weighted sum over
    heads); it must be a per-example sum divided by the batch size, so an empty DP batch stays defined.
    """
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    train_model = model
    engine = None
    dp_delta = config.dp_delta
    with warnings.catch_warnings():
        # Known, harmless notices: secure_mode (a CSPRNG for the noise) is a deliberate opt-out
        # for a demo source model, and torch's backward-hook notice would fire on every batch.
        for notice in ("Secure RNG turned off", "Full backward hook is firing", "Optimal order is the largest"):
            warnings.filterwarnings("ignore", message=notice)
        if config.dp_epsilon is not None:
            from opacus import PrivacyEngine

            dp_delta = dp_delta if dp_delta is not None else default_delta(len(x))
            if dp_delta >= 1.0 / len(x):
                # A guarantee that may fail with probability 1/n or more allows releasing some example outright.
                raise ValueError(f"dp_delta {dp_delta:g} must be below 1/n = 1/{len(x)} for {len(x)} training examples")
            engine = PrivacyEngine(accountant="prv", secure_mode=False)
            train_model, optimizer, loader = engine.make_private_with_epsilon(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                epochs=config.epochs,
                target_epsilon=config.dp_epsilon,
                target_delta=dp_delta,
                max_grad_norm=config.max_grad_norm,
            )
        for _ in range(config.epochs):
            train_model.train()
            for xb, yb in loader:
                optimizer.zero_grad(set_to_none=True)
                # Poisson sampling can draw an empty batch; it must still be a (noise-only) step that
                # the accountant counts, so the loss is a sum that is well defined for zero examples.
                logits = train_model(xb)
                value = (
                    loss(logits, yb)
                    if loss is not None
                    else nn.functional.cross_entropy(logits, yb, reduction="sum") / max(len(yb), 1)
                )
                value.backward()
                optimizer.step()
        spent = engine.get_epsilon(dp_delta) if engine is not None else None
    if engine is not None:
        model = cast(nn.Module, train_model._module)  # unwrap GradSampleModule: the card describes the plain module
        model.zero_grad(set_to_none=True)
    return FitResult(model=model, dp_epsilon=spent, dp_delta=dp_delta if spent is not None else None)
