"""Model references: the one way to name a model version on the client side.

Syntax (what the SDK and every `xfer` subcommand accept)::

    digits-convnet            the version the alias `latest` points at
    digits-convnet:3          version 3
    digits-convnet@stable     the version the alias `stable` points at
    models/digits-convnet/versions/3       resource names are accepted too
    models/digits-convnet/versions/stable

* a model id matches ``^[a-z][a-z0-9-]{1,62}$`` (2 to 63 characters, lower
  case, starting with a letter), the server's own rule;
* a version is a positive decimal integer without leading zeros;
* an alias matches ``^[a-z][a-z0-9-]{0,31}$``. `latest` is maintained by the
  server (it always names the newest version); other aliases are set by
  operators with `xfer alias`.

Anything else raises `InvalidRefError`, which is both an `XferError` and a
`ValueError`, with a message that shows the accepted forms. Parsing is
purely local: whether the model exists is the server's to say.
"""

from __future__ import annotations

import dataclasses
import re

from xfer.client.errors import InvalidArgumentError, InvalidRefError
from xfer.names import LATEST as DEFAULT_ALIAS
from xfer.names import is_alias, is_model_id, is_version_number

_RESOURCE_RE = re.compile(r"models/(?P<model>[^/]+)(?:/versions/(?P<selector>[^/]+))?")

_FORMS = "use MODEL, MODEL:VERSION or MODEL@ALIAS, e.g. digits-convnet, digits-convnet:3, digits-convnet@stable"


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a model id plus at most one of version number or alias."""

    model: str
    version: int | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.alias is not None:
            raise InvalidRefError("a reference names a version or an alias, not both")

    @property
    def explicit(self) -> bool:
        """Whether the reference names a version or alias (rather than defaulting to `latest`)."""
        return self.version is not None or self.alias is not None

    @property
    def selector(self) -> str:
        """The `{version}` segment of the resource name: a number or an alias."""
        if self.version is not None:
            return str(self.version)
        return self.alias or DEFAULT_ALIAS

    @property
    def model_name(self) -> str:
        """Resource name of the model, `models/{model}`."""
        return f"models/{self.model}"

    @property
    def version_name(self) -> str:
        """Resource name of the version, `models/{model}/versions/{version-or-alias}`."""
        return f"models/{self.model}/versions/{self.selector}"

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.model}:{self.version}"
        if self.alias is not None:
            return f"{self.model}@{self.alias}"
        return self.model


def _check_model(model: str, text: str) -> None:
    if not is_model_id(model):
        raise InvalidRefError(
            f"invalid model reference {text!r}: model id {model!r} must be 2-63 characters of "
            f"a-z, 0-9 and '-', starting with a letter ({_FORMS})"
        )


def _selector(model: str, selector: str, text: str) -> ModelRef:
    if is_version_number(selector):
        return ModelRef(model, version=int(selector))
    if is_alias(selector):
        return ModelRef(model, alias=selector)
    raise InvalidRefError(
        f"invalid model reference {text!r}: {selector!r} is neither a version number (1, 2, ...) "
        f"nor an alias (a-z, 0-9, '-', starting with a letter) ({_FORMS})"
    )


def parse_ref(text: str | ModelRef) -> ModelRef:
    """Parses a reference string (see the module docstring); a `ModelRef` passes through."""
    if isinstance(text, ModelRef):
        return text
    if not isinstance(text, str):
        raise InvalidRefError(f"a model reference must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise InvalidRefError(f"empty model reference ({_FORMS})")
    resource = _RESOURCE_RE.fullmatch(stripped)
    if resource:
        model, selector = resource.group("model"), resource.group("selector")
        _check_model(model, text)
        return ModelRef(model) if selector is None else _selector(model, selector, text)
    if stripped.count(":") + stripped.count("@") > 1:
        raise InvalidRefError(f"invalid model reference {text!r}: use ':' or '@' once ({_FORMS})")
    for sep in (":", "@"):
        if sep in stripped:
            model, selector = stripped.split(sep, 1)
            _check_model(model, text)
            if not selector:
                raise InvalidRefError(f"invalid model reference {text!r}: nothing after {sep!r} ({_FORMS})")
            ref = _selector(model, selector, text)
            # `m:stable` and `m@3` are almost certainly typos; refuse rather than guess.
            if sep == ":" and ref.version is None:
                raise InvalidRefError(
                    f"invalid model reference {text!r}: after ':' comes a version "
                    f"number; for an alias write {model}@{selector}"
                )
            if sep == "@" and ref.alias is None:
                raise InvalidRefError(
                    f"invalid model reference {text!r}: after '@' comes an alias; "
                    f"for a version number write {model}:{selector}"
                )
            return ref
    _check_model(stripped, text)
    return ModelRef(stripped)


def validate_alias(alias: str, *, settable: bool = True) -> str:
    """Checks an alias name; with `settable`, also refuses `latest`, which the server owns."""
    if not is_alias(alias):
        raise InvalidArgumentError(
            f"invalid alias {alias!r}: 1-32 characters of a-z, 0-9 and '-', starting with a letter"
        )
    if settable and alias == DEFAULT_ALIAS:
        raise InvalidArgumentError(f"the alias {DEFAULT_ALIAS!r} is maintained by the server and cannot be set")
    return alias


def validate_model_id(model_id: str) -> str:
    """Checks a bare model id (as `register` takes) and returns it."""
    if not is_model_id(model_id):
        raise InvalidArgumentError(
            f"invalid model id {model_id!r}: 2-63 characters of a-z, 0-9 and '-', starting with a letter"
        )
    return model_id
