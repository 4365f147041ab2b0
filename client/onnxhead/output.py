"""What a head fit leaves on disk: model.onnx (head replaced), card.json, metrics.json.

Each file is written to a temp file and moved into place. The card is the
source model's, with the new head's classes and label names; metrics.json
holds the exact local numbers (the report carries rounded ones).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xfer.client.onnxhead.head import LinearHead
from xfer.models.card import ModelCard, validate_card
from xfer.models.files import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
CARD_NAME = "card.json"
METRICS_NAME = "metrics.json"


@dataclasses.dataclass(frozen=True)
class HeadOutputs:
    """Paths of the written files (card None when no source card was given)."""

    onnx: Path
    card: Path | None
    metrics: Path


def head_card(source: ModelCard, *, head: LinearHead, label_names: tuple[str, ...], strategy: str) -> ModelCard:
    """The source card with the new head's classes and labels, and a note of how the head was made."""
    config = dict(source.architecture_config)
    if "num_classes" in config:
        config["num_classes"] = head.num_classes
    note = f"head replaced torch-free by {strategy} on ONNX features"
    if head.steps:
        steps = " then ".join(s.to_dict()["step"] for s in head.steps)
        note += (
            f" (features: {steps}, then a linear layer; only model.onnx holds this head, the "
            f"architecture's own head is a plain linear layer)"
        )
    card = dataclasses.replace(
        source,
        architecture_config=config,
        num_classes=head.num_classes,
        label_names=label_names,
        description=(f"{source.description}; " if source.description else "") + note,
    )
    validate_card(card)
    return card


def write_outputs(
    *,
    out_dir: str | Path,
    write_onnx: Callable[[Path], Any],
    card: ModelCard | None,
    metrics: Callable[[], dict[str, Any]],
) -> HeadOutputs:
    """Writes model.onnx (through `write_onnx(path)`), then card.json (if a card is given), then metrics.json.

    `metrics()` is called after the model is written, so it can include how the model was checked.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = HeadOutputs(out / ONNX_NAME, out / CARD_NAME if card is not None else None, out / METRICS_NAME)
    write_onnx(paths.onnx)
    if card is not None and paths.card is not None:
        data = card.to_dict()
        data["artifacts"] = {
            "onnx": {"file": ONNX_NAME, "sha256": sha256_file(paths.onnx), "size_bytes": paths.onnx.stat().st_size}
        }
        write_json_atomic(paths.card, data)
    write_json_atomic(paths.metrics, metrics())
    log.info("wrote %s", ", ".join(str(p) for p in dataclasses.astuple(paths) if p is not None))
    return paths
