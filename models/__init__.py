"""The model zoo: an explicit architecture registry with one contract.

Importing `models` registers every built-in architecture.
"""

from xfer.models import convnet, mlp, vit  # noqa: F401  (registration side effects)
from xfer.models.base import XferModel
from xfer.models.card import ModelCard, card_for_model, validate_card
from xfer.models.registry import create_model, get_entry, list_models, register_model

__all__ = [
    "ModelCard",
    "XferModel",
    "card_for_model",
    "create_model",
    "get_entry",
    "list_models",
    "register_model",
    "validate_card",
]
