"""Page sizes and opaque page tokens shared by every List RPC (Google AIP-158)."""

from __future__ import annotations

import base64
import hashlib
import json

from xfer.server.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_CHARS = 1024


def page_size_of(requested: int) -> int:
    """0 means the default; above the maximum is clamped; negative is an error."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise InvalidArgument(f"page_size must not be negative, got {requested!r} (0 means {DEFAULT_PAGE_SIZE})")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PageTokens:
    """Opaque page tokens: base64url JSON of the last key plus a fingerprint of the query.

    The fingerprint makes a token from one listing (or one set of filters)
    unusable for another, so a client that mixes them up gets
    INVALID_ARGUMENT instead of a wrong page.
    """

    @staticmethod
    def invalid() -> InvalidArgument:
        """The one error every malformed, forged or mismatched token gets."""
        return InvalidArgument("invalid page_token: pass the next_page_token of the previous response "
                               "unchanged, with the same other request fields (or leave it empty for the first page)")

    @staticmethod
    def _fingerprint(query: str) -> str:
        return hashlib.sha256(query.encode()).hexdigest()[:16]

    @classmethod
    def encode(cls, *, query: str, last: object) -> str:
        """A token resuming `query` after key `last` (any JSON value)."""
        body = json.dumps({"q": cls._fingerprint(query), "k": last}, separators=(",", ":"))
        return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, *, query: str, kind: type) -> object:
        """The key inside `token`, checked against `query` and `kind`; raises InvalidArgument if it is not ours."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise cls.invalid()
        try:
            padded = token + "=" * (-len(token) % 4)
            body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        except (ValueError, UnicodeError):
            raise cls.invalid() from None
        if not isinstance(body, dict) or body.get("q") != cls._fingerprint(query):
            raise cls.invalid()
        last = body.get("k")
        if not isinstance(last, kind) or isinstance(last, bool):
            raise cls.invalid()
        return last
