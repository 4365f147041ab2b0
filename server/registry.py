"""Domain logic of the registry: uploads, versions, aliases, deprecation, deletion.

An upload is an `UploadSession`: the header is checked first (names,
declarations, card text, and the card against its architecture on the meta
device in the sandbox, so an oversized model is refused before any artifact
byte arrives); each declared artifact streams into a temp file in the blob
store (running sha256, size limit; never buffered whole in memory);
`finish` validates everything in the sandbox and only then moves blobs into
place and commits the catalog rows in one transaction. Anything that goes
wrong before that commit — a failed check, a cut-off stream, a crash —
leaves no visible version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from xfer.models.card import ModelCard, validate_card
from xfer.models.errors import ModelError
from xfer.models.files import sha256_file
from xfer.server import validate
from xfer.server.blobs import BlobStore, BlobWriter, check_sha256
from xfer.server.catalog import Catalog
from xfer.server.domain import (
    ArtifactDeclaration,
    ArtifactFormat,
    ArtifactRecord,
    ModelRecord,
    Page,
    Signature,
    UploadChunk,
    UploadHeader,
    VersionRecord,
    version_name,
)
from xfer.server.errors import InvalidArgument, Reason, ResourceExhausted
from xfer.server.names import VersionRef, check_alias, parse_model_name, parse_version_name
from xfer.server.policy import PublishPolicy
from xfer.server.policy import enforce as enforce_policy
from xfer.server.sandbox import Limits, Sandbox

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_DEPRECATION_MESSAGE = 1024
WEIGHT_FORMATS = (ArtifactFormat.SAFETENSORS, ArtifactFormat.TORCH_STATE_DICT)
#: What checking a card may use: the module is built on the meta device, so this is Python objects only.
CARD_LIMITS = Limits(memory_bytes=512 * MIB, cpu_seconds=30, wall_seconds=60.0, file_bytes=MIB)


@dataclasses.dataclass(frozen=True)
class ValidationLimits:
    """What validating one upload's artifacts may use (in the sandbox)."""

    #: Memory every validation may use, plus `memory_per_byte` times the bytes it checks.
    memory_base_bytes: int = 512 * MIB
    #: Weights are held by torch, the ONNX graph by onnx and by onnxruntime, an export by both.
    memory_per_byte: int = 4
    cpu_seconds: int = 300
    wall_seconds: float = 600.0

    def for_upload(self, *, artifact_bytes: int, weight_bytes: int) -> Limits:
        """The limits of one upload's artifact checks."""
        return Limits(
            memory_bytes=self.memory_base_bytes + self.memory_per_byte * (artifact_bytes + weight_bytes),
            cpu_seconds=self.cpu_seconds,
            wall_seconds=self.wall_seconds,
            file_bytes=2 * (artifact_bytes + weight_bytes) + 64 * MIB,
        )


@dataclasses.dataclass(frozen=True)
class RegistryLimits:
    """Bounds the registry enforces on uploads."""

    max_artifact_bytes: int
    validation: ValidationLimits = ValidationLimits()


@dataclasses.dataclass(frozen=True)
class CardCheck:
    """What the sandbox learnt about a card: canonical form and the size of the model it describes."""

    card: ModelCard
    parameters: int
    weight_bytes: int


@dataclasses.dataclass
class _Incoming:
    declaration: ArtifactDeclaration
    writer: BlobWriter


