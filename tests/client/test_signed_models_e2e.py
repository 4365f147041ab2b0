"""Signed models end to end: an operator signs at registration; clients verify before a pull commits.

Against a real server: a valid signature passes; a missing signature, an
untrusted key, a card changed after signing (edited in the server's own
database, as a compromised server could) and an artifact the server derived
are each refused with exit code 17 and nothing cached.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from xfer.client import signing
from xfer.client.errors import SignatureError


@pytest.fixture
def keys(tmp_path):
    signing.generate_key(tmp_path / "alice", name="alice")
    signing.generate_key(tmp_path / "mallory", name="mallory")
    return {
        "alice": (tmp_path / "alice" / "alice.key", tmp_path / "alice" / "alice.pub"),
        "mallory": (tmp_path / "mallory" / "mallory.key", tmp_path / "mallory" / "mallory.pub"),
    }


def nothing_cached(cache: Path) -> bool:
    return not (cache / "blobs").exists() or not any((cache / "blobs").iterdir())


def test_signed_pull_succeeds_and_every_bad_signature_is_refused(new_server, run_cli, model_dir, keys, tmp_path):
    server = new_server()
    signed = run_cli(
        server, "register", str(model_dir), "--model", "signed", "--sign-key", str(keys["alice"][0]), token="operator"
    )
    assert signed.code == 0 and "signed by" in signed.out, signed.err
    assert run_cli(server, "register", str(model_dir), "--model", "unsigned", token="operator").code == 0
    trust_alice = {"XFER_TRUSTED_KEYS": str(keys["alice"][1]), "XFER_REQUIRE_SIGNED": "1"}

    ok = run_cli(server, "pull", "signed", "--json", cache_dir=tmp_path / "c1", env=trust_alice)
    assert ok.code == 0, ok.err
    shown = run_cli(server, "show", "signed", cache_dir=tmp_path / "c1", env=trust_alice)
    assert "valid, by trusted key" in shown.out

    unsigned = run_cli(server, "pull", "unsigned", cache_dir=tmp_path / "c2", env=trust_alice)
    assert unsigned.code == 17 and "not signed" in unsigned.err and nothing_cached(tmp_path / "c2")

    trust_mallory = {"XFER_TRUSTED_KEYS": str(keys["mallory"][1]), "XFER_REQUIRE_SIGNED": "1"}
    wrong = run_cli(server, "pull", "signed", cache_dir=tmp_path / "c3", env=trust_mallory)
    assert wrong.code == 17 and "none of which is trusted" in wrong.err and nothing_cached(tmp_path / "c3")

    derived = run_cli(server, "pull", "signed", "--format", "onnx", cache_dir=tmp_path / "c4", env=trust_alice)
    if (model_dir / "model.onnx").exists():  # uploaded, hence signed
        assert derived.code == 0, derived.err


def test_a_card_changed_after_signing_is_refused(new_server, run_cli, model_dir, keys, tmp_path):
    server = new_server()
    assert (
        run_cli(
            server,
            "register",
            str(model_dir),
            "--model",
            "victim",
            "--sign-key",
            str(keys["alice"][0]),
            token="operator",
        ).code
        == 0
    )
    # A compromised server (or database) rewrites the label names it serves.
    with sqlite3.connect(server.data_dir / "xfer.db") as db:
        (card_json,) = db.execute("SELECT card_json FROM xfer_versions WHERE model_id = 'victim'").fetchone()
        card = json.loads(card_json)
        card["description"] = "trust me"
        db.execute("UPDATE xfer_versions SET card_json = ? WHERE model_id = 'victim'", (json.dumps(card),))
    env = {"XFER_TRUSTED_KEYS": str(keys["alice"][1]), "XFER_REQUIRE_SIGNED": "1"}
    tampered = run_cli(server, "pull", "victim", cache_dir=tmp_path / "cache", env=env)
    assert tampered.code == 17 and "changed after signing" in tampered.err
    assert nothing_cached(tmp_path / "cache") and not (tmp_path / "cache" / "refs").exists()
    unchecked = run_cli(
        server, "pull", "victim", cache_dir=tmp_path / "lax", env={"XFER_TRUSTED_KEYS": str(keys["alice"][1])}
    )
    assert unchecked.code == 0  # verification is the client's choice


def test_a_derived_artifact_is_not_covered(new_server, model_dir, keys, tmp_path):
    server = new_server()
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("model.safetensors", "card.json"):
        shutil.copy(model_dir / name, weights_only / name)
    with server.client(tmp_path / "op", token="operator") as op:
        version = op.register(weights_only, "derived", signing_key=keys["alice"][0])
    assert version.artifact("onnx").derived
    with server.client(tmp_path / "cache", trusted_keys=[keys["alice"][1]], require_signed=True) as xfer:
        assert xfer.pull("derived", "safetensors").sha256 == version.artifact("safetensors").sha256
        with pytest.raises(SignatureError, match="derived by the server"):
            xfer.pull("derived", "onnx")


def test_a_non_canonical_signed_card_is_refused_at_upload(new_server, run_cli, model_dir, keys, tmp_path):
    server = new_server()
    partial = tmp_path / "partial-card"
    shutil.copytree(model_dir, partial)
    card = json.loads((partial / "card.json").read_text())
    card["architecture_config"].pop(next(iter(card["architecture_config"])))  # a field left to its default
    (partial / "card.json").write_text(json.dumps(card))
    refused = run_cli(
        server, "register", str(partial), "--model", "partial", "--sign-key", str(keys["alice"][0]), token="operator"
    )
    assert refused.code == 3 and "not canonical" in refused.err
