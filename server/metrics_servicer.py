"""MetricsService over gRPC: converts messages, delegates to `RunStore`.

Errors are domain exceptions from `server.errors`; the server's interceptor
turns them into status codes, so nothing here touches the context.
"""

from __future__ import annotations

import logging

from google.protobuf.timestamp_pb2 import Timestamp

from xfer.server.errors import InvalidArgument
from xfer.server.metrics import LeaderboardRow, RunPrivacy, RunReport, RunStore, StoredRun
from xfer.v1 import metrics_service_pb2 as pb
from xfer.v1 import metrics_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_DEVICE_KINDS = {
    pb.DEVICE_KIND_CPU: "cpu",
    pb.DEVICE_KIND_CUDA: "cuda",
    pb.DEVICE_KIND_MPS: "mps",
}
_DEVICE_ENUMS = {kind: number for number, kind in _DEVICE_KINDS.items()}
_GOALS = {
    # Unspecified means the common case: a higher metric is better.
    pb.METRIC_GOAL_UNSPECIFIED: "maximize",
    pb.METRIC_GOAL_MAXIMIZE: "maximize",
    pb.METRIC_GOAL_MINIMIZE: "minimize",
}


class MetricsServicer(pb_grpc.MetricsServiceServicer):
    """The xfer.v1.MetricsService RPCs on top of a `RunStore`."""

    def __init__(self, store: RunStore) -> None:
        self._store = store

    def ReportRun(self, request: pb.ReportRunRequest, context) -> pb.ReportRunResponse:
        """Stores a run report (idempotent on run_id)."""
        if not request.HasField("run"):
            raise InvalidArgument("run is required: set ReportRunRequest.run")
        outcome = self._store.report(run_from_proto(request.run))
        return pb.ReportRunResponse(run=run_to_proto(outcome.run), duplicate=outcome.duplicate)

    def ListRuns(self, request: pb.ListRunsRequest, context) -> pb.ListRunsResponse:
        """One page of runs, newest first."""
        page = self._store.list_runs(
            model=request.model,
            strategy=request.strategy,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListRunsResponse(
            runs=[run_to_proto(run) for run in page.runs],
            next_page_token=page.next_page_token,
        )

    def SummarizeRuns(self, request: pb.SummarizeRunsRequest, context) -> pb.SummarizeRunsResponse:
        """The leaderboard of one metric."""
        # An enum number this server does not know becomes a name the store
        # rejects with INVALID_ARGUMENT, instead of silently meaning maximize.
        goal = _GOALS.get(request.goal, f"MetricGoal({request.goal})")
        rows = self._store.summarize(metric=request.metric, model=request.model, goal=goal)
        return pb.SummarizeRunsResponse(
            metric=request.metric, entries=[leaderboard_to_proto(row) for row in rows]
        )


def run_from_proto(run: pb.Run) -> RunReport:
    """The domain report of a wire `Run` (output-only fields are ignored)."""
    return RunReport(
        run_id=run.run_id,
        model_version=run.model_version,
        strategy=run.strategy.name,
        hyperparameters=dict(run.strategy.hyperparameters),
        metrics=dict(run.metrics),
        privacy=RunPrivacy(
            dp=run.privacy.dp,
            epsilon_spent=run.privacy.epsilon_spent,
            delta=run.privacy.delta,
            noise_multiplier=run.privacy.noise_multiplier,
            max_grad_norm=run.privacy.max_grad_norm,
        ),
        train_examples_pow2=run.train_examples_pow2,
        device_kind=_device_kind_of(run.device_kind),
        wall_seconds=run.wall_seconds,
    )


def _device_kind_of(number: int) -> str:
    # Unspecified and unknown numbers pass through as names the store
    # rejects, so the caller hears which kinds are valid.
    if number == pb.DEVICE_KIND_UNSPECIFIED:
        return ""
    return _DEVICE_KINDS.get(number, f"DeviceKind({number})")


def run_to_proto(stored: StoredRun) -> pb.Run:
    """The wire `Run` of a stored run."""
    report = stored.report
    create_time = Timestamp()
    create_time.FromDatetime(stored.create_time)
    return pb.Run(
        name=stored.name,
        run_id=report.run_id,
        model_version=report.model_version,
        strategy=pb.Strategy(name=report.strategy, hyperparameters=report.hyperparameters),
        metrics=report.metrics,
        privacy=pb.RunPrivacy(
            dp=report.privacy.dp,
            epsilon_spent=report.privacy.epsilon_spent,
            delta=report.privacy.delta,
            noise_multiplier=report.privacy.noise_multiplier,
            max_grad_norm=report.privacy.max_grad_norm,
        ),
        train_examples_pow2=report.train_examples_pow2,
        device_kind=_DEVICE_ENUMS[report.device_kind],
        wall_seconds=report.wall_seconds,
        create_time=create_time,
    )


def leaderboard_to_proto(row: LeaderboardRow) -> pb.LeaderboardEntry:
    """The wire entry of one leaderboard row."""
    return pb.LeaderboardEntry(
        model_version=row.model_version,
        strategy=row.strategy,
        dp=row.dp,
        count=row.count,
        mean=row.mean,
        std=row.std,
        best=row.best,
        best_run_id=row.best_run_id,
    )