class Registry:
    """Versions of source models: create, read, alias, deprecate, delete."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        blobs: BlobStore,
        limits: RegistryLimits,
        sandbox: Sandbox,
        observe_validation: Callable[[str, str, float], None] | None = None,
        policy: PublishPolicy = PublishPolicy(),
    ) -> None:
        """`observe_validation(job, outcome, seconds)` hears about every sandboxed check (for metrics);
        `policy` is what a new version's card must meet to be published."""
        self._catalog = catalog
        self._blobs = blobs
        self._limits = limits
        self._sandbox = sandbox
        self._observe = observe_validation
        self._policy = policy

    @property
    def blobs(self) -> BlobStore:
        """The blob store holding artifact bytes."""
        return self._blobs

    @property
    def catalog(self) -> Catalog:
        """The metadata store."""
        return self._catalog

    # -- names ---------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """`models/{m}/versions/{number-or-alias}` -> canonical numbered name.

        Raises InvalidArgument for a malformed name and NotFound for an unknown
        model, version or alias. The run store uses this for run reports.
        """
        ref = parse_version_name(name, field="run.model_version")
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
            raise InvalidArgument(
                f"the deprecation message has {len(message)} characters; at most {MAX_DEPRECATION_MESSAGE} are allowed",
                field="message",
            )
        bad = validate.first_control_character(message, multiline=True)
        if bad is not None:
            raise InvalidArgument(
                f"the deprecation message contains the control character U+{ord(bad):04X}; use "
                "printable text (newline and tab are allowed)",
                field="message",
            )
        ref = parse_version_name(name)
        return self._catalog.deprecate(model_id=ref.model_id, version=self._number(ref), message=message)

    def delete(self, name: str) -> None:
        """Deletes a version and its aliases; its blobs go when the collector finds them unreferenced."""
        ref = parse_version_name(name)
        number = self._number(ref)
        self._catalog.delete_version(model_id=ref.model_id, version=number)
        logger.info("deleted %s", version_name(ref.model_id, number))

    def collect_garbage(self, *, min_age_s: float = 3600.0) -> int:
        """Removes blob files no version references and nobody touched for `min_age_s`; returns how many."""
        return self._blobs.collect_garbage(
            referenced=self._catalog.referenced_shas, is_referenced=self._catalog.is_referenced, min_age_s=min_age_s
        )

    # -- upload --------------------------------------------------------------
    def create_version(self, messages: Iterable[UploadHeader | UploadChunk]) -> VersionRecord:
        """Consumes a whole upload stream (header, then chunks) and creates the version.

        Raises InvalidArgument for anything malformed, ResourceExhausted for an
        artifact above the limit; on any error nothing becomes visible and
        every temp file is removed.
        """
        stream = iter(messages)
        header = next(stream, None)
        if not isinstance(header, UploadHeader):
            raise InvalidArgument(
                "the first message of CreateModelVersion must be the header (model, card, "
                "artifact declarations); send the header, then the chunks",
                reason=Reason.INVALID_UPLOAD,
            )
        with self.begin_upload(header) as session:
            for message in stream:
                session.write(message)
            return session.finish()

    def begin_upload(self, header: UploadHeader) -> UploadSession:
        """Checks an upload's header and opens a temp file per declared artifact.

        The card is checked against its architecture in the sandbox on the meta
        device: a card describing a model larger than the size limit (or than
        the declared weights) is refused here, before any artifact byte arrives.
        """
        model_id = parse_model_name(header.parent, field="header.parent")
        self._check_declarations(header.artifacts)
        checked = self.check_card(header.card)
        enforce_policy(self._policy, checked.card)
        weights = next(d for d in header.artifacts if d.format in WEIGHT_FORMATS)
        if checked.weight_bytes > self._limits.max_artifact_bytes:
            raise ResourceExhausted(
                f"the card describes a model of {checked.parameters:,} parameters "
                f"({checked.weight_bytes:,} bytes of weights), above the server's artifact limit "
                f"of {self._limits.max_artifact_bytes:,} bytes; ask the operator to raise "
                "--max-artifact-mb",
                reason=Reason.MODEL_TOO_LARGE,
            )
        if weights.format == ArtifactFormat.SAFETENSORS and checked.weight_bytes > weights.size_bytes:
            raise InvalidArgument(
                f"the card describes {checked.weight_bytes:,} bytes of weights but the SAFETENSORS "
                f"artifact declares only {weights.size_bytes:,} bytes; upload the weights of the "
                "model the card describes",
                reason=Reason.SIZE_MISMATCH,
                field="header.artifacts.size_bytes",
            )
        if header.signatures and checked.card != header.card:
            raise InvalidArgument(
                "the card is signed but not canonical: its architecture_config lacks fields the "
                "architecture defines (or gives them as other types), so the stored card would not "
                "be the one signed. Sign the card `python -m xfer.models.train` writes, with every "
                "config field given",
                reason=Reason.INVALID_CARD,
                field="header.card",
            )
        return UploadSession(
            registry=self, model_id=model_id, card=checked, declarations=header.artifacts, signatures=header.signatures
        )

    def check_card(self, card: ModelCard) -> CardCheck:
        """Validates the card (fields, text, architecture) and returns it canonical, with the model's size.

        Protobuf Structs carry every number as a double; the canonical config has
        the architecture's own types and every default filled in.
        """
        try:
            validate_card(card)
        except ModelError as exc:
            raise InvalidArgument(
                f"invalid model card: {exc}", reason=Reason.INVALID_CARD, field="header.card"
            ) from None
        validate.check_card_text(card)
        result = self._sandbox.run("card", {"card": card.to_dict()}, limits=CARD_LIMITS, observe=self._observe).value
        return CardCheck(
            card=dataclasses.replace(card, architecture_config=result["config"]),
            parameters=int(result["parameters"]),
            weight_bytes=int(result["weight_bytes"]),
        )

    def _check_declarations(self, declarations: tuple[ArtifactDeclaration, ...]) -> None:
        formats = [d.format for d in declarations]
        if len(formats) != len(set(formats)):
            raise InvalidArgument(
                "the header declares the same artifact format twice; declare each at most once",
                reason=Reason.INVALID_UPLOAD,
                field="header.artifacts",
            )
        weights = [f for f in formats if f in WEIGHT_FORMATS]
        if len(weights) != 1:
            raise InvalidArgument(
                "declare exactly one weights artifact: SAFETENSORS (preferred) or "
                "TORCH_STATE_DICT; ONNX alone cannot be checked against the architecture",
                reason=Reason.INVALID_UPLOAD,
                field="header.artifacts",
            )
        for d in declarations:
            check_sha256(d.sha256, what=f"the declared sha256 of the {d.format.name} artifact")
            if d.size_bytes <= 0:
                raise InvalidArgument(
                    f"the declared size of the {d.format.name} artifact must be positive, got {d.size_bytes}",
                    reason=Reason.INVALID_UPLOAD,
                    field="header.artifacts.size_bytes",
                )
            if d.size_bytes > self._limits.max_artifact_bytes:
                raise ResourceExhausted(
                    f"the {d.format.name} artifact declares {d.size_bytes} bytes, above the "
                    f"server's limit of {self._limits.max_artifact_bytes}; ask the operator to "
                    "raise --max-artifact-mb",
                    reason=Reason.ARTIFACT_TOO_LARGE,
                )

    def _validate_and_store(
        self, *, checked: CardCheck, incoming: dict[ArtifactFormat, _Incoming], cleanup: contextlib.ExitStack
    ) -> list[ArtifactRecord]:
        """Runs every artifact check in the sandbox on the temp files, then moves the blobs into place."""
        payload: dict[str, object] = {"card": checked.card.to_dict()}
        weights_writer = incoming.get(ArtifactFormat.SAFETENSORS)
        weights_path: Path
        if ArtifactFormat.TORCH_STATE_DICT in incoming:
            weights_path = self._temp(".safetensors.tmp", cleanup)
            payload.update(
                weights_path=str(incoming[ArtifactFormat.TORCH_STATE_DICT].writer.path), convert_to=str(weights_path)
            )
        else:
            assert weights_writer is not None
            weights_path = weights_writer.writer.path
            payload["weights_path"] = str(weights_path)
        onnx_writer = incoming.get(ArtifactFormat.ONNX)
        onnx_path: Path
        if onnx_writer is None:
            onnx_path = self._temp(".onnx.tmp", cleanup)
            payload["derive_to"] = str(onnx_path)
        else:
            onnx_path = onnx_writer.writer.path
            payload["onnx_path"] = str(onnx_path)
        artifact_bytes = sum(item.declaration.size_bytes for item in incoming.values())
        limits = self._limits.validation.for_upload(artifact_bytes=artifact_bytes, weight_bytes=checked.weight_bytes)
        result = self._sandbox.run("artifacts", payload, limits=limits, observe=self._observe)
        logger.info(
            "validated artifacts in %.2fs (%d probes, max |onnx - torch| %.2g%s)",
            result.seconds,
            result.value["probes"],
            result.value["max_abs_diff"],
            ", ONNX derived" if result.value["derived_onnx"] else "",
        )
        # Uploaded files were hashed while streaming; converted and derived ones are hashed here.
        weights = _store(
            self._blobs,
            weights_path,
            fmt=ArtifactFormat.SAFETENSORS,
            derived=weights_writer is None,
            writer=weights_writer and weights_writer.writer,
        )
        onnx = _store(
            self._blobs,
            onnx_path,
            fmt=ArtifactFormat.ONNX,
            derived=onnx_writer is None,
            writer=onnx_writer and onnx_writer.writer,
        )
        return [weights, onnx]

    def _temp(self, suffix: str, cleanup: contextlib.ExitStack) -> Path:
        path = self._blobs.temp_path(suffix=suffix)
        cleanup.callback(path.unlink, missing_ok=True)
        return path


class UploadSession:
    """One upload in progress: feed it chunks, then `finish` (or `discard`; a `with` block discards on error)."""

    def __init__(
        self,
        *,
        registry: Registry,
        model_id: str,
        card: CardCheck,
        declarations: tuple[ArtifactDeclaration, ...],
        signatures: tuple[Signature, ...] = (),
    ) -> None:
        self._registry = registry
        self._model_id = model_id
        self._card = card
        self._signatures = signatures
        self._cleanup = contextlib.ExitStack()
        self._incoming: dict[ArtifactFormat, _Incoming] = {}
        try:
            for declaration in declarations:
                writer = registry.blobs.writer(
                    max_bytes=declaration.size_bytes, label=f"the {declaration.format.name} artifact"
                )
                self._cleanup.callback(writer.discard)
                self._incoming[declaration.format] = _Incoming(declaration=declaration, writer=writer)
        except BaseException:
            self._cleanup.close()
            raise

    def __enter__(self) -> UploadSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    @property
    def received_bytes(self) -> int:
        """Bytes received so far, over all artifacts."""
        return sum(item.writer.size for item in self._incoming.values())

    def write(self, message: UploadHeader | UploadChunk) -> None:
        """Appends one chunk to its artifact's temp file."""
        if isinstance(message, UploadHeader):
            raise InvalidArgument(
                "a second header arrived mid-upload; send exactly one header, first", reason=Reason.INVALID_UPLOAD
            )
        item = self._incoming.get(message.format)
        if item is None:
            raise InvalidArgument(
                f"a chunk of format {message.format.name} arrived but the header declared "
                f"only {[f.name for f in self._incoming]}",
                reason=Reason.INVALID_UPLOAD,
                field="chunk.format",
            )
        if item.writer.size + len(message.data) > item.declaration.size_bytes:
            raise InvalidArgument(
                f"the {message.format.name} artifact is longer than its declared "
                f"{item.declaration.size_bytes} bytes; declare the real size",
                reason=Reason.SIZE_MISMATCH,
                field="header.artifacts.size_bytes",
            )
        item.writer.write(message.data)

    def finish(self) -> VersionRecord:
        """Checks sizes and digests, validates in the sandbox, stores the blobs and commits the version."""
        for item in self._incoming.values():
            _check_received(item)
        artifacts = self._registry._validate_and_store(
            checked=self._card, incoming=self._incoming, cleanup=self._cleanup
        )
        record = self._registry.catalog.create_version(
            model_id=self._model_id, card=self._card.card, artifacts=artifacts, signatures=self._signatures
        )
        logger.info(
            "created %s (%s)",
            record.name,
            ", ".join(f"{a.format.value}{' derived' if a.derived else ''} {a.size_bytes} B" for a in artifacts),
        )
        self.discard()
        return record

    def discard(self) -> None:
        """Removes every temp file of this upload (safe to call twice, and after `finish`)."""
        self._cleanup.close()


