"""MetricsService (RunsServicer in server/servicers.py) through a real grpc.aio server on port 0 and a real channel."""

from __future__ import annotations

import math

import grpc
import pytest
from server_testkit import AioServer

from xfer.server.auth import OpenAuthorizer
from xfer.server.db import create_engine
from xfer.server.errors import NotFound
from xfer.server.interceptors import RpcInterceptor
from xfer.server.migrate import upgrade
from xfer.server.pagination import PageTokens
from xfer.server.run_store import RunStore
from xfer.server.servicers import RunsServicer
from xfer.v1 import metrics_service_pb2 as pb
from xfer.v1 import metrics_service_pb2_grpc as pb_grpc

V1 = "models/digits/versions/1"
V2 = "models/digits/versions/2"


def resolve(name: str) -> str:
    """The registry's resolver, reduced to two versions and `latest`."""
    if name == "models/digits/versions/latest":
        return V2
    if name in (V1, V2):
        return name
    if name == "models/boom/versions/1":
        raise RuntimeError("resolver crashed")  # stands in for an unexpected server bug
    raise NotFound(f"model version {name!r} does not exist")


@pytest.fixture
def stub(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'metrics.db'}")
    upgrade(engine)
    store = RunStore(engine=engine, resolve_version=resolve, page_tokens=PageTokens(b"k" * 32))
    server = AioServer(
        lambda s: pb_grpc.add_MetricsServiceServicer_to_server(RunsServicer(store), s),
        interceptors=[RpcInterceptor(OpenAuthorizer())],
    )
    channel = grpc.insecure_channel(server.target)
    yield pb_grpc.MetricsServiceStub(channel)
    channel.close()
    server.stop()
    engine.dispose()


def make_run(run_id: str = "run-1", **overrides) -> pb.Run:
    run = pb.Run(
        run_id=run_id,
        model_version=V1,
        strategy=pb.Strategy(name="lp-ft", hyperparameters={"lr": "3e-4"}),
        metrics={"accuracy": 0.875, "loss": 0.3},
        privacy=pb.RunPrivacy(dp=True, epsilon_spent=2.5, delta=1e-5, noise_multiplier=1.2, max_grad_norm=1.0),
        train_examples_pow2=4096,
        device_kind=pb.DEVICE_KIND_CUDA,
        wall_seconds=61.5,
    )
    for key, value in overrides.items():
        if key == "metrics":
            run.metrics.clear()
            run.metrics.update(value)
        elif key in ("privacy", "strategy"):
            getattr(run, key).CopyFrom(value)
        else:
            setattr(run, key, value)
    return run


def report(stub, run: pb.Run) -> pb.ReportRunResponse:
    return stub.ReportRun(pb.ReportRunRequest(run=run), timeout=10)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_report_run_round_trip_and_retry(stub):
    sent = make_run(model_version="models/digits/versions/latest")
    first = report(stub, sent)
    assert first.duplicate is False
    run = first.run
    assert run.name == "runs/run-1"
    assert run.model_version == V2  # the alias, resolved when stored
    assert run.create_time.seconds > 0
    assert run.device_kind == pb.DEVICE_KIND_CUDA
    assert dict(run.metrics) == {"accuracy": 0.875, "loss": 0.3}
    assert dict(run.strategy.hyperparameters) == {"lr": "3e-4"}
    assert run.privacy == sent.privacy
    assert (run.train_examples_pow2, run.wall_seconds) == (4096, 61.5)

    again = report(stub, sent)
    assert again.duplicate is True
    assert again.run == first.run


@pytest.mark.parametrize(
    "run,code,fragment",
    [
        (make_run(metrics={"accuracy": math.nan}), "INVALID_ARGUMENT", "metric 'accuracy' is nan"),
        (make_run(metrics={"loss": math.inf}), "INVALID_ARGUMENT", "metric 'loss' is inf"),
        (
            make_run(metrics={f"m{i}": 1.0 for i in range(10_000)}),
            "INVALID_ARGUMENT",
            "metrics has 10000 entries; at most 64",
        ),
        (make_run(metrics={"Top 1": 1.0}), "INVALID_ARGUMENT", "not a valid metric name"),
        (make_run(run_id="../x"), "INVALID_ARGUMENT", "run_id '../x' is invalid"),
        (make_run(train_examples_pow2=1000), "INVALID_ARGUMENT", "power of two"),
        (
            make_run(privacy=pb.RunPrivacy(dp=True, delta=1e-5, max_grad_norm=1.0)),
            "INVALID_ARGUMENT",
            "epsilon_spent is 0.0",
        ),
        (
            make_run(device_kind=pb.DEVICE_KIND_UNSPECIFIED),
            "INVALID_ARGUMENT",
            "device_kind is missing; use one of cpu, cuda, mps",
        ),
        (make_run(device_kind=9), "INVALID_ARGUMENT", "device_kind is 'DeviceKind(9)'"),
        (make_run(strategy=pb.Strategy()), "INVALID_ARGUMENT", "strategy.name is required"),
        (
            make_run(model_version="models/digits/versions/7"),
            "NOT_FOUND",
            "does not exist",
        ),
    ],
    ids=[
        "nan",
        "inf",
        "10000-metrics",
        "metric-name",
        "run-id",
        "not-pow2",
        "dp-epsilon-0",
        "device-unspecified",
        "device-unknown",
        "no-strategy",
        "unknown-version",
    ],
)
def test_report_run_errors(stub, run, code, fragment):
    got, details = status_of(lambda: report(stub, run))
    assert got == getattr(grpc.StatusCode, code)
    assert fragment in details


