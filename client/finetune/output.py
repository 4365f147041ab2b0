"""What a fine-tuning run leaves on disk: weights, ONNX, metrics.json, card.json.

Every file is written to a temp file and moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from xfer.models.base import XferModel
from xfer.models.card import ModelCard, card_for_model, validate_card
from xfer.models.export import ParityReport, export_onnx
from xfer.models.files import write_json_atomic
from xfer.models.weights import save_safetensors

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
METRICS_NAME = "metrics.json"
CARD_NAME = "card.json"


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    weights: Path
    onnx: Path
    metrics: Path
    card: Path


def finetuned_card(
    model: XferModel, *, source: ModelCard | None, label_names: tuple[str, ...], strategy: str
) -> ModelCard:
    """The card of the adapted model: the source's, with the new head and labels."""
    note = f"fine-tuned with strategy {strategy}"
    if source is None:
        card = card_for_model(model, label_names=label_names, description=note)
    else:
        card = dataclasses.replace(
            source,
            architecture_config=model.config_dict(),
            num_classes=model.num_classes,
            label_names=label_names,
            description=(f"{source.description}; " if source.description else "") + note,
        )
    validate_card(card)
    return card


def save_outputs(
    *,
    model: XferModel,
    out_dir: str | os.PathLike,
    card: ModelCard | None,
    label_names: tuple[str, ...],
    strategy: str,
    metrics: dict[str, Any],
) -> tuple[OutputPaths, ParityReport]:
    """Writes weights (safetensors), ONNX (parity-checked with onnxruntime), metrics.json and card.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = OutputPaths(out / WEIGHTS_NAME, out / ONNX_NAME, out / METRICS_NAME, out / CARD_NAME)
    model = model.cpu().eval()
    save_safetensors(model, paths.weights, metadata={"strategy": strategy})
    parity = export_onnx(model, paths.onnx)
    metrics = {**metrics, "onnx_parity": dataclasses.asdict(parity)}
    write_json_atomic(paths.metrics, metrics)
    new_card = finetuned_card(model, source=card, label_names=label_names, strategy=strategy)
    write_json_atomic(paths.card, new_card.to_dict())
    log.info("wrote %s", ", ".join(str(p) for p in dataclasses.astuple(paths)))
    return paths, parity
