"""Plain dataclasses the SDK returns; no protobuf types ever leak to callers.

`client/convert.py` is the only place these are built from (or turned into)
`xfer.v1` messages.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
from pathlib import Path
from typing import Any

from xfer.models.card import ModelCard


class ArtifactFormat(str, enum.Enum):
    """The serialisations a model version can be pulled in."""

    SAFETENSORS = "safetensors"
    ONNX = "onnx"
    TORCH_STATE_DICT = "torch-state-dict"  # upload only; the server stores it as safetensors

    @classmethod
    def parse(cls, value: str | ArtifactFormat) -> ArtifactFormat:
        """Accepts an enum member or its name, case-insensitively ('onnx', 'SAFETENSORS')."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower().replace("_", "-")
        for member in cls:
            if member.value == text:
                return member
        from xfer.client.errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown artifact format {value!r}; valid: {', '.join(m.value for m in cls)}")

    @property
    def suffix(self) -> str:
        """The file name suffix of this format."""
        return {"safetensors": ".safetensors", "onnx": ".onnx", "torch-state-dict": ".pt"}[self.value]


class DeviceKind(str, enum.Enum):
    """The kind of device an adaptation run trained on."""

    UNSPECIFIED = "unspecified"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"

    @classmethod
    def parse(cls, value: str | DeviceKind | None) -> DeviceKind:
        """Accepts a member, its value, or a torch device string such as 'cuda:0'."""
        if value is None:
            return cls.UNSPECIFIED
        if isinstance(value, cls):
            return value
        # Also the proto enum's names ("DEVICE_KIND_CUDA"), as json_format writes them.
        text = str(value).strip().lower().removeprefix("device_kind_").split(":", 1)[0]
        for member in cls:
            if member.value == text:
                return member
        from xfer.client.errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown device kind {value!r}; valid: cpu, cuda, mps")


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One stored serialisation of a version."""

    format: ArtifactFormat
    size_bytes: int
    sha256: str
    derived: bool = False


@dataclasses.dataclass(frozen=True)
class ManifestSignature:
    """An operator's signature over a version's manifest (see `xfer.client.signing`)."""

    key_id: str
    algorithm: str
    signature: bytes

    def to_dict(self) -> dict[str, str]:
        """JSON-able form: the signature in base64."""
        return {
            "key_id": self.key_id,
            "algorithm": self.algorithm,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> ManifestSignature:
        """The inverse of `to_dict`."""
        return cls(key_id=data["key_id"], algorithm=data["algorithm"], signature=base64.b64decode(data["signature"]))


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """An immutable, numbered version of a source model."""

    name: str
    model: str
    version: int
    card: ModelCard
    artifacts: tuple[Artifact, ...]
    aliases: tuple[str, ...] = ()
    create_time: dt.datetime | None = None
    deprecated: bool = False
    deprecation_message: str = ""
    signatures: tuple[ManifestSignature, ...] = ()

    def artifact(self, fmt: ArtifactFormat | str) -> Artifact | None:
        """The artifact of format `fmt`, or None when this version has none."""
        fmt = ArtifactFormat.parse(fmt)
        return next((a for a in self.artifacts if a.format == fmt), None)

    @property
    def ref(self) -> str:
        """The short reference of this exact version, e.g. `digits-convnet:3`."""
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (used by `xfer show --json`)."""
        return {
            "name": self.name,
            "model": self.model,
            "version": self.version,
            "ref": self.ref,
            "aliases": list(self.aliases),
            "create_time": _iso(self.create_time),
            "deprecated": self.deprecated,
            "deprecation_message": self.deprecation_message,
            "artifacts": [
                {"format": a.format.value, "size_bytes": a.size_bytes, "sha256": a.sha256, "derived": a.derived}
                for a in self.artifacts
            ],
            "card": self.card.to_dict(),
            "signatures": [s.to_dict() for s in self.signatures],
        }


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """A source model as listings show it: its newest version and aliases."""

    name: str
    model: str
    latest_version: str
    version_count: int
    aliases: dict[str, int]
    latest_card: ModelCard | None
    create_time: dt.datetime | None = None
    update_time: dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (used by `xfer models --json`)."""
        return {
            "name": self.name,
            "model": self.model,
            "latest_version": self.latest_version,
            "version_count": self.version_count,
            "aliases": dict(self.aliases),
            "latest_card": self.latest_card.to_dict() if self.latest_card else None,
            "create_time": _iso(self.create_time),
            "update_time": _iso(self.update_time),
        }


@dataclasses.dataclass(frozen=True)
class RunPrivacy:
    """Differential privacy of a client's adaptation run."""

    dp: bool = False
    epsilon_spent: float = 0.0
    delta: float = 0.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0