def test_report_run_without_run_is_invalid(stub):
    code, details = status_of(lambda: stub.ReportRun(pb.ReportRunRequest(), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "run is required" in details


def test_conflicting_report_is_already_exists(stub):
    report(stub, make_run())
    code, details = status_of(lambda: report(stub, make_run(wall_seconds=1.0)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "differs in wall_seconds" in details


def test_unexpected_error_is_internal_without_details(stub):
    code, details = status_of(lambda: report(stub, make_run(model_version="models/boom/versions/1")))
    assert code == grpc.StatusCode.INTERNAL
    assert "resolver crashed" not in details


def test_list_runs_pages_through_the_channel(stub):
    for i in range(7):
        report(stub, make_run(f"run-{i}", model_version=V1 if i % 2 else V2))
    seen, token = [], ""
    while True:
        page = stub.ListRuns(pb.ListRunsRequest(page_size=3, page_token=token), timeout=10)
        assert len(page.runs) <= 3
        seen += [run.run_id for run in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"run-{i}" for i in reversed(range(7))]
    by_version = stub.ListRuns(pb.ListRunsRequest(model="models/digits/versions/latest"), timeout=10)
    assert [r.run_id for r in by_version.runs] == ["run-6", "run-4", "run-2", "run-0"]
    by_strategy = stub.ListRuns(pb.ListRunsRequest(strategy="full"), timeout=10)
    assert list(by_strategy.runs) == []


@pytest.mark.parametrize(
    "request_,fragment",
    [
        (pb.ListRunsRequest(page_size=-1), "page_size must not be negative"),
        (pb.ListRunsRequest(page_token="garbage!"), "invalid page_token"),
        (pb.ListRunsRequest(model="digits"), "model filter 'digits' is invalid"),
    ],
    ids=["negative-page-size", "garbled-token", "bad-model"],
)
def test_list_runs_invalid_arguments(stub, request_, fragment):
    code, details = status_of(lambda: stub.ListRuns(request_, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in details


def test_summarize_runs(stub):
    for run_id, accuracy in [("a", 0.7), ("b", 0.9), ("c", 0.8)]:
        report(stub, make_run(run_id, metrics={"accuracy": accuracy}))
    report(stub, make_run("d", model_version=V2, metrics={"accuracy": 0.5}))

    board = stub.SummarizeRuns(pb.SummarizeRunsRequest(metric="accuracy"), timeout=10)
    assert board.metric == "accuracy"
    assert [(e.model_version, e.count, e.best_run_id) for e in board.entries] == [
        (V1, 3, "b"),
        (V2, 1, "d"),
    ]
    top = board.entries[0]
    assert (top.strategy, top.dp) == ("lp-ft", True)
    assert top.mean == pytest.approx(0.8)
    assert top.std == pytest.approx(0.1)
    assert top.best == 0.9

    low = stub.SummarizeRuns(pb.SummarizeRunsRequest(metric="accuracy", goal=pb.METRIC_GOAL_MINIMIZE), timeout=10)
    assert [(e.model_version, e.best_run_id) for e in low.entries] == [(V2, "d"), (V1, "a")]

    unknown = stub.SummarizeRuns(pb.SummarizeRunsRequest(metric="f1"), timeout=10)
    assert list(unknown.entries) == []


@pytest.mark.parametrize(
    "request_,fragment",
    [
        (pb.SummarizeRunsRequest(), "metric is required"),
        (pb.SummarizeRunsRequest(metric="Accuracy"), "not a valid metric name"),
        (pb.SummarizeRunsRequest(metric="accuracy", goal=7), "goal 'MetricGoal(7)' is invalid"),
        (pb.SummarizeRunsRequest(metric="accuracy", model="x"), "model filter 'x' is invalid"),
    ],
    ids=["no-metric", "bad-metric", "unknown-goal", "bad-model"],
)
def test_summarize_runs_invalid_arguments(stub, request_, fragment):
    code, details = status_of(lambda: stub.SummarizeRuns(request_, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in details
