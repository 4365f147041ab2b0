"""The folder an operator registers: `model.safetensors`, `model.onnx` and `card.json`.

Written by `python -m xfer.models.train` and `python -m xfer.models.importer`
alike, every file atomically; the card lists each artifact's sha256 and size.
"""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path
from typing import Any

import torch

from xfer.models.base import XferModel
from xfer.models.card import ModelCard, card_for_model, validate_card
from xfer.models.export import ParityReport, export_onnx
from xfer.models.files import sha256_file, write_json_atomic
from xfer.models.weights import save_safetensors

SAFETENSORS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
CARD_NAME = "card.json"


def write_model_folder(model: XferModel, out_dir: str | Path, **card_fields: Any) -> tuple[ModelCard, ParityReport]:
    """Writes weights, the ONNX export (parity-checked against torch) and the card; returns the card and parity."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, out / SAFETENSORS_NAME, metadata={"architecture": model.architecture})
    parity = export_onnx(model, out / ONNX_NAME)
    versions = {"torch": torch.__version__.split("+")[0], "python": platform.python_version()}
    card = card_for_model(
        model, framework_versions={**versions, **card_fields.pop("framework_versions", {})}, **card_fields
    )
    validate_card(card)
    card_file = card.to_dict()
    card_file["artifacts"] = {
        name: {"file": filename, "sha256": sha256_file(out / filename), "size_bytes": (out / filename).stat().st_size}
        for name, filename in (("safetensors", SAFETENSORS_NAME), ("onnx", ONNX_NAME))
    }
    card_file["create_time"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_json_atomic(out / CARD_NAME, card_file)
    return card, parity
