"""The one contract every architecture in the zoo follows.

Adaptation strategies only talk to this interface: ordered parameter groups
from input to output (`blocks`), a named head that can be re-initialised,
and `forward_features` for linear probing and the ONNX `features` output.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn


class XferModel(nn.Module):
    """Base class: subclasses define `block_modules()` and set `config`."""

    #: Name of the classification head among `block_names()`.
    head_name: ClassVar[str] = "head"
    #: Registry id, set by `register_model`.
    architecture: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    # -- contract -----------------------------------------------------------
    def block_modules(self) -> list[tuple[str, nn.Module]]:
        """Ordered (name, module) pairs from input to output; the last is the head."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation, shape (batch, feature_dim)."""
        raise NotImplementedError

    @property
    def head_layer(self) -> nn.Linear:
        """The classification head module (registered under `head_name`)."""
        return self._modules[self.head_name]  # type: ignore[return-value]  # a Linear by the contract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_layer(self.forward_features(x))

    # -- derived ------------------------------------------------------------
    def blocks(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Ordered (name, parameters) groups from input to output."""
        return [(name, list(module.parameters())) for name, module in self.block_modules()]

    def block_names(self) -> list[str]:
        """Names of the blocks, input to output."""
        return [name for name, _ in self.block_modules()]

    def block_of_parameter(self) -> dict[str, str]:
        """Maps each parameter's qualified name to the block that owns it."""
        owner = {}
        ids = {id(p): name for name, params in self.blocks() for p in params}
        for qualified, p in self.named_parameters():
            # A multi-task model's further heads (task_heads.*) are heads too.
            owner[qualified] = ids.get(id(p), self.head_name)
        return owner

    @property
    def num_classes(self) -> int:
        return self.head_layer.out_features

    @property
    def feature_dim(self) -> int:
        return self.head_layer.in_features

    def reset_head(self, num_classes: int, *, generator: torch.Generator | None = None) -> None:
        """Replaces the head with a freshly initialised one of `num_classes` outputs.

        Re-initialising (rather than keeping) the head is what transfer needs
        whenever the label set changes: old class weights are meaningless there.
        """
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        old = self.head_layer
        new = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        if generator is not None:
            with torch.no_grad():
                bound = 1.0 / old.in_features**0.5
                new.weight.uniform_(-bound, bound, generator=generator)
                new.bias.uniform_(-bound, bound, generator=generator)
        setattr(self, self.head_name, new)
        self.config = dataclasses.replace(self.config, num_classes=num_classes)

    def config_dict(self) -> dict[str, Any]:
        """The constructor config as plain JSON-able values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.config).items()}

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (no batch axis)."""
        raise NotImplementedError
