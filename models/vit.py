"""A tiny Vision Transformer.

Attention is written with plain Linear/LayerNorm layers, and the class token
and position table are Embeddings, so every parameter lives in a layer that
Opacus computes per-example gradients for, without custom grad samplers.
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
class ViTConfig:
    in_channels: int = 1
    image_size: int = 8
    patch_size: int = 2
    dim: int = 32
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 2
    num_classes: int = 10

    def validate(self) -> None:
        require_positive(
            in_channels=self.in_channels,
            image_size=self.image_size,
            patch_size=self.patch_size,
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
        )
        require_classes(self.num_classes)
        if self.image_size % self.patch_size:
            raise InvalidConfigError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise InvalidConfigError(f"dim {self.dim} must be divisible by heads {self.heads}")


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbedding(nn.Module):
    """Patches -> tokens, plus a class token and learned positions."""

    token_ids: torch.Tensor

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(config.in_channels, config.dim, config.patch_size, stride=config.patch_size)
        num_tokens = (config.image_size // config.patch_size) ** 2 + 1
        self.cls_token = nn.Embedding(1, config.dim)
        self.positions = nn.Embedding(num_tokens, config.dim)
        self.register_buffer("token_ids", torch.arange(num_tokens), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patchify(x).flatten(2).transpose(1, 2)
        # Ids with a batch axis: Opacus computes per-example gradients of an Embedding from its
        # input's batch dimension, so a shared (unbatched) lookup would break DP training.
        ids = self.token_ids.expand(x.shape[0], -1)
        cls = self.cls_token(ids[:, :1])
        return torch.cat([cls, tokens], dim=1) + self.positions(ids)


@register_model("vit_tiny", config=ViTConfig)
class ViTTiny(XferModel):
    """Tiny ViT: stem (patch + position embedding), one block per encoder layer, head on the class token."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.stem = PatchEmbedding(config)
        self.body = nn.ModuleList(EncoderBlock(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)

    def block_modules(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        named += [(f"block{i + 1}", block) for i, block in enumerate(self.body)]
        # The final norm belongs to the last block so that every parameter has one owner.
        named[-1] = (named[-1][0], nn.ModuleList([named[-1][1], self.norm]))
        return named + [("head", self.head)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.body:
            x = block(x)
        return self.norm(x)[:, 0]

    def input_shape(self) -> tuple[int, ...]:
        return (self.config.in_channels, self.config.image_size, self.config.image_size)
