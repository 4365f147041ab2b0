"""Torch-free adaptation of a pulled ONNX model: a new head on its `features`, optionally with DP.

Needs only numpy, onnx and onnxruntime (`pip install xfer[onnx]`). Entry
point: `fit_head(model_path, *, train, strategy="logreg"|"prototype",
privacy=None, ...)`; the `xfer fit-head` command's body is in
`xfer.client.onnxhead.command`. Names are imported lazily, so importing
the package loads neither onnx nor onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "fit_head": "xfer.client.onnxhead.api",
    "HeadFitResult": "xfer.client.onnxhead.api",
    "HeadConfig": "xfer.client.onnxhead.heads",
    "list_heads": "xfer.client.onnxhead.heads",
    "register_head": "xfer.client.onnxhead.heads",
    "PrivacyConfig": "xfer.client.onnxhead.private",
    "NoisyGDConfig": "xfer.client.onnxhead.private",
    "SessionOptions": "xfer.client.onnxhead.features",
    "extract_features": "xfer.client.onnxhead.features",
    "LinearHead": "xfer.client.onnxhead.head",
    "Metrics": "xfer.client.onnxhead.metrics",
    "prepare_examples": "xfer.client.onnxhead.data",
    "HeadError": "xfer.client.onnxhead.errors",
    "HeadDataError": "xfer.client.onnxhead.errors",
    "HeadPrivacyError": "xfer.client.onnxhead.errors",
    "HeadVerificationError": "xfer.client.onnxhead.errors",
    "OnnxModelError": "xfer.client.onnxhead.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xfer.client.onnxhead' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
