"""Adapting pulled source models to a client's own data, optionally with DP.

Python entry point: `finetune(model, *, train, val, strategy, privacy=None, ...)`;
the `xfer finetune` command's body is in `client.finetune.command`.
"""

from xfer.client.finetune.data import TargetData, TensorData, load_target
from xfer.client.finetune.errors import (
    DataError,
    FinetuneError,
    PrivacyBudgetExceededError,
    PrivacyError,
)
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate
from xfer.client.finetune.privacy import PrivacyConfig
from xfer.client.finetune.strategies import get_strategy, list_strategies, register_strategy
from xfer.client.finetune.trainer import FinetuneResult, finetune

__all__ = [
    "DataError",
    "FinetuneError",
    "FinetuneResult",
    "Metrics",
    "PrivacyBudgetExceededError",
    "PrivacyConfig",
    "PrivacyError",
    "PrivacyLedger",
    "TargetData",
    "TensorData",
    "evaluate",
    "finetune",
    "get_strategy",
    "list_strategies",
    "load_target",
    "register_strategy",
]
