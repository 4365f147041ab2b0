"""The explicit architecture registry (modelled on timm's).

An architecture is a subclass of `XferModel` plus a frozen config dataclass.
Configs arrive from JSON and protobuf `Struct` (where every number is a
double), so `create_model` coerces each field to its declared type and
rejects unknown or missing fields instead of guessing.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from typing import Any

from xfer.models.base import XferModel
from xfer.models.errors import DuplicateArchitectureError, InvalidConfigError, UnknownArchitectureError


@dataclasses.dataclass(frozen=True)
class ArchitectureEntry:
    name: str
    model_cls: type[XferModel]
    config_cls: type
    description: str


_REGISTRY: dict[str, ArchitectureEntry] = {}
# Built-in architectures register themselves when their module is imported;
# importing them on first lookup keeps `import xfer.models` free of torch.
_BUILTIN_MODULES = {
    "mlp": "xfer.models.mlp",
    "convnet": "xfer.models.convnet",
    "vit_tiny": "xfer.models.vit",
    "efficientnet_lite": "xfer.models.efficientnet",
}


def _load_builtins(name: str | None = None) -> None:
    for arch, module in _BUILTIN_MODULES.items():
        if (name is None or name == arch) and arch not in _REGISTRY:
            importlib.import_module(module)


def register_model(name: str, *, config: type) -> Callable[[type[XferModel]], type[XferModel]]:
    """Class decorator registering an architecture under `name`."""

    def decorate(model_cls: type[XferModel]) -> type[XferModel]:
        if name in _REGISTRY:
            raise DuplicateArchitectureError(f"architecture {name!r} is already registered")
        model_cls.architecture = name
        doc = (model_cls.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ArchitectureEntry(name, model_cls, config, doc[0] if doc else "")
        return model_cls

    return decorate


def list_models() -> list[str]:
    """Registered architecture ids, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ArchitectureEntry:
    """The registry entry for `name`; raises listing the valid ids if unknown."""
    _load_builtins(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; valid ones: {', '.join(list_models())}"
        ) from None


def _coerce(field: str, kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise InvalidConfigError(f"config field {field!r} must be a list, got {value!r}")
        return tuple(_coerce(field, item, v) for v in value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise InvalidConfigError(f"config field {field!r} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidConfigError(f"config field {field!r} must be a number, got {value!r}")
        return float(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidConfigError(f"config field {field!r} must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise InvalidConfigError(f"config field {field!r} must be a string, got {value!r}")
        return value
    raise InvalidConfigError(f"config field {field!r} has unsupported type {kind!r}")


def build_config(name: str, config: dict[str, Any] | None = None) -> Any:
    """Validates and coerces a plain dict into architecture `name`'s config."""
    entry = get_entry(name)
    config = dict(config or {})
    hints = typing.get_type_hints(entry.config_cls)
    fields = {f.name: f for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise InvalidConfigError(f"unknown config field(s) {unknown} for {name!r}; valid: {sorted(fields)}")
    values = {key: _coerce(key, hints[key], value) for key, value in config.items()}
    try:
        built = entry.config_cls(**values)
    except TypeError as exc:
        raise InvalidConfigError(f"bad config for {name!r}: {exc}") from None
    check = getattr(built, "validate", None)
    if check is not None:
        check()
    return built


def create_model(name: str, **config: Any) -> XferModel:
    """Builds architecture `name` with keyword config (defaults fill the rest)."""
    entry = get_entry(name)
    return entry.model_cls(build_config(name, config))
