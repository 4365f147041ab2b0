"""The xfer client: SDK (`Client`), local cache, `xfer` CLI, and `finetune/`.

Names are imported lazily so that `import client.finetune` does not pay for
gRPC, and so that submodules can import each other without cycles.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Client": "client.sdk",
    "TlsConfig": "client.transport",
    "RetryPolicy": "client.transport",
    "ModelRef": "client.refs",
    "parse_ref": "client.refs",
    "ArtifactFormat": "client.domain",
    "DeviceKind": "client.domain",
    "LoadedModel": "client.domain",
    "ModelSummary": "client.domain",
    "ModelVersion": "client.domain",
    "PullResult": "client.domain",
    "Run": "client.domain",
    "RunPrivacy": "client.domain",
    "Leaderboard": "client.domain",
    "XferError": "client.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
