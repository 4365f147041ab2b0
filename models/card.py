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
import re
from typing import Any

from xfer.models.audit.record import PrivacyAudit
from xfer.models.errors import InvalidCardError

MAX_TEXT = 4096
MAX_LABEL = 128
# Keys card.json may carry beside the card's own fields.
FILE_ONLY_KEYS = ("artifacts", "create_time")
#: A task head's name is a module key in the state dict (`task_heads.<name>.weight`): no dots, short.
TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_TASKS = 16
#: How a source was trained (`training_method`); "" when the card does not say.
TRAINING_METHOD = re.compile(r"[a-z][a-z0-9_-]{0,31}")
SETTING_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_SETTINGS = 32
#: Card fields added after signed manifests: left out of the dict form while empty (or None), so a card
#: without them keeps the form (and the signed manifest bytes) it had before them.
OMITTED_WHEN_EMPTY = ("tasks", "training_method", "training_settings", "audit")


@dataclasses.dataclass(frozen=True)
class TaskHead:
    """One classification head of a multi-task source: its name, label set and training loss weight.

    A card's `tasks` lists every head; the first is the architecture's own head
    (its classes are the card's `num_classes`/`label_names`), the others are
    stored as `task_heads.<name>` beside it in the weights.
    """

    name: str
    num_classes: int
    label_names: tuple[str, ...] = ()
    loss_weight: float = 1.0

    @classmethod
    def from_dict(cls, data: Any) -> TaskHead:
        """A task head from its card.json form, rejecting unknown keys."""
        if not isinstance(data, dict):
            raise InvalidCardError("every entry of card field 'tasks' must be an object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise InvalidCardError(f"unknown task head field(s): {unknown}")
        if "name" not in data or "num_classes" not in data:
            raise InvalidCardError("a task head needs 'name' and 'num_classes'")
        try:
            values = dict(data)
            values["label_names"] = tuple(values.get("label_names") or ())
            weight = values.get("loss_weight", 1.0)
            if isinstance(weight, int) and not isinstance(weight, bool):
                values["loss_weight"] = float(weight)  # JSON and Struct may drop the ".0"
        except TypeError as exc:
            raise InvalidCardError(f"malformed task head: {exc}") from None
        return cls(**values)


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
    #: Multi-task sources: every head, the architecture's own first (empty for a single-head model).
    tasks: tuple[TaskHead, ...] = ()
    #: How the source was trained, e.g. "supervised", "multitask", "protonet", "fomaml", "reptile".
    training_method: str = ""
    #: The method's settings as short strings (ways, shots, episodes, inner steps, task weights, ...).
    training_settings: dict[str, str] = dataclasses.field(default_factory=dict)
    #: What a privacy audit measured against these weights (xfer.models.audit), or None.
    audit: PrivacyAudit | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); the optional fields of `OMITTED_WHEN_EMPTY` only when set."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        # A card without them keeps the form (and the signed manifest) it had before these fields existed.
        for key in OMITTED_WHEN_EMPTY:
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Builds a card from a dict such as card.json, rejecting unknown keys."""
        if not isinstance(data, dict):
            raise InvalidCardError("a model card must be a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - set(FILE_ONLY_KEYS))
        if unknown:
            raise InvalidCardError(f"unknown model card field(s): {unknown}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
        )
        if missing:
            raise InvalidCardError(f"model card is missing required field(s): {missing}")
        values = {k: v for k, v in data.items() if k in fields}
        try:
            for key in ("input_shape", "blocks", "input_mean", "input_std", "label_names"):
                if key in values:
                    values[key] = tuple(values[key])
            values["architecture_config"] = dict(values["architecture_config"])
            values["framework_versions"] = dict(values.get("framework_versions") or {})
            values["training_settings"] = dict(values.get("training_settings") or {})
        except (TypeError, ValueError) as exc:
            raise InvalidCardError(f"malformed model card: {exc}") from None
        if not isinstance(values.get("tasks") or [], (list, tuple)):
            raise InvalidCardError("card field 'tasks' must be a list of task heads")
        values["tasks"] = tuple(TaskHead.from_dict(t) for t in values.get("tasks") or ())
        if values.get("audit") is not None:
            values["audit"] = PrivacyAudit.from_dict(values["audit"])
        return cls(**values)

    @property
    def private(self) -> bool:
        """Whether the source model was trained with differential privacy."""
        return self.dp_epsilon is not None

    def task(self, name: str) -> TaskHead:
        """The head called `name`; raises InvalidCardError listing the card's heads if there is none."""
        for task in self.tasks:
            if task.name == name:
                return task
        heads = ", ".join(t.name for t in self.tasks) or "none: a single-head model"
        raise InvalidCardError(f"the model has no head {name!r}; its heads: {heads}")


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
    if not card.input_shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in card.input_shape
    ):
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
        if card.dp_delta is None or not 0 < card.dp_delta < 1:
            raise InvalidCardError(f"dp_delta must be in (0, 1), got {card.dp_delta}")
    if len(card.framework_versions) > 16:
        raise InvalidCardError("at most 16 framework_versions")
    for key, version in card.framework_versions.items():
        _text("framework_versions", key, 64)
        _text("framework_versions", version, 64)
    if card.audit is not None:
        if not isinstance(card.audit, PrivacyAudit):
            raise InvalidCardError("card field 'audit' must be a PrivacyAudit")
        card.audit.validate()
    _validate_tasks(card)
    _validate_training(card)


