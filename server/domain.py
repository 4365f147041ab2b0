"""Plain domain types shared by the registry, catalog and converters (no protobuf here)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Generic, TypeVar

from xfer.models.card import ModelCard

T = TypeVar("T")


class ArtifactFormat(str, enum.Enum):
    """How an artifact's bytes are serialised."""

    SAFETENSORS = "safetensors"
    ONNX = "onnx"
    #: Upload only: converted to SAFETENSORS before it is stored.
    TORCH_STATE_DICT = "torch_state_dict"


@dataclasses.dataclass(frozen=True)
class ArtifactRecord:
    """One stored artifact of a version."""

    format: ArtifactFormat
    size_bytes: int
    sha256: str
    derived: bool = False


@dataclasses.dataclass(frozen=True)
class Signature:
    """An operator's signature over a version's manifest, stored and served as uploaded.

    The server checks only its form; whether it is valid, and by a key worth
    trusting, is each client's decision (they hold the publisher keys).
    """

    key_id: str
    algorithm: str
    signature: bytes


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    """An immutable, numbered version as the catalog stores it."""

    model_id: str
    version: int
    card: ModelCard
    artifacts: tuple[ArtifactRecord, ...]
    aliases: tuple[str, ...]
    create_time: dt.datetime
    deprecated: bool = False
    deprecation_message: str = ""
    signatures: tuple[Signature, ...] = ()

    @property
    def name(self) -> str:
        """Resource name models/{model}/versions/{version}."""
        return version_name(self.model_id, self.version)

    def artifact(self, fmt: ArtifactFormat) -> ArtifactRecord | None:
        """The artifact of format `fmt`, or None."""
        return next((a for a in self.artifacts if a.format == fmt), None)


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """A model and a summary of its versions."""

    model_id: str
    latest_version: int | None
    version_count: int
    #: alias -> version number, `latest` included.
    aliases: dict[str, int]
    latest_card: ModelCard | None
    create_time: dt.datetime
    update_time: dt.datetime

    @property
    def name(self) -> str:
        """Resource name models/{model}."""
        return f"models/{self.model_id}"


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; an empty token means the last page."""

    items: tuple[T, ...]
    next_page_token: str = ""


@dataclasses.dataclass(frozen=True)
class ArtifactDeclaration:
    """An artifact an upload promises to send."""

    format: ArtifactFormat
    size_bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class UploadHeader:
    """The first message of an upload."""

    parent: str
    card: ModelCard
    artifacts: tuple[ArtifactDeclaration, ...]
    signatures: tuple[Signature, ...] = ()


@dataclasses.dataclass(frozen=True)
class UploadChunk:
    """A piece of one declared artifact."""

    format: ArtifactFormat
    data: bytes


def version_name(model_id: str, version: int | str) -> str:
    """models/{model}/versions/{version}."""
    return f"models/{model_id}/versions/{version}"
