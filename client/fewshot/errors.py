"""Errors of `client.fewshot`: each says what happened and how to fix it."""

from xfer.errors import EXIT_CODES, XferError


class FewShotError(XferError, ValueError):
    """An episodic evaluation that cannot run as configured (too few classes or examples, a bad flag)."""

    exit_code = EXIT_CODES["invalid_argument"]