def _validate_tasks(card: ModelCard) -> None:
    if not card.tasks:
        return
    if len(card.tasks) < 2 or len(card.tasks) > MAX_TASKS:
        raise InvalidCardError(
            f"card field 'tasks' lists every head of a multi-task model: 2 to {MAX_TASKS} "
            f"heads, got {len(card.tasks)} (leave it empty for a single-head model)"
        )
    names = [t.name if isinstance(t, TaskHead) else None for t in card.tasks]
    if any(n is None for n in names):
        raise InvalidCardError("card field 'tasks' must hold task heads")
    if len(set(names)) != len(names):
        raise InvalidCardError(f"task head names must be distinct, got {names}")
    for task in card.tasks:
        if not isinstance(task.name, str) or not TASK_NAME.fullmatch(task.name):
            raise InvalidCardError(f"task head name {task.name!r} must match ^[a-z][a-z0-9_]{{0,31}}$")
        if isinstance(task.num_classes, bool) or not isinstance(task.num_classes, int) or task.num_classes < 2:
            raise InvalidCardError(
                f"task head {task.name!r}: num_classes must be an integer >= 2, got {task.num_classes!r}"
            )
        if task.label_names and len(task.label_names) != task.num_classes:
            raise InvalidCardError(
                f"task head {task.name!r}: {len(task.label_names)} label_names for {task.num_classes} classes"
            )
        for label in task.label_names:
            _text("tasks.label_names", label, MAX_LABEL)
        if (
            isinstance(task.loss_weight, bool)
            or not isinstance(task.loss_weight, (int, float))
            or not math.isfinite(task.loss_weight)
            or task.loss_weight < 0
        ):
            raise InvalidCardError(
                f"task head {task.name!r}: loss_weight must be a finite number >= 0, got {task.loss_weight!r}"
            )
    first = card.tasks[0]
    if first.num_classes != card.num_classes or tuple(first.label_names) != tuple(card.label_names):
        raise InvalidCardError(
            f"the first task head ({first.name!r}) is the model's own head: its classes must "
            f"be the card's num_classes and label_names"
        )


def _validate_training(card: ModelCard) -> None:
    if not isinstance(card.training_method, str) or (
        card.training_method and not TRAINING_METHOD.fullmatch(card.training_method)
    ):
        raise InvalidCardError(
            f"training_method {card.training_method!r} must match ^[a-z][a-z0-9_-]{{0,31}}$ "
            f"(e.g. 'supervised', 'protonet')"
        )
    if not isinstance(card.training_settings, dict):
        raise InvalidCardError("card field 'training_settings' must be an object of strings")
    if card.training_settings and not card.training_method:
        raise InvalidCardError("training_settings need a training_method they belong to")
    if len(card.training_settings) > MAX_SETTINGS:
        raise InvalidCardError(f"at most {MAX_SETTINGS} training_settings")
    for key, value in card.training_settings.items():
        if not isinstance(key, str) or not SETTING_KEY.fullmatch(key):
            raise InvalidCardError(f"training_settings key {key!r} must match ^[a-z][a-z0-9_]{{0,63}}$")
        _text("training_settings", value, 128)


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
