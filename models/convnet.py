"""A small ResNet-style CNN with GroupNorm.

GroupNorm rather than BatchNorm because per-example gradients (Opacus
DP-SGD) are undefined when a layer mixes examples within a batch.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from xfer.models.base import XferModel
from xfer.models.config_checks import require_classes, require_positive
from xfer.models.errors import InvalidConfigError
from xfer.models.registry import register_model


@dataclasses.dataclass(frozen=True)
class ConvNetConfig:
    in_channels: int = 1
    image_size: int = 8
    width: int = 16
    depth: int = 3
    num_classes: int = 10
    groups: int = 4
    #: 2 halves the resolution in the stem: for 28x28 images, four times less compute for the same accuracy class.
    stem_stride: int = 1

    def validate(self) -> None:
        require_positive(
            in_channels=self.in_channels,
            image_size=self.image_size,
            width=self.width,
            depth=self.depth,
            groups=self.groups,
        )
        if self.stem_stride not in (1, 2):
            raise InvalidConfigError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        require_classes(self.num_classes)
        if self.width % self.groups:
            raise InvalidConfigError(f"width {self.width} must be divisible by groups {self.groups}")


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip; `stride` 2 halves the resolution and doubles channels."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.act = nn.ReLU()
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(groups, c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.skip(x))


@register_model("convnet", config=ConvNetConfig)
class ConvNet(XferModel):
    """ResNet-style CNN: stem conv, `depth` residual blocks (downsampling after the first), head."""

    def __init__(self, config: ConvNetConfig) -> None:
        super().__init__(config)
        w, g = config.width, config.groups
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, stride=config.stem_stride, padding=1, bias=False),
            nn.GroupNorm(g, w),
            nn.ReLU(),
        )
        body, c, size = [], w, (config.image_size + config.stem_stride - 1) // config.stem_stride
        for i in range(config.depth):
            downsample = i > 0 and size >= 4
            c_out = c * 2 if downsample else c
            body.append(ResidualBlock(c, c_out, stride=2 if downsample else 1, groups=g))
            c, size = c_out, (size + 1) // 2 if downsample else size
        self.body = nn.ModuleList(body)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, config.num_classes)

    def block_modules(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        named += [(f"block{i + 1}", block) for i, block in enumerate(self.body)]
        return named + [("head", self.head)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.body:
            x = block(x)
        return self.pool(x).flatten(1)

    def input_shape(self) -> tuple[int, ...]:
        return (self.config.in_channels, self.config.image_size, self.config.image_size)
