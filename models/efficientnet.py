"""EfficientNet-Lite (Tan & Le 2019; the Lite variants of TensorFlow's EfficientNet for edge devices).

The structure and parameter names follow timm's `efficientnet_lite0`
(`conv_stem`, `bn1`, `<stage>.<block>.{conv_pw, bn1, conv_dw, bn2,
conv_pwl, bn3}`, `conv_head`, `bn2`; the stages are `stages`, not
`blocks`, which names the model contract's parameter groups), which
cannot be used itself here:
timm imports torchvision, and no torchvision wheel imports beside the
pinned CPU build of torch. Lite differs from EfficientNet-B by ReLU6
instead of swish, no squeeze-and-excitation, and a stem and head that do
not scale with width.

Two choices make the pretrained TensorFlow weights work unchanged:

- convolutions pad like TensorFlow's "SAME" (asymmetric for stride 2:
  the extra row and column go to the bottom and right);
- batch normalisation keeps the pretrained statistics frozen, folded
  into a per-channel affine map (`ChannelAffine`) with trainable scale
  and shift: fine-tuning on a few examples, or under DP-SGD, cannot
  estimate batch statistics (Opacus forbids them, since they mix
  examples), and frozen statistics are what detection models fine-tune
  with for the same reason (torchvision's FrozenBatchNorm2d).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from xfer.models.base import XferModel
from xfer.models.config_checks import require_classes, require_positive
from xfer.models.errors import InvalidConfigError
from xfer.models.registry import register_model

#: (block type, kernel, stride, expansion, output channels, repeats) per stage of EfficientNet-B0/Lite0.
STAGES = (
    ("ds", 3, 1, 1, 16, 1),
    ("ir", 3, 2, 6, 24, 2),
    ("ir", 5, 2, 6, 40, 2),
    ("ir", 3, 2, 6, 80, 3),
    ("ir", 5, 1, 6, 112, 3),
    ("ir", 5, 2, 6, 192, 4),
    ("ir", 3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclasses.dataclass(frozen=True)
class EfficientNetLiteConfig:
    image_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    #: Lite0 is (1.0, 1.0); Lite1-4 scale depth and width (not the stem, the head or the first and last stage).
    width_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    #: Dropout before the classifier (Lite0 trained with 0.2).
    drop_rate: float = 0.2
    #: Stochastic depth on the residual branches, growing linearly with depth to this rate.
    drop_path_rate: float = 0.0

    def validate(self) -> None:
        require_positive(
            image_size=self.image_size,
            in_channels=self.in_channels,
            width_multiplier=self.width_multiplier,
            depth_multiplier=self.depth_multiplier,
        )
        require_classes(self.num_classes)
        if self.image_size < 32:
            raise InvalidConfigError(
                f"image_size must be at least 32 (the network downsamples 32x), got {self.image_size}"
            )
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InvalidConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    """Channels scaled by `multiplier`, rounded to a multiple of `divisor`, never more than 10% below."""
    if multiplier == 1.0:
        return channels
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def same_padding(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Pads `x` as TensorFlow's 'SAME' does for `conv` (the odd pixel goes after)."""
    pads = []
    for size, k, s, d in zip(
        reversed(x.shape[-2:]), reversed(conv.kernel_size), reversed(conv.stride), reversed(conv.dilation)
    ):
        total = max((math.ceil(int(size) / s) - 1) * s + (k - 1) * d + 1 - int(size), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class ChannelAffine(nn.Module):
    """y = weight * x + bias per channel: batch normalisation with its statistics folded in.

    A pretrained BatchNorm layer in eval mode is exactly this map (weight = gamma / sqrt(var + eps),
    bias = beta - mean * weight); the importer folds the statistics in, so the layer has no buffers and
    Opacus can compute per-example gradients of its (trainable) scale and shift.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zeroes whole residual branches per example, scaling the rest by 1 / keep."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
    return x * mask / keep


class DepthwiseSeparable(nn.Module):
    """Depthwise kxk conv -> BN -> ReLU6 -> pointwise 1x1 conv -> BN (+ skip when shapes allow)."""

    def __init__(self, c_in: int, c_out: int, *, kernel: int, stride: int, drop_path_rate: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c_in, c_in, kernel, stride=stride, groups=c_in, bias=False)
        self.bn1 = ChannelAffine(c_in)
        self.conv_pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = ChannelAffine(c_out)
        self.act = nn.ReLU6()
        self.skip = stride == 1 and c_in == c_out
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv_dw(same_padding(x, self.conv_dw))))
        y = self.bn2(self.conv_pw(y))
        return x + drop_path(y, self.drop_path_rate, self.training) if self.skip else y


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> BN -> ReLU6 -> depthwise kxk -> BN -> ReLU6 -> 1x1 project -> BN (+ skip)."""

    def __init__(
        self, c_in: int, c_out: int, *, kernel: int, stride: int, expansion: int, drop_path_rate: float
    ) -> None:
        super().__init__()
        mid = c_in * expansion
        self.conv_pw = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = ChannelAffine(mid)
        self.conv_dw = nn.Conv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self.bn2 = ChannelAffine(mid)
        self.conv_pwl = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = ChannelAffine(c_out)
        self.act = nn.ReLU6()
        self.skip = stride == 1 and c_in == c_out
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv_pw(x)))
        y = self.act(self.bn2(self.conv_dw(same_padding(y, self.conv_dw))))
        y = self.bn3(self.conv_pwl(y))
        return x + drop_path(y, self.drop_path_rate, self.training) if self.skip else y