@dataclasses.dataclass(frozen=True)
class Run:
    """The aggregate outcome of one adaptation run; never data.

    `model_version` takes a reference (`digits-convnet:3`) or resource name;
    the SDK resolves it. `train_examples_pow2` is the training-set size
    rounded up to a power of two (`size_bucket`): the exact count never
    leaves the machine.
    """

    run_id: str
    model_version: str
    strategy: str
    metrics: dict[str, float]
    hyperparameters: dict[str, str] = dataclasses.field(default_factory=dict)
    privacy: RunPrivacy = dataclasses.field(default_factory=RunPrivacy)
    train_examples_pow2: int = 0
    device_kind: DeviceKind = DeviceKind.UNSPECIFIED
    wall_seconds: float = 0.0
    name: str = ""
    create_time: dt.datetime | None = None

    @classmethod
    def from_report_fields(cls, fields: dict[str, Any], *, run_id: str, model_version: str) -> Run:
        """A run from `FinetuneOutcome.report_fields()`, which is shaped like the proto `Run` as JSON.

        Accepts `strategy` as a name or as {"name", "hyperparameters"}, and
        `device_kind` as "cpu" or "DEVICE_KIND_CPU".
        """
        strategy = fields.get("strategy") or {}
        if isinstance(strategy, str):
            strategy = {"name": strategy, "hyperparameters": fields.get("hyperparameters") or {}}
        privacy = dict(fields.get("privacy") or {})
        known = {f.name for f in dataclasses.fields(RunPrivacy)}
        return cls(
            run_id=run_id,
            model_version=model_version,
            strategy=str(strategy.get("name", "")),
            hyperparameters={str(k): str(v) for k, v in dict(strategy.get("hyperparameters") or {}).items()},
            metrics={str(k): float(v) for k, v in dict(fields.get("metrics") or {}).items()},
            privacy=RunPrivacy(**{k: v for k, v in privacy.items() if k in known}),
            train_examples_pow2=int(fields.get("train_examples_pow2") or 0),
            device_kind=DeviceKind.parse(fields.get("device_kind")),
            wall_seconds=float(fields.get("wall_seconds") or 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (used by `xfer runs --json`)."""
        return {
            "name": self.name,
            "run_id": self.run_id,
            "model_version": self.model_version,
            "strategy": self.strategy,
            "hyperparameters": dict(self.hyperparameters),
            "metrics": dict(self.metrics),
            "privacy": dataclasses.asdict(self.privacy),
            "train_examples_pow2": self.train_examples_pow2,
            "device_kind": self.device_kind.value,
            "wall_seconds": self.wall_seconds,
            "create_time": _iso(self.create_time),
        }


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): the only training-set size a report may carry."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()  # exact: no float log2


@dataclasses.dataclass(frozen=True)
class ReportedRun:
    """What the server stored for a report, and whether it had it already."""

    run: Run
    duplicate: bool


@dataclasses.dataclass(frozen=True)
class LeaderboardEntry:
    """Statistics of one metric over the runs of one (version, strategy, dp) group."""

    model_version: str
    strategy: str
    dp: bool
    count: int
    mean: float
    std: float
    best: float
    best_run_id: str


@dataclasses.dataclass(frozen=True)
class Leaderboard:
    """Best mean first."""

    metric: str
    entries: tuple[LeaderboardEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (used by `xfer leaderboard --json`)."""
        return {"metric": self.metric, "entries": [dataclasses.asdict(e) for e in self.entries]}


@dataclasses.dataclass(frozen=True)
class PullResult:
    """Where a pulled artifact lies and how it got there.

    `path` is a readable file name (`.../snapshots/{model}/{version}/model.onnx`,
    a link into the content-addressed store); `blob_path` the verified blob
    itself. `transferred_bytes` counts what came over the wire in this call
    (0 on a cache hit); `resumed_from` is the offset of the first ReadArtifact
    (non-zero when an interrupted pull was resumed).
    """

    path: Path
    blob_path: Path
    model_version: ModelVersion
    format: ArtifactFormat
    sha256: str
    size_bytes: int
    cache_hit: bool
    transferred_bytes: int
    resumed_from: int
    restarts: int = 0

    def __fspath__(self) -> str:
        """A PullResult is usable wherever a path is: `open(client.pull(ref), "rb")`."""
        return str(self.path)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A torch module rebuilt from `models/` with the pulled weights loaded strictly."""

    module: Any
    card: ModelCard
    model_version: ModelVersion
    path: Path


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
