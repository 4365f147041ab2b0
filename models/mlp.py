"""A multi-layer perceptron for tabular data (or flattened images)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from xfer.models.base import XferModel
from xfer.models.config_checks import require_classes, require_positive
from xfer.models.errors import InvalidConfigError
from xfer.models.registry import register_model


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    in_features: int = 64
    hidden: tuple[int, ...] = (128, 64)
    num_classes: int = 10
    dropout: float = 0.0

    def validate(self) -> None:
        require_positive(in_features=self.in_features)
        require_classes(self.num_classes)
        if not self.hidden:
            raise InvalidConfigError("config field 'hidden' needs at least one layer width")
        for width in self.hidden:
            require_positive(hidden=width)
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@register_model("mlp", config=MLPConfig)
class MLP(XferModel):
    """MLP for tabular features: stem (first layer), one block per further hidden layer, head."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        widths = list(config.hidden)
        self.stem = self._layer(config.in_features, widths[0], config.dropout)
        self.body = nn.ModuleList(self._layer(a, b, config.dropout) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], config.num_classes)

    @staticmethod
    def _layer(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(dropout))

    def block_modules(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        named += [(f"block{i + 1}", layer) for i, layer in enumerate(self.body)]
        return named + [("head", self.head)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.flatten(1))
        for layer in self.body:
            x = layer(x)
        return x

    def input_shape(self) -> tuple[int, ...]:
        return (self.config.in_features,)
