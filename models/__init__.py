"""The model zoo: an explicit architecture registry with one contract.

`import xfer.models` is light: the card (`xfer.models.card`) is plain data,
and the torch-backed names below are imported on first use, so an edge
client that only pulls and verifies never loads torch. Built-in
architectures register themselves on the first registry lookup.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelCard": "xfer.models.card",
    "validate_card": "xfer.models.card",
    "card_for_model": "xfer.models.card",
    "XferModel": "xfer.models.base",
    "create_model": "xfer.models.registry",
    "get_entry": "xfer.models.registry",
    "list_models": "xfer.models.registry",
    "register_model": "xfer.models.registry",
    "model_from_card": "xfer.models.weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xfer.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
