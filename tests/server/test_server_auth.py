"""Token files, role checks and loopback detection (the `xfer-server tokens` command: test_tokens_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xfer.server.auth import (
    CLIENT_METHODS,
    OpenAuthorizer,
    Role,
    TokenAuthorizer,
    TokenFileError,
    add_token,
    hash_token,
    is_loopback,
    load_token_file,
    parse_token_file,
    remove_token,
)
from xfer.server.errors import PermissionDenied, Unauthenticated


def test_both_file_formats(tmp_path: Path) -> None:
    sha = hash_token("secret")
    lines = f"# comment\n\noperator {sha} alice\nclient {hash_token('other')}\n"
    assert parse_token_file(lines) == parse_token_file(
        json.dumps(
            {
                "tokens": [
                    {"role": "operator", "sha256": sha, "name": "alice"},
                    {"role": "client", "sha256": hash_token("other")},
                ]
            }
        )
    )
    with pytest.raises(TokenFileError, match="line 1"):
        parse_token_file("admin " + sha)
    with pytest.raises(TokenFileError, match="64 hex digits"):
        parse_token_file("client secret-token-in-plain-text")


def test_roles(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    operator = add_token(path, role="operator", name="ops")
    client = add_token(path, role=Role.CLIENT)
    auth = TokenAuthorizer(path)
    create = "/xfer.v1.RegistryService/CreateModelVersion"
    assert auth.authorize(create, [("authorization", f"Bearer {operator}")]).role is Role.OPERATOR
    for method in CLIENT_METHODS:
        assert auth.authorize(method, [("authorization", f"bearer {client}")]).role is Role.CLIENT
    with pytest.raises(PermissionDenied, match="needs an operator token"):
        auth.authorize(create, [("authorization", f"Bearer {client}")])
    with pytest.raises(Unauthenticated, match="missing credentials"):
        auth.authorize(create, [])
    with pytest.raises(Unauthenticated, match="invalid token"):
        auth.authorize(create, [("authorization", f"Bearer {operator}x")])
    with pytest.raises(Unauthenticated, match="invalid token"):
        auth.authorize(create, [("authorization", f"Basic {operator}")])
    assert auth.authorize("/grpc.health.v1.Health/Check", []) is None
    assert auth.authorize("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None) is None
    assert OpenAuthorizer().authorize(create, None).role is Role.OPERATOR
    # Per-token limits count by a key unique per token: its name, or its hash for unnamed tokens.
    assert auth.authorize(create, [("authorization", f"Bearer {operator}")]).key == "name:ops"
    assert (
        auth.authorize("/xfer.v1.RegistryService/ListModels", [("authorization", f"Bearer {client}")]).key
        == f"sha256:{hash_token(client)[:16]}"
    )


def test_token_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, role="operator", name="first")
    auth = TokenAuthorizer(path)
    later = add_token(path, role="client", name="second")
    assert auth.authorize("/xfer.v1.RegistryService/ListModels", [("authorization", f"Bearer {later}")])
    assert remove_token(path, name="second") == 1
    with pytest.raises(Unauthenticated):
        auth.authorize("/xfer.v1.RegistryService/ListModels", [("authorization", f"Bearer {later}")])
    assert [e.name for e in load_token_file(path)] == ["first"]


def test_loopback() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))