def _check_received(item: _Incoming) -> None:
    d, w = item.declaration, item.writer
    if w.size != d.size_bytes:
        raise InvalidArgument(
            f"the {d.format.name} artifact ended after {w.size} of its declared "
            f"{d.size_bytes} bytes; send every chunk (or declare the real size)",
            reason=Reason.SIZE_MISMATCH,
            field="header.artifacts.size_bytes",
        )
    if w.sha256 != d.sha256:
        raise InvalidArgument(
            f"sha256 mismatch for the {d.format.name} artifact: declared {d.sha256}, "
            f"received bytes hash to {w.sha256}; the upload was corrupted or the "
            "declaration is wrong — recompute it and upload again",
            reason=Reason.DIGEST_MISMATCH,
            field="header.artifacts.sha256",
            metadata={"format": d.format.name, "declared": d.sha256, "received": w.sha256},
        )
    w.finish()


def _store(
    blobs: BlobStore, path: Path, *, fmt: ArtifactFormat, derived: bool, writer: BlobWriter | None
) -> ArtifactRecord:
    """Moves a checked temp file into the blob store, hashing it unless its writer already did."""
    if writer is not None:
        sha256, size = writer.sha256, writer.size
    else:
        sha256, size = sha256_file(path), path.stat().st_size
    blobs.adopt(path, sha256=sha256)
    return ArtifactRecord(format=fmt, size_bytes=size, sha256=sha256, derived=derived)
