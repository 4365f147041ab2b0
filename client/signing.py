"""Signed models: an operator signs a version's manifest, clients verify it before a pull commits.

The manifest binds what a client relies on: the model id, the whole model
card (architecture, input normalisation, labels, the source's privacy
guarantee and audits) and the sha256 and size of every artifact the
operator uploaded. It is canonical JSON (sorted keys, no whitespace,
UTF-8), so signer and verifier hash the same bytes. Signatures are Ed25519
(`cryptography`); a key is named by the first 16 hex digits of the sha256
of its raw public key.

An artifact the server derived itself (ONNX from safetensors) is not in the
operator's manifest, so a signed pull of it is refused rather than trusted
on the server's word.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xfer.client.domain import ManifestSignature
from xfer.client.errors import InvalidArgumentError, SignatureError
from xfer.models.card import ModelCard
from xfer.models.files import atomic_path

MANIFEST_VERSION = 1
ALGORITHM = "ed25519"
PUBLIC_SUFFIX = ".pub"
PRIVATE_SUFFIX = ".key"


@dataclasses.dataclass(frozen=True)
class TrustedKey:
    """A publisher's public key a client trusts."""

    key_id: str
    public_key: Any  # cryptography's Ed25519PublicKey
    source: str


def manifest_bytes(*, model: str, card: ModelCard, artifacts: Mapping[str, tuple[str, int]]) -> bytes:
    """The canonical manifest: model id, card, and {format: (sha256, size)} of the signed artifacts."""
    document = {
        "xfer_manifest": MANIFEST_VERSION,
        "model": model,
        "card": _json_numbers(card.to_dict()),
        "artifacts": {fmt: {"sha256": sha, "size_bytes": int(size)} for fmt, (sha, size) in sorted(artifacts.items())},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _json_numbers(value: Any) -> Any:
    """Integral floats as ints, as RFC 8785 (JCS) writes numbers: 0.0 and 0 are one JSON number.

    Protobuf Structs carry every number as a double and the wire form gives
    integral ones back as ints, so `dropout: 0.0` signed by the operator
    arrives as `dropout: 0`; both must give the same manifest.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_numbers(v) for v in value]
    return value


def key_id(public_key: Any) -> str:
    """The id of a public key: 16 hex digits of the sha256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(directory: str | os.PathLike, *, name: str = "xfer-signing") -> tuple[Path, Path]:
    """Writes a new Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub (public, for clients)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}{PRIVATE_SUFFIX}", directory / f"{name}{PUBLIC_SUFFIX}"
    if private_path.exists():
        raise InvalidArgumentError(f"{private_path} already exists; choose another --name or directory")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with atomic_path(private_path, mode=0o600) as tmp:
        tmp.write_bytes(private_pem)
    with atomic_path(public_path, mode=0o644) as tmp:
        tmp.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: str | os.PathLike) -> Any:
    """An Ed25519 private key from a PEM file (as `generate_key` writes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the signing key {str(path)!r}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"{str(path)!r} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgumentError(f"{str(path)!r} is not an Ed25519 key; create one with `xfer keys generate`")
    return key


def sign(manifest: bytes, private_key: Any) -> ManifestSignature:
    """Signs a manifest."""
    return ManifestSignature(
        key_id=key_id(private_key.public_key()), algorithm=ALGORITHM, signature=private_key.sign(manifest)
    )


def _public_key_files(entry: Path) -> list[Path]:
    if entry.is_dir():
        return sorted(p for p in entry.iterdir() if p.suffix == PUBLIC_SUFFIX)
    return [entry]


def load_trusted_keys(paths: Iterable[str | os.PathLike]) -> tuple[TrustedKey, ...]:
    """Public keys from PEM files, or from every *.pub file in a folder."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = []
    for entry in paths:
        for path in _public_key_files(Path(entry)):
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except OSError as exc:
                raise InvalidArgumentError(f"cannot read the trusted key {str(path)!r}: {exc.strerror}") from None
            except ValueError as exc:
                raise InvalidArgumentError(f"{str(path)!r} is not a PEM public key ({exc})") from None
            if not isinstance(key, Ed25519PublicKey):
                raise InvalidArgumentError(f"trusted key {str(path)!r} is not an Ed25519 key")
            keys.append(TrustedKey(key_id=key_id(key), public_key=key, source=str(path)))
    return tuple(keys)


def verify(
    manifest: bytes, *, signatures: Sequence[ManifestSignature], trusted: Sequence[TrustedKey], what: str
) -> TrustedKey:
    """The trusted key whose signature over `manifest` is valid; raises SignatureError saying why not."""
    from cryptography.exceptions import InvalidSignature

    if not trusted:
        raise SignatureError(
            f"cannot verify {what}: no trusted publisher keys are configured "
            "(set XFER_TRUSTED_KEYS or pass --trusted-keys)"
        )
    if not signatures:
        raise SignatureError(
            f"{what} is not signed, and a signature is required; ask the operator to register it "
            "with `xfer register --sign-key`"
        )
    by_id = {k.key_id: k for k in trusted}
    known = [s for s in signatures if s.key_id in by_id]
    if not known:
        ids = ", ".join(sorted({s.key_id for s in signatures}))
        raise SignatureError(
            f"{what} is signed by key(s) {ids}, none of which is trusted here (trusted: {', '.join(sorted(by_id))})"
        )
    for signature in known:
        if signature.algorithm != ALGORITHM:
            continue
        try:
            by_id[signature.key_id].public_key.verify(signature.signature, manifest)
        except InvalidSignature:
            continue
        return by_id[signature.key_id]
    raise SignatureError(
        f"{what}: the signature by {known[0].key_id} does not match the card and artifact "
        "digests the server sent; they were changed after signing. Nothing was cached."
    )
