"""The naming rules of the wire contract, once for client and server.

Every rule is a full match (`re.fullmatch`): `$` in `re.match` also
accepts a trailing newline, which once let `stable\\n` become an alias.
"""

from __future__ import annotations

import re

MODEL_ID = re.compile(r"[a-z][a-z0-9-]{1,62}")
ALIAS = re.compile(r"[a-z][a-z0-9-]{0,31}")
VERSION = re.compile(r"[1-9][0-9]{0,17}")
SHA256 = re.compile(r"[0-9a-f]{64}")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
STRATEGY = re.compile(r"[a-z][a-z0-9_:.-]{0,127}")
METRIC_NAME = re.compile(r"[a-z][a-z0-9_./-]{0,63}")

LATEST = "latest"
MODEL_ID_RULE = (
    "model ids match ^[a-z][a-z0-9-]{1,62}$: 2 to 63 lower-case letters, digits or '-', starting with a letter"
)
ALIAS_RULE = "aliases match ^[a-z][a-z0-9-]{0,31}$: a lower-case letter, then letters, digits or '-'"


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def is_model_id(value: object) -> bool:
    """Whether `value` is a valid model id."""
    return _matches(MODEL_ID, value)


def is_alias(value: object) -> bool:
    """Whether `value` is a valid alias (letters first, so never a version number)."""
    return _matches(ALIAS, value)


def is_version_number(value: object) -> bool:
    """Whether `value` spells a version number: 1, 2, ... without leading zeros."""
    return _matches(VERSION, value)


def is_sha256(value: object) -> bool:
    """Whether `value` is a lower-case hex sha256 digest."""
    return _matches(SHA256, value)
