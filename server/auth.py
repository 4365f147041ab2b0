"""Bearer-token authentication, role-based authorisation, and TLS / mutual-TLS credentials.

Token file
----------
The server stores only sha256 hashes of tokens, never the tokens. Two formats
are accepted (chosen by the first non-blank character):

JSON (written by the CLI below)::

    {"tokens": [{"name": "ci", "role": "client", "sha256": "<64 hex digits>"}]}

or simple lines, one token per line, `#` starts a comment::

    <role> <sha256 of the token, 64 hex digits> [name]

Roles: `operator` may call everything; `client` may list, get and read
models and report/list/summarize runs. Health and reflection need no token.

Add a token (prints the new token once; keep it, the file only has its hash)::

    xfer-server tokens add --role client --file tokens.json [--name NAME]
    xfer-server tokens list --file tokens.json
    xfer-server tokens remove --name NAME --file tokens.json

(server/tokens_cli.py; it imports neither torch nor the serving stack.)

The file is re-read when it changes, so adding or removing a token needs no restart.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc

from xfer.models.files import write_bytes_atomic
from xfer.server.errors import PermissionDenied, Reason, Unauthenticated

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "xfer_"


class Role(str, enum.Enum):
    """What a token may do."""

    OPERATOR = "operator"
    CLIENT = "client"


#: Methods a `client` token may call; an operator may call every method.
CLIENT_METHODS = frozenset(
    {
        "/xfer.v1.RegistryService/GetModelVersion",
        "/xfer.v1.RegistryService/ListModels",
        "/xfer.v1.RegistryService/ListModelVersions",
        "/xfer.v1.TransferService/ReadArtifact",
        "/xfer.v1.MetricsService/ReportRun",
        "/xfer.v1.MetricsService/ListRuns",
        "/xfer.v1.MetricsService/SummarizeRuns",
    }
)
#: Services reachable without a token, so stock probes and tools work.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclasses.dataclass(frozen=True)
class TokenEntry:
    """One stored token: its hash, role and an optional label."""

    sha256: str
    role: Role
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling, as far as the server knows."""

    role: Role
    name: str
    #: Stable and unique per token (its name, or a prefix of its hash): per-token limits count by it.
    key: str = ""


class TokenFileError(ValueError):
    """A token file that cannot be parsed."""


def hash_token(token: str) -> str:
    """The hex sha256 stored for `token`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_token_file(text: str) -> list[TokenEntry]:
    """Parses a token file in either format (see the module docstring)."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            raw = data["tokens"]
            entries = [
                TokenEntry(sha256=str(t["sha256"]).lower(), role=Role(t["role"]), name=str(t.get("name", "")))
                for t in raw
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenFileError(
                f"token file is not valid: {exc}; expected "
                '{"tokens": [{"role": "client", "sha256": "...", "name": "..."}]}'
            ) from None
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 2)
            try:
                entries.append(
                    TokenEntry(sha256=parts[1].lower(), role=Role(parts[0]), name=parts[2] if len(parts) > 2 else "")
                )
            except (IndexError, ValueError):
                raise TokenFileError(
                    f"token file line {number} is not '<role> <sha256> [name]' with role operator or client"
                ) from None
    for entry in entries:
        if len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256):
            raise TokenFileError(
                f"token {entry.name or '<unnamed>'!r}: sha256 must be 64 hex digits (store the "
                "hash of the token, never the token itself)"
            )
    return entries


def load_token_file(path: Path) -> list[TokenEntry]:
    """Reads and parses a token file."""
    return parse_token_file(Path(path).read_text(encoding="utf-8"))


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


class TokenAuthorizer:
    """Checks `authorization: Bearer <token>` metadata against a token file."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: list[TokenEntry] = []
        self._reload()
        if not self._entries:
            logger.warning(
                "token file %s has no tokens: every call except health/reflection will be refused", self._path
            )

    def _reload(self) -> None:
        stat = self._path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        entries = load_token_file(self._path)
        self._entries, self._stamp = entries, stamp
        logger.info("loaded %d token(s) from %s", len(entries), self._path)

    def _entries_now(self) -> list[TokenEntry]:
        with self._lock:
            try:
                self._reload()
            except (OSError, TokenFileError) as exc:
                # Keep serving with the last good file rather than locking everyone out.
                logger.error("could not reload token file %s (%s); keeping the previous tokens", self._path, exc)
            return self._entries

    def authorize(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal | None:
        """The caller of `method`; raises Unauthenticated or PermissionDenied. None for public methods."""
        if method.startswith(PUBLIC_PREFIXES):
            return None
        token = _bearer(metadata)
        if token is None:
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <token>' (the operator "
                "creates tokens with `xfer-server tokens add`)",
                reason=Reason.TOKEN_MISSING,
            )
        digest = hash_token(token).encode()
        match: TokenEntry | None = None
        # Compare against every entry, in constant time each, so timing says nothing about which hash is close.
        for entry in self._entries_now():
            if hmac.compare_digest(digest, entry.sha256.encode()):
                match = entry
        if match is None:
            raise Unauthenticated(
                "invalid token: it is not in the server's token file; check the token or ask "
                "the operator for a new one",
                reason=Reason.TOKEN_INVALID,
            )
        if match.role is not Role.OPERATOR and method not in CLIENT_METHODS:
            raise PermissionDenied(
                f"role {match.role.value!r} may not call {method}; it needs an operator token",
                reason=Reason.ROLE_FORBIDDEN,
                metadata={"role": match.role.value},
            )
        return Principal(
            role=match.role, name=match.name, key=f"name:{match.name}" if match.name else f"sha256:{match.sha256[:16]}"
        )


class OpenAuthorizer:
    """No token file: every caller is an operator. Only ever bound to loopback."""

    def authorize(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal | None:
        """Everyone is an operator."""
        return None if method.startswith(PUBLIC_PREFIXES) else Principal(role=Role.OPERATOR, name="open", key="open")


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(*, cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with `client_ca`, clients must present a certificate it signed."""
    pair = [(Path(key).read_bytes(), Path(cert).read_bytes())]
    if client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=Path(client_ca).read_bytes(), require_client_auth=True)


# -- token file administration ---------------------------------------------------------
def _write_entries(path: Path, entries: list[TokenEntry]) -> None:
    body = (
        json.dumps({"tokens": [{"name": e.name, "role": e.role.value, "sha256": e.sha256} for e in entries]}, indent=2)
        + "\n"
    )
    write_bytes_atomic(path, body.encode("utf-8"), mode=0o600)


def add_token(path: Path, *, role: Role | str, name: str = "") -> str:
    """Creates a fresh token, stores its hash in `path` (created if missing) and returns the token."""
    path = Path(path)
    entries = load_token_file(path) if path.exists() else []
    if name and any(e.name == name for e in entries):
        raise TokenFileError(f"a token named {name!r} exists already; remove it first or choose another name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entries.append(TokenEntry(sha256=hash_token(token), role=Role(role), name=name))
    _write_entries(path, entries)
    return token


def remove_token(path: Path, *, name: str) -> int:
    """Removes the tokens named `name`; returns how many were removed."""
    entries = load_token_file(path)
    kept = [e for e in entries if e.name != name]
    _write_entries(path, kept)
    return len(entries) - len(kept)


if __name__ == "__main__":
    # `python -m xfer.server.auth add|list|remove` predates `xfer-server tokens`; it is the same command.
    import sys

    from xfer.server.tokens_cli import main

    sys.exit(main())
