"""Adapting pulled source models to a client's own data, optionally with DP.

Python entry points take one frozen `FinetuneConfig`:
`adapt(model, target=..., config=...)` (fine-tune or search, score once on the
test split, save; its outcome's `to_run(...)` is the report), and the
lower-level `finetune(model, train=..., val=..., config=...)` and
`search(...)`. The `xfer finetune` command's body is in
`xfer.client.finetune.command`.
Names are imported lazily, so the torch-free parts (errors, the privacy
ledger) can be used without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TargetData": "xfer.client.finetune.data",
    "TensorData": "xfer.client.finetune.data",
    "load_target": "xfer.client.finetune.data",
    "DataError": "xfer.client.finetune.errors",
    "FinetuneError": "xfer.client.finetune.errors",
    "PrivacyBudgetExceededError": "xfer.client.finetune.errors",
    "PrivacyError": "xfer.client.finetune.errors",
    "PrivacyLedger": "xfer.client.finetune.ledger",
    "Metrics": "xfer.client.finetune.metrics",
    "evaluate": "xfer.client.finetune.metrics",
    "PrivacyConfig": "xfer.client.finetune.config",
    "FinetuneConfig": "xfer.client.finetune.config",
    "SearchConfig": "xfer.client.finetune.config",
    "SelfPretrainConfig": "xfer.client.finetune.config",
    "self_pretrain": "xfer.client.finetune.selfsup",
    "FinetuneOutcome": "xfer.client.finetune.pipeline",
    "adapt": "xfer.client.finetune.pipeline",
    "search": "xfer.client.finetune.search",
    "size_bucket": "xfer.client.finetune.budget",
    "get_strategy": "xfer.client.finetune.strategies",
    "list_strategies": "xfer.client.finetune.strategies",
    "register_strategy": "xfer.client.finetune.strategies",
    "FinetuneResult": "xfer.client.finetune.trainer",
    "finetune": "xfer.client.finetune.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xfer.client.finetune' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
