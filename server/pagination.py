"""Page sizes and opaque, signed page tokens shared by every List RPC (Google AIP-158).

A token is base64url(JSON body) "." base64url(HMAC-SHA256(key, body)). The
key is a server secret shared by every replica (kept in the database, see
`settings.page_token_key`), so a token minted by one replica pages on any
other, and nobody without the key can forge one: a forged cursor such as an
offset of 10**30 is refused before it reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from xfer.server.errors import InvalidArgument, Reason

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_CHARS = 1024
_MAC_BYTES = 16
#: Cursor integers must fit a signed 64-bit column (PostgreSQL BIGINT, SQLite INTEGER).
MAX_CURSOR_INT = 2**63 - 1


def page_size_of(requested: int) -> int:
    """0 means the default; above the maximum is clamped; negative is an error."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise InvalidArgument(
            f"page_size must not be negative, got {requested!r} (0 means {DEFAULT_PAGE_SIZE})", field="page_size"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))


class PageTokens:
    """Signs and checks page tokens with one key.

    The body also carries a fingerprint of the query, so a token from one
    listing (or one set of filters) is refused by another instead of
    returning a wrong page.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the page token key must have at least 16 bytes")
        self._key = key

    @staticmethod
    def invalid() -> InvalidArgument:
        """The one error every malformed, forged or mismatched token gets."""
        return InvalidArgument(
            "invalid page_token: pass the next_page_token of the previous response "
            "unchanged, with the same other request fields (or leave it empty for the first page)",
            reason=Reason.INVALID_PAGE_TOKEN,
            field="page_token",
        )

    @staticmethod
    def _fingerprint(query: str) -> str:
        return hashlib.sha256(query.encode()).hexdigest()[:16]

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, *, query: str, last: object) -> str:
        """A token resuming `query` after key `last` (any JSON value)."""
        body = json.dumps({"q": self._fingerprint(query), "k": last}, separators=(",", ":")).encode()
        return f"{_b64encode(body)}.{_b64encode(self._mac(body))}"

    def decode(self, token: str, *, query: str, kind: type) -> object:
        """The key inside `token`, checked against signature, `query` and `kind`; InvalidArgument if not ours."""
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
            raise self.invalid()
        body_text, mac_text = token.split(".")
        try:
            body, mac = _b64decode(body_text), _b64decode(mac_text)
        except (ValueError, binascii.Error, UnicodeError):
            raise self.invalid() from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise self.invalid()
        try:
            decoded = json.loads(body)
        except ValueError:
            raise self.invalid() from None
        if not isinstance(decoded, dict) or decoded.get("q") != self._fingerprint(query):
            raise self.invalid()
        last = decoded.get("k")
        if not isinstance(last, kind) or isinstance(last, bool) or not _in_range(last):
            raise self.invalid()
        return last


def _in_range(value: object) -> bool:
    """Every integer anywhere in a cursor fits a signed 64-bit column (defence in depth behind the MAC)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -MAX_CURSOR_INT - 1 <= value <= MAX_CURSOR_INT
    if isinstance(value, list):
        return all(_in_range(v) for v in value)
    return isinstance(value, (str, float)) or value is None
