"""Choosing a source before pulling it: rank candidates by transferability scores on ONNX features.

`xfer rank DATA --models a,b,c` pulls only each candidate's ONNX artifact,
runs its `features` output over the client's labelled training split with
onnxruntime, and scores it with LogME (You et al., ICML 2021) and a
leave-one-out k-NN accuracy; only the scores may be reported. numpy and
onnxruntime only (no torch). Names are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "logme": "xfer.client.rank.logme",
    "LogMEFit": "xfer.client.rank.logme",
    "knn_accuracy": "xfer.client.rank.knn",
    "SourceScore": "xfer.client.rank.scores",
    "score_features": "xfer.client.rank.scores",
    "RankOutcome": "xfer.client.rank.outcome",
    "RankError": "xfer.client.rank.errors",
    "rank_candidates": "xfer.client.rank.command",
    "Candidate": "xfer.client.rank.outcome",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xfer.client.rank' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
