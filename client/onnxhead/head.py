"""A fitted head as plain numpy data: feature steps, then one linear map to the logits.

Every head this package fits is `logits = W · t(features) + b`, where `t` is
a short chain of steps: `L2Normalize` (divide by the L2 norm, floored at
`eps`) and `Center` (subtract a vector). The same description is applied
here in numpy (`LinearHead.logits`) and written as ONNX nodes by
`xfer.client.onnxhead.graph`, which then checks that the two agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: Floor of the L2 norm a feature vector is divided by; an all-zero vector stays zero.
NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True, eq=False)
class L2Normalize:
    """x / max(‖x‖₂, eps), row by row."""

    eps: float = NORM_EPS

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The step in numpy (float64)."""
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        return x / np.maximum(norms, self.eps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"step": "l2_normalize", "eps": self.eps}


@dataclasses.dataclass(frozen=True, eq=False)
class Center:
    """x − mean."""

    mean: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The step in numpy (float64)."""
        return x - self.mean[None, :]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (the vector's size only: it is part of the model, not of the report)."""
        return {"step": "center", "dim": int(self.mean.shape[0])}


Step = L2Normalize | Center


@dataclasses.dataclass(frozen=True, eq=False)
class LinearHead:
    """logits = weight · steps(features) + bias; weight (K, D), bias (K,), float64."""

    weight: np.ndarray
    bias: np.ndarray
    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weight, dtype=np.float64), np.asarray(self.bias, dtype=np.float64)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"head weight must be (K, D) and bias (K,), got {w.shape} and {b.shape}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)

    @property
    def num_classes(self) -> int:
        """K, the number of logits."""
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        """D, the feature dimension the head reads."""
        return int(self.weight.shape[1])

    def transform(self, features: np.ndarray) -> np.ndarray:
        """The features after the steps (float64)."""
        z = np.asarray(features, dtype=np.float64)
        for step in self.steps:
            z = step.apply(z)
        return z

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits (n, K), float64."""
        return self.transform(features) @ self.weight.T + self.bias[None, :]

    def is_finite(self) -> bool:
        """Whether every parameter is a finite number."""
        arrays = [self.weight, self.bias] + [s.mean for s in self.steps if isinstance(s, Center)]
        return all(bool(np.all(np.isfinite(a))) for a in arrays)

    def describe(self) -> list[dict[str, Any]]:
        """JSON-able description of the computation (no parameter values)."""
        return [s.to_dict() for s in self.steps] + [
            {"step": "linear", "in_features": self.in_features, "num_classes": self.num_classes}
        ]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
