"""The xfer client: SDK (`Client`), local cache, `xfer` CLI, and `finetune/`.

Names are imported lazily so that `import xfer.client.finetune` does not pay for
gRPC, and so that submodules can import each other without cycles.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Client": "xfer.client.sdk",
    "TlsConfig": "xfer.client.transport",
    "RetryPolicy": "xfer.client.transport",
    "ModelRef": "xfer.client.refs",
    "parse_ref": "xfer.client.refs",
    "ArtifactFormat": "xfer.client.domain",
    "DeviceKind": "xfer.client.domain",
    "LoadedModel": "xfer.client.domain",
    "ModelSummary": "xfer.client.domain",
    "ModelVersion": "xfer.client.domain",
    "PullResult": "xfer.client.domain",
    "Run": "xfer.client.domain",
    "RunPrivacy": "xfer.client.domain",
    "Leaderboard": "xfer.client.domain",
    "XferError": "xfer.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xfer.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
