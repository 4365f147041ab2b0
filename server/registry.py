"""Domain logic of the registry: uploads, versions, aliases, deprecation, deletion.

An upload streams each declared artifact into a temp file in the blob store
(running sha256, size limit; never buffered whole in memory), validates
everything, and only then moves blobs into place and commits the catalog
rows in one transaction. Anything that goes wrong before that commit — a
failed check, a cut-off stream, a crash — leaves no visible version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from xfer.models.card import ModelCard
from xfer.models.export import export_onnx
from xfer.models.errors import ModelError
from xfer.server.blobs import BlobStore, BlobWriter, check_sha256
from xfer.server.catalog import Catalog
from xfer.server.domain import (ArtifactDeclaration, ArtifactFormat, ArtifactRecord, ModelRecord, Page, UploadChunk,
                           UploadHeader, VersionRecord, version_name)
from xfer.server.errors import InvalidArgument, ResourceExhausted
from xfer.server.names import VersionRef, check_alias, parse_model_name, parse_version_name
from xfer.server import validate

logger = logging.getLogger(__name__)

MAX_DEPRECATION_MESSAGE = 1024
WEIGHT_FORMATS = (ArtifactFormat.SAFETENSORS, ArtifactFormat.TORCH_STATE_DICT)
# torch.onnx keeps exporter state in module globals; two exports at once in
# one process could read each other's settings, so derivations take turns.
_EXPORT_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class RegistryLimits:
    """Bounds the registry enforces on uploads."""

    max_artifact_bytes: int


@dataclasses.dataclass
class _Incoming:
    declaration: ArtifactDeclaration
    writer: BlobWriter


class Registry:
    """Versions of source models: create, read, alias, deprecate, delete."""

    def __init__(self, *, catalog: Catalog, blobs: BlobStore, limits: RegistryLimits) -> None:
        self._catalog = catalog
        self._blobs = blobs
        self._limits = limits

    @property
    def blobs(self) -> BlobStore:
        """The blob store holding artifact bytes."""
        return self._blobs

    # -- names ---------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """`models/{m}/versions/{number-or-alias}` -> canonical numbered name.

        Raises InvalidArgument for a malformed name and NotFound for an unknown
        model, version or alias. The metrics store uses this for run reports.
        """
        ref = parse_version_name(name)
        number = self._catalog.resolve(model_id=ref.model_id, version=ref.version, alias=ref.alias)
        return version_name(ref.model_id, number)

    def _number(self, ref: VersionRef) -> int:
        return self._catalog.resolve(model_id=ref.model_id, version=ref.version, alias=ref.alias)

    # -- reads ---------------------------------------------------------------
    def get_version(self, name: str) -> VersionRecord:
        """A version by name; `{version}` may be a number or an alias."""
        ref = parse_version_name(name)
        return self._catalog.get_version(model_id=ref.model_id, version=ref.version, alias=ref.alias)

    def list_models(self, *, page_size: int = 0, page_token: str = "") -> Page[ModelRecord]:
        """Models with at least one version, ordered by id."""
        return self._catalog.list_models(page_size=page_size, page_token=page_token)

    def list_versions(self, parent: str, *, page_size: int = 0, page_token: str = "") -> Page[VersionRecord]:
        """Versions of `models/{model}`, newest first."""
        model_id = parse_model_name(parent)
        return self._catalog.list_versions(model_id=model_id, page_size=page_size, page_token=page_token)

    # -- curation ------------------------------------------------------------
    def set_alias(self, name: str, alias: str) -> VersionRecord:
        """Points `alias` (not `latest`) at the version `name` resolves to."""
        check_alias(alias, settable=True)
        ref = parse_version_name(name)
        return self._catalog.set_alias(model_id=ref.model_id, version=self._number(ref), alias=alias)

    def deprecate(self, name: str, message: str) -> VersionRecord:
        """Flags a version as deprecated with a message shown to clients."""
        if len(message) > MAX_DEPRECATION_MESSAGE:
            raise InvalidArgument(f"the deprecation message has {len(message)} characters; at most "
                                  f"{MAX_DEPRECATION_MESSAGE} are allowed")
        ref = parse_version_name(name)
        return self._catalog.deprecate(model_id=ref.model_id, version=self._number(ref), message=message)

    def delete(self, name: str) -> None:
        """Deletes a version and its aliases; removes blobs no other version uses."""
        ref = parse_version_name(name)
        number = self._number(ref)
        for sha in self._catalog.delete_version(model_id=ref.model_id, version=number):
            self._blobs.delete(sha)
        logger.info("deleted %s", version_name(ref.model_id, number))

    # -- upload --------------------------------------------------------------
    def create_version(self, messages: Iterable[UploadHeader | UploadChunk]) -> VersionRecord:
        """Consumes an upload stream (header, then chunks) and creates the version.

        Raises InvalidArgument for anything malformed, ResourceExhausted for an
        artifact above the limit; on any error nothing becomes visible and
        every temp file is removed.
        """
        stream = iter(messages)
        header = next(stream, None)
        if not isinstance(header, UploadHeader):
            raise InvalidArgument("the first message of CreateModelVersion must be the header (model, card, "
                                  "artifact declarations); send the header, then the chunks")
        model_id = parse_model_name(header.parent)
        card = validate.check_card(header.card)
        self._check_declarations(header.artifacts)
        with contextlib.ExitStack() as cleanup:
            incoming: dict[ArtifactFormat, _Incoming] = {}
            for declaration in header.artifacts:
                writer = self._blobs.writer(max_bytes=declaration.size_bytes,
                                            label=f"the {declaration.format.name} artifact")
                cleanup.callback(writer.discard)
                incoming[declaration.format] = _Incoming(declaration=declaration, writer=writer)
            self._receive(stream, incoming)
            for item in incoming.values():
                self._check_received(item)
            artifacts = self._validate_and_store(card=card, incoming=incoming, cleanup=cleanup)
        record = self._catalog.create_version(model_id=model_id, card=card, artifacts=artifacts)
        logger.info("created %s (%s)", record.name,
                    ", ".join(f"{a.format.value}{' derived' if a.derived else ''} {a.size_bytes} B" for a in artifacts))
        return record

    def _check_declarations(self, declarations: tuple[ArtifactDeclaration, ...]) -> None:
        formats = [d.format for d in declarations]
        if len(formats) != len(set(formats)):
            raise InvalidArgument("the header declares the same artifact format twice; declare each at most once")
        weights = [f for f in formats if f in WEIGHT_FORMATS]
        if len(weights) != 1:
            raise InvalidArgument("declare exactly one weights artifact: SAFETENSORS (preferred) or "
                                  "TORCH_STATE_DICT; ONNX alone cannot be checked against the architecture")
        for d in declarations:
            check_sha256(d.sha256, what=f"the declared sha256 of the {d.format.name} artifact")
            if d.size_bytes <= 0:
                raise InvalidArgument(f"the declared size of the {d.format.name} artifact must be positive, "
                                      f"got {d.size_bytes}")
            if d.size_bytes > self._limits.max_artifact_bytes:
                raise ResourceExhausted(f"the {d.format.name} artifact declares {d.size_bytes} bytes, above the "
                                        f"server's limit of {self._limits.max_artifact_bytes}; ask the operator to "
                                        "raise --max-artifact-mb")

    @staticmethod
    def _receive(stream: Iterator[UploadHeader | UploadChunk], incoming: dict[ArtifactFormat, _Incoming]) -> None:
        for message in stream:
            if isinstance(message, UploadHeader):
                raise InvalidArgument("a second header arrived mid-upload; send exactly one header, first")
            item = incoming.get(message.format)
            if item is None:
                raise InvalidArgument(f"a chunk of format {message.format.name} arrived but the header declared "
                                      f"only {[f.name for f in incoming]}")
            if item.writer.size + len(message.data) > item.declaration.size_bytes:
                raise InvalidArgument(f"the {message.format.name} artifact is longer than its declared "
                                      f"{item.declaration.size_bytes} bytes; declare the real size")
            item.writer.write(message.data)

    @staticmethod
    def _check_received(item: _Incoming) -> None:
        d, w = item.declaration, item.writer
        if w.size != d.size_bytes:
            raise InvalidArgument(f"the {d.format.name} artifact ended after {w.size} of its declared "
                                  f"{d.size_bytes} bytes; send every chunk (or declare the real size)")
        if w.sha256 != d.sha256:
            raise InvalidArgument(f"sha256 mismatch for the {d.format.name} artifact: declared {d.sha256}, "
                                  f"received bytes hash to {w.sha256}; the upload was corrupted or the "
                                  "declaration is wrong — recompute it and upload again")
        w.finish()

    def _validate_and_store(self, *, card: ModelCard, incoming: dict[ArtifactFormat, _Incoming],
                            cleanup: contextlib.ExitStack) -> list[ArtifactRecord]:
        """Runs every check on the temp files, then moves the blobs into place."""
        weights_path: Path
        if ArtifactFormat.TORCH_STATE_DICT in incoming:
            weights_path = self._blobs.temp_path(suffix=".safetensors.tmp")
            cleanup.callback(weights_path.unlink, missing_ok=True)
            validate.convert_torch_state_dict(incoming[ArtifactFormat.TORCH_STATE_DICT].writer.path, weights_path)
        else:
            weights_path = incoming[ArtifactFormat.SAFETENSORS].writer.path
        header = validate.parse_safetensors_header(weights_path)
        model = validate.check_tensors_match(header, card)
        validate.load_weights(model, weights_path)

        onnx_path: Path
        derived = ArtifactFormat.ONNX not in incoming
        if derived:
            onnx_path = self._blobs.temp_path(suffix=".onnx.tmp")
            cleanup.callback(onnx_path.unlink, missing_ok=True)
            try:
                with _EXPORT_LOCK:
                    export_onnx(model, onnx_path)
            except ModelError as exc:
                raise InvalidArgument(f"could not derive ONNX from the weights: {exc}; upload an ONNX artifact") from None
        else:
            onnx_path = incoming[ArtifactFormat.ONNX].writer.path
            validate.check_onnx(onnx_path, model=model)

        # Uploaded files were hashed while streaming; converted and derived ones are hashed here.
        weights_writer = incoming.get(ArtifactFormat.SAFETENSORS)
        weights = _store(self._blobs, weights_path, fmt=ArtifactFormat.SAFETENSORS,
                         derived=weights_writer is None, writer=weights_writer and weights_writer.writer)
        onnx_writer = incoming.get(ArtifactFormat.ONNX)
        onnx = _store(self._blobs, onnx_path, fmt=ArtifactFormat.ONNX, derived=derived,
                      writer=onnx_writer and onnx_writer.writer)
        return [weights, onnx]


def _store(blobs: BlobStore, path: Path, *, fmt: ArtifactFormat, derived: bool,
           writer: BlobWriter | None) -> ArtifactRecord:
    """Moves a checked temp file into the blob store, hashing it unless its writer already did."""
    if writer is not None:
        sha256, size = writer.sha256, writer.size
    else:
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1024 * 1024), b""):
                h.update(block)
                size += len(block)
        sha256 = h.hexdigest()
    blobs.adopt(path, sha256=sha256)
    return ArtifactRecord(format=fmt, size_bytes=size, sha256=sha256, derived=derived)
