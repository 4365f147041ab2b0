"""Manifest signing: canonical bytes, Ed25519 sign/verify, and every way verification must fail."""

from __future__ import annotations

import dataclasses
import stat

import pytest

from xfer.client import signing
from xfer.client.errors import InvalidArgumentError, SignatureError
from xfer.models.card import ModelCard
from xfer.models.card_proto import card_from_proto, card_to_proto

CARD = ModelCard(
    architecture="convnet",
    architecture_config={"width": 8, "depth": 2, "num_classes": 4},
    input_shape=(1, 8, 8),
    num_classes=4,
    blocks=("stem", "block1", "head"),
)
ARTIFACTS = {"safetensors": ("a" * 64, 1234), "onnx": ("b" * 64, 5678)}


def manifest(**changes):
    fields = {"model": "digits", "card": CARD, "artifacts": ARTIFACTS, **changes}
    return signing.manifest_bytes(**fields)


@pytest.fixture
def keys(tmp_path):
    private, public = signing.generate_key(tmp_path / "keys", name="alice")
    other_private, other_public = signing.generate_key(tmp_path / "keys-other", name="mallory")
    return (
        signing.load_private_key(private),
        signing.load_trusted_keys([public]),
        signing.load_private_key(other_private),
        private,
    )


def test_manifest_is_canonical_and_binds_everything():
    assert manifest() == manifest(artifacts=dict(reversed(list(ARTIFACTS.items()))))
    assert manifest() != manifest(model="digits2")
    assert manifest() != manifest(card=dataclasses.replace(CARD, input_mean=(0.5,), input_std=(0.2,)))
    assert manifest() != manifest(artifacts={**ARTIFACTS, "onnx": ("c" * 64, 5678)})
    assert b" " not in manifest()


def test_manifest_survives_the_wire_form_of_the_card():
    """Structs carry numbers as doubles; an operator's `dropout: 0.0` comes back as 0 and must still verify."""
    mlp = ModelCard(
        architecture="mlp",
        architecture_config={"in_features": 64, "hidden": [128, 64], "num_classes": 10, "dropout": 0.0, "scale": 0.25},
        input_shape=(64,),
        num_classes=10,
        blocks=("stem", "block1", "head"),
        dp_epsilon=2.0,
        dp_delta=1e-5,
    )
    assert manifest(card=card_from_proto(card_to_proto(mlp))) == manifest(card=mlp)
    assert manifest(card=mlp) != manifest(card=dataclasses.replace(mlp, dp_epsilon=2.5))


def test_key_files_and_modes(keys, tmp_path):
    _, trusted, _, private_path = keys
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert len(trusted) == 1 and len(trusted[0].key_id) == 16
    with pytest.raises(InvalidArgumentError, match="already exists"):
        signing.generate_key(tmp_path / "keys", name="alice")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(InvalidArgumentError, match="not a PEM public key"):
        signing.load_trusted_keys([tmp_path / "junk.pub"])


def test_valid_signature_verifies(keys):
    private, trusted, _, _ = keys
    signature = signing.sign(manifest(), private)
    assert (
        signing.verify(manifest(), signatures=[signature], trusted=trusted, what="digits:1").key_id == signature.key_id
    )


@pytest.mark.parametrize(
    "tamper",
    [
        {"card": dataclasses.replace(CARD, label_names=("a", "b", "c", "evil"))},
        {"artifacts": {**ARTIFACTS, "safetensors": ("f" * 64, 1234)}},
        {"model": "other-model"},
    ],
)
def test_tampered_manifest_is_refused(keys, tamper):
    private, trusted, _, _ = keys
    signature = signing.sign(manifest(), private)
    with pytest.raises(SignatureError, match="changed after signing"):
        signing.verify(manifest(**tamper), signatures=[signature], trusted=trusted, what="digits:1")


def test_wrong_key_and_missing_signature_are_refused(keys):
    _, trusted, other_private, _ = keys
    with pytest.raises(SignatureError, match="none of which is trusted"):
        signing.verify(
            manifest(), signatures=[signing.sign(manifest(), other_private)], trusted=trusted, what="digits:1"
        )
    with pytest.raises(SignatureError, match="not signed"):
        signing.verify(manifest(), signatures=[], trusted=trusted, what="digits:1")
    with pytest.raises(SignatureError, match="no trusted publisher keys"):
        signing.verify(manifest(), signatures=[signing.sign(manifest(), other_private)], trusted=(), what="digits:1")


def test_forged_signature_under_a_trusted_key_id_is_refused(keys):
    private, trusted, other_private, _ = keys
    forged = dataclasses.replace(signing.sign(manifest(), other_private), key_id=trusted[0].key_id)
    with pytest.raises(SignatureError, match="changed after signing"):
        signing.verify(manifest(), signatures=[forged], trusted=trusted, what="digits:1")
