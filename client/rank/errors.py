"""Errors of `client.rank`: each says what happened and how to fix it."""

from xfer.errors import EXIT_CODES, XferError


class RankError(XferError, ValueError):
    """A ranking that cannot run as asked (no candidates, unusable data or features)."""

    exit_code = EXIT_CODES["invalid_argument"]
