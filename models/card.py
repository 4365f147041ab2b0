"""The model card: everything a client needs to rebuild a source model.

Stored with every version, shipped over the wire as `xfer.v1.ModelCard`
and on disk as `card.json` beside the artifacts `python -m xfer.models.train`
writes. The card is plain data and imports no torch: `validate_card` checks
its fields; whether it agrees with its architecture is checked when a module
is built from it (`xfer.models.weights.model_from_card`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from xfer.models.audit.record import PrivacyAudit
from xfer.models.errors import InvalidCardError

MAX_TEXT = 4096
MAX_LABEL = 128
# Keys card.json may carry beside the card's own fields.
FILE_ONLY_KEYS = ("artifacts", "create_time")


@dataclasses.dataclass(frozen=True)
class ModelCard:
    architecture: str
    architecture_config: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int
    blocks: tuple[str, ...]
    head: str = "head"
    input_dtype: str = "float32"
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()
    preprocessing: str = ""
    label_names: tuple[str, ...] = ()
    source_task: str = ""
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    license: str = "unspecified"
    framework_versions: dict[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""
    #: What a privacy audit measured against these weights (xfer.models.audit), or None.
    audit: PrivacyAudit | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); no `audit` key without an audit."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        if data["audit"] is None:
            # A card without an audit keeps the form (and the signed manifest) it had before audits existed.
            del data["audit"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        """Builds a card from a dict such as card.json, rejecting unknown keys."""
        if not isinstance(data, dict):
            raise InvalidCardError("a model card must be a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - set(FILE_ONLY_KEYS))
        if unknown:
            raise InvalidCardError(f"unknown model card field(s): {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                         and f.name not in data)
        if missing:
            raise InvalidCardError(f"model card is missing required field(s): {missing}")
        values = {k: v for k, v in data.items() if k in fields}
        try:
            for key in ("input_shape", "blocks", "input_mean", "input_std", "label_names"):
                if key in values:
                    values[key] = tuple(values[key])
            values["architecture_config"] = dict(values["architecture_config"])
            values["framework_versions"] = dict(values.get("framework_versions") or {})
        except (TypeError, ValueError) as exc:
            raise InvalidCardError(f"malformed model card: {exc}") from None
        if values.get("audit") is not None:
            values["audit"] = PrivacyAudit.from_dict(values["audit"])
        return cls(**values)

    @property
    def private(self) -> bool:
        """Whether the source model was trained with differential privacy."""
        return self.dp_epsilon is not None


def _text(name: str, value: Any, limit: int = MAX_TEXT) -> None:
    if not isinstance(value, str):
        raise InvalidCardError(f"card field {name!r} must be a string")
    if len(value) > limit:
        raise InvalidCardError(f"card field {name!r} is longer than {limit} characters")


def validate_card(card: ModelCard) -> None:
    """Checks every field of the card as plain data (no torch, no architecture lookup).

    Raises InvalidCardError with a message that names the field.
    """
    if not isinstance(card.architecture, str) or not card.architecture:
        raise InvalidCardError("card field 'architecture' must name an architecture, e.g. 'convnet'")
    _text("architecture", card.architecture, 64)
    if not isinstance(card.architecture_config, dict):
        raise InvalidCardError("card field 'architecture_config' must be an object")
    if not card.input_shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                       for d in card.input_shape):
        raise InvalidCardError(f"card input_shape must be positive integers, got {list(card.input_shape)}")
    if not isinstance(card.num_classes, int) or isinstance(card.num_classes, bool) or card.num_classes < 1:
        raise InvalidCardError(f"card num_classes must be a positive integer, got {card.num_classes!r}")
    if not card.blocks or card.head not in card.blocks:
        raise InvalidCardError(f"card head {card.head!r} must be one of its blocks {list(card.blocks)}")
    if card.input_dtype != "float32":
        raise InvalidCardError(f"input_dtype must be 'float32', got {card.input_dtype!r}")
    if len(card.input_mean) != len(card.input_std):
        raise InvalidCardError("input_mean and input_std must have the same length")
    if card.input_mean and len(card.input_mean) not in (1, card.input_shape[0]):
        raise InvalidCardError("input_mean needs one value, or one per channel")
    for value in card.input_mean + card.input_std:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidCardError("input_mean and input_std must be finite numbers")
    if any(s <= 0 for s in card.input_std):
        raise InvalidCardError("input_std values must be positive")
    if card.label_names and len(card.label_names) != card.num_classes:
        raise InvalidCardError(f"{len(card.label_names)} label_names for {card.num_classes} classes")
    for label in card.label_names:
        _text("label_names", label, MAX_LABEL)
    for name in ("preprocessing", "source_task", "license", "description"):
        _text(name, getattr(card, name))
    if (card.dp_epsilon is None) != (card.dp_delta is None):
        raise InvalidCardError("dp_epsilon and dp_delta must be given together")
    if card.dp_epsilon is not None:
        if not (math.isfinite(card.dp_epsilon) and card.dp_epsilon > 0):
            raise InvalidCardError(f"dp_epsilon must be positive and finite, got {card.dp_epsilon}")
        if not 0 < card.dp_delta < 1:
            raise InvalidCardError(f"dp_delta must be in (0, 1), got {card.dp_delta}")
    if len(card.framework_versions) > 16:
        raise InvalidCardError("at most 16 framework_versions")
    for key, value in card.framework_versions.items():
        _text("framework_versions", key, 64)
        _text("framework_versions", value, 64)
    if card.audit is not None:
        if not isinstance(card.audit, PrivacyAudit):
            raise InvalidCardError("card field 'audit' must be a PrivacyAudit")
        card.audit.validate()


def card_for_model(model: Any, **fields: Any) -> ModelCard:
    """A card describing `model` (architecture, config, blocks, shapes) plus `fields`."""
    return ModelCard(
        architecture=model.architecture,
        architecture_config=model.config_dict(),
        input_shape=model.input_shape(),
        num_classes=model.num_classes,
        blocks=tuple(model.block_names()),
        head=model.head_name,
        **fields,
    )
