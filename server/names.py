"""Parsing resource names and ids; every hostile spelling is an InvalidArgument (reason INVALID_NAME) here.

The rules themselves live once in `xfer.names` (full matches, so `stable\\n`
is not `stable`); this module turns a broken name into an error that says
the rule and names the request field.
"""

from __future__ import annotations

import dataclasses

from xfer.names import ALIAS_RULE, LATEST, MODEL_ID_RULE, is_alias, is_model_id
from xfer.server.errors import InvalidArgument, Reason, shorten

__all__ = [
    "LATEST",
    "MAX_VERSION",
    "VersionRef",
    "check_alias",
    "check_model_id",
    "parse_model_name",
    "parse_version_name",
]

MAX_VERSION = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class VersionRef:
    """A parsed models/{model}/versions/{version-or-alias}."""

    model_id: str
    #: The number, when the name used one.
    version: int | None
    #: The alias, when the name used one.
    alias: str | None


def _invalid(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_NAME, field=field)


def check_model_id(model_id: str, *, field: str = "name") -> str:
    """Returns `model_id` if valid, else raises InvalidArgument saying the rule."""
    if not is_model_id(model_id):
        raise _invalid(f"invalid model id {shorten(str(model_id))}: {MODEL_ID_RULE}", field)
    return model_id


def check_alias(alias: str, *, settable: bool = False, field: str = "alias") -> str:
    """Returns `alias` if valid; with `settable`, also refuses the server-owned `latest`."""
    if not is_alias(alias):
        raise _invalid(f"invalid alias {shorten(str(alias))}: {ALIAS_RULE}", field)
    if settable and alias == LATEST:
        raise _invalid(
            "alias 'latest' is owned by the server (it always names the newest "
            "version); choose another alias, e.g. 'stable'",
            field,
        )
    return alias


def parse_model_name(name: str, *, field: str = "parent") -> str:
    """models/{model} -> model id."""
    if not isinstance(name, str) or not name.startswith("models/"):
        raise _invalid(f"invalid model name {shorten(str(name))}: expected 'models/{{model}}'", field)
    # Whatever follows is checked as an id, so '../x' or 'a/b' get the id rule in the message.
    return check_model_id(name[len("models/") :], field=field)


def parse_version_name(name: str, *, field: str = "name") -> VersionRef:
    """models/{model}/versions/{number-or-alias} -> VersionRef."""
    if not isinstance(name, str) or not name.startswith("models/") or "/versions/" not in name:
        raise _invalid(
            f"invalid version name {shorten(str(name))}: expected "
            "'models/{model}/versions/{version}', where {version} is a number or an alias",
            field,
        )
    model_id, _, token = name[len("models/") :].rpartition("/versions/")
    check_model_id(model_id, field=field)
    if token.isascii() and token.isdigit():
        if token.startswith("0") or int(token) > MAX_VERSION:
            raise _invalid(
                f"invalid version number {shorten(token)}: versions are numbered from 1, without leading zeros", field
            )
        return VersionRef(model_id=model_id, version=int(token), alias=None)
    if not is_alias(token):
        raise _invalid(
            f"invalid alias {shorten(token)} in {shorten(name)}: {{version}} must be a version "
            f"number or an alias; {ALIAS_RULE}",
            field,
        )
    return VersionRef(model_id=model_id, version=None, alias=token)