def _stage_plan(config: EfficientNetLiteConfig) -> list[list[tuple[str, int, int, int, int, int]]]:
    """Per stage, per block: (type, c_in, c_out, kernel, stride, expansion)."""
    plan, c_in = [], STEM_CHANNELS
    last = len(STAGES) - 1
    for i, (kind, kernel, stride, expansion, channels, repeats) in enumerate(STAGES):
        # Lite keeps the first and last stage's depth fixed, like its stem and head.
        n = repeats if i in (0, last) else math.ceil(repeats * config.depth_multiplier)
        c_out = round_channels(channels, config.width_multiplier)
        plan.append(
            [(kind, c_in if j == 0 else c_out, c_out, kernel, stride if j == 0 else 1, expansion) for j in range(n)]
        )
        c_in = c_out
    return plan


@register_model("efficientnet_lite", config=EfficientNetLiteConfig)
class EfficientNetLite(XferModel):
    """EfficientNet-Lite: stem, seven MBConv stages, a 1x1 conv to 1280 channels (top), pooled features, head."""

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__(config)
        self.conv_stem = nn.Conv2d(config.in_channels, STEM_CHANNELS, 3, stride=2, bias=False)
        self.bn1 = ChannelAffine(STEM_CHANNELS)
        plan = _stage_plan(config)
        total = sum(len(stage) for stage in plan)
        stages, index = [], 0
        for stage in plan:
            blocks: list[nn.Module] = []
            for kind, c_in, c_out, kernel, stride, expansion in stage:
                rate = config.drop_path_rate * index / total
                if kind == "ds":
                    blocks.append(DepthwiseSeparable(c_in, c_out, kernel=kernel, stride=stride, drop_path_rate=rate))
                else:
                    blocks.append(
                        InvertedResidual(
                            c_in, c_out, kernel=kernel, stride=stride, expansion=expansion, drop_path_rate=rate
                        )
                    )
                index += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(plan[-1][-1][2], HEAD_CHANNELS, 1, bias=False)
        self.bn2 = ChannelAffine(HEAD_CHANNELS)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.drop_rate)
        self.head = nn.Linear(HEAD_CHANNELS, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As timm and the TensorFlow original: conv weights normal with std sqrt(2 / fan_out).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.weight.shape[0])
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def block_modules(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", nn.ModuleList([self.conv_stem, self.bn1]))]
        named += [(f"stage{i + 1}", stage) for i, stage in enumerate(self.stages)]
        named.append(("top", nn.ModuleList([self.conv_head, self.bn2])))
        return named + [("head", self.head)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv_stem(same_padding(x, self.conv_stem))))
        x = self.stages(x)
        x = self.act(self.bn2(self.conv_head(x)))
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))

    def input_shape(self) -> tuple[int, ...]:
        return (self.config.in_channels, self.config.image_size, self.config.image_size)
