"""proto <-> domain converters for the client; with transport.py the only client module importing *_pb2 (the card converter is shared: xfer.models.card_proto)."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

from xfer.client.domain import (
    Artifact,
    ArtifactFormat,
    DeviceKind,
    Leaderboard,
    LeaderboardEntry,
    ManifestSignature,
    ModelSummary,
    ModelVersion,
    ReportedRun,
    Run,
    RunPrivacy,
)
from xfer.models.card_proto import card_from_proto
from xfer.v1 import metrics_service_pb2 as metrics_pb2
from xfer.v1 import model_pb2

_FORMAT_TO_PB = {
    ArtifactFormat.SAFETENSORS: model_pb2.ARTIFACT_FORMAT_SAFETENSORS,
    ArtifactFormat.ONNX: model_pb2.ARTIFACT_FORMAT_ONNX,
    ArtifactFormat.TORCH_STATE_DICT: model_pb2.ARTIFACT_FORMAT_TORCH_STATE_DICT,
}
_FORMAT_FROM_PB = {v: k for k, v in _FORMAT_TO_PB.items()}
_DEVICE_TO_PB = {
    DeviceKind.UNSPECIFIED: metrics_pb2.DEVICE_KIND_UNSPECIFIED,
    DeviceKind.CPU: metrics_pb2.DEVICE_KIND_CPU,
    DeviceKind.CUDA: metrics_pb2.DEVICE_KIND_CUDA,
    DeviceKind.MPS: metrics_pb2.DEVICE_KIND_MPS,
}
_DEVICE_FROM_PB = {v: k for k, v in _DEVICE_TO_PB.items()}
GOALS = {"maximize": metrics_pb2.METRIC_GOAL_MAXIMIZE, "minimize": metrics_pb2.METRIC_GOAL_MINIMIZE}


def format_to_pb(fmt: ArtifactFormat) -> int:
    """The `xfer.v1.ArtifactFormat` value of a format."""
    return _FORMAT_TO_PB[fmt]


def _timestamp(ts: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    if not present:
        return None
    return ts.ToDatetime(tzinfo=dt.UTC)


def _model_id(name: str) -> str:
    parts = name.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == "models" else name


def artifact_from_pb(pb: model_pb2.Artifact) -> Artifact | None:
    """A domain artifact, or None for a format this client does not know."""
    fmt = _FORMAT_FROM_PB.get(pb.format)
    if fmt is None:
        return None
    return Artifact(format=fmt, size_bytes=int(pb.size_bytes), sha256=pb.sha256, derived=pb.derived)


def version_from_pb(pb: model_pb2.ModelVersion) -> ModelVersion:
    """A domain `ModelVersion` from its wire form."""
    artifacts = tuple(a for a in (artifact_from_pb(x) for x in pb.artifacts) if a is not None)
    return ModelVersion(
        name=pb.name,
        model=_model_id(pb.name),
        version=int(pb.version),
        card=card_from_proto(pb.card),
        artifacts=artifacts,
        aliases=tuple(pb.aliases),
        create_time=_timestamp(pb.create_time, pb.HasField("create_time")),
        deprecated=pb.deprecated,
        deprecation_message=pb.deprecation_message,
        signatures=tuple(
            ManifestSignature(key_id=s.key_id, algorithm=s.algorithm, signature=bytes(s.signature))
            for s in pb.signatures
        ),
    )


def signature_to_pb(signature: ManifestSignature) -> model_pb2.ManifestSignature:
    """The wire form of a manifest signature."""
    return model_pb2.ManifestSignature(
        key_id=signature.key_id, algorithm=signature.algorithm, signature=signature.signature
    )


def model_from_pb(pb: model_pb2.Model) -> ModelSummary:
    """A domain `ModelSummary` from a `xfer.v1.Model`."""
    return ModelSummary(
        name=pb.name,
        model=_model_id(pb.name),
        latest_version=pb.latest_version,
        version_count=int(pb.version_count),
        aliases={k: int(v) for k, v in sorted(pb.aliases.items())},
        latest_card=card_from_proto(pb.latest_card) if pb.HasField("latest_card") else None,
        create_time=_timestamp(pb.create_time, pb.HasField("create_time")),
        update_time=_timestamp(pb.update_time, pb.HasField("update_time")),
    )


def run_to_pb(run: Run, *, model_version: str) -> metrics_pb2.Run:
    """The wire form of a report; `model_version` is the already-resolved resource name."""
    return metrics_pb2.Run(
        run_id=run.run_id,
        model_version=model_version,
        strategy=metrics_pb2.Strategy(
            name=run.strategy, hyperparameters={k: str(v) for k, v in run.hyperparameters.items()}
        ),
        metrics={k: float(v) for k, v in run.metrics.items()},
        privacy=metrics_pb2.RunPrivacy(
            dp=run.privacy.dp,
            epsilon_spent=run.privacy.epsilon_spent,
            delta=run.privacy.delta,
            noise_multiplier=run.privacy.noise_multiplier,
            max_grad_norm=run.privacy.max_grad_norm,
        ),
        train_examples_pow2=int(run.train_examples_pow2),
        device_kind=_DEVICE_TO_PB[DeviceKind.parse(run.device_kind)],
        wall_seconds=float(run.wall_seconds),
    )


def run_from_pb(pb: metrics_pb2.Run) -> Run:
    """A domain `Run` from its wire form."""
    return Run(
        run_id=pb.run_id,
        model_version=pb.model_version,
        strategy=pb.strategy.name,
        metrics=dict(sorted(pb.metrics.items())),
        hyperparameters=dict(sorted(pb.strategy.hyperparameters.items())),
        privacy=RunPrivacy(
            dp=pb.privacy.dp,
            epsilon_spent=pb.privacy.epsilon_spent,
            delta=pb.privacy.delta,
            noise_multiplier=pb.privacy.noise_multiplier,
            max_grad_norm=pb.privacy.max_grad_norm,
        ),
        train_examples_pow2=int(pb.train_examples_pow2),
        device_kind=_DEVICE_FROM_PB.get(pb.device_kind, DeviceKind.UNSPECIFIED),
        wall_seconds=pb.wall_seconds,
        name=pb.name,
        create_time=_timestamp(pb.create_time, pb.HasField("create_time")),
    )


def reported_from_pb(pb: metrics_pb2.ReportRunResponse) -> ReportedRun:
    """The domain result of ReportRun."""
    return ReportedRun(run=run_from_pb(pb.run), duplicate=pb.duplicate)


def leaderboard_from_pb(pb: metrics_pb2.SummarizeRunsResponse) -> Leaderboard:
    """The domain leaderboard from SummarizeRuns."""
    return Leaderboard(
        metric=pb.metric,
        entries=tuple(
            LeaderboardEntry(
                model_version=e.model_version,
                strategy=e.strategy,
                dp=e.dp,
                count=int(e.count),
                mean=e.mean,
                std=e.std,
                best=e.best,
                best_run_id=e.best_run_id,
            )
            for e in pb.entries
        ),
    )
