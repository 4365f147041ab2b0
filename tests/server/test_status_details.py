"""Errors a program can read: google.rpc.Status details on every failed call, read by grpcio-status and by the SDK."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from server_testkit import Stubs, load_card, model_artifacts, rpc_error

from xfer.client import errors as client_errors
from xfer.server import rpc_status as server_rpc_status
from xfer.server.errors import FieldViolation, Reason, Status
from xfer.v1 import metrics_service_pb2 as ms
from xfer.v1 import metrics_service_pb2_grpc as msg
from xfer.v1 import registry_service_pb2 as rs

pytestmark = pytest.mark.timeout(120)


def _google_details(err: grpc.RpcError) -> dict[str, object]:
    """The details as any gRPC ecosystem client reads them (grpcio-status / googleapis protos)."""
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin trailer"
    assert status.code == err.code().value[0] and status.message == err.details()
    found: dict[str, object] = {}
    for detail in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.__name__] = message
    return found


@pytest.fixture
def stubs(start_server, tokens, source_model_dir):
    running = start_server(token_file=tokens.file)
    with grpc.insecure_channel(running.target) as channel:
        stubs = Stubs.on(channel, tokens.operator)
        stubs.register("digits", source_model_dir)
        yield stubs


@pytest.mark.parametrize(
    "name,reason,typed",
    [
        ("models/nope/versions/1", "MODEL_NOT_FOUND", client_errors.ModelNotFoundError),
        ("models/digits/versions/9", "VERSION_NOT_FOUND", client_errors.VersionNotFoundError),
        ("models/digits/versions/stable", "ALIAS_NOT_FOUND", client_errors.AliasNotFoundError),
    ],
)
def test_not_found_reasons(stubs, name, reason, typed) -> None:
    err = rpc_error(lambda: stubs.get(name))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    info = _google_details(err)["ErrorInfo"]
    assert info.reason == reason and info.domain == "xfer.v1" and info.metadata["model"] == name.rsplit("/versions/")[0]
    error = client_errors.from_rpc_error(err)
    assert type(error) is typed and isinstance(error, LookupError) and error.reason == reason


def test_digest_mismatch_has_a_reason_a_field_and_the_digests(stubs, source_model_dir) -> None:
    artifacts = model_artifacts(source_model_dir)
    artifacts[0].declared_sha256 = "0" * 64
    err = rpc_error(lambda: stubs.upload(model="digest", card=load_card(source_model_dir), artifacts=artifacts))
    details = _google_details(err)
    assert details["ErrorInfo"].reason == "DIGEST_MISMATCH" and details["ErrorInfo"].metadata["declared"] == "0" * 64
    assert [v.field for v in details["BadRequest"].field_violations] == ["header.artifacts.sha256"]
    error = client_errors.from_rpc_error(err)
    assert isinstance(error, client_errors.DigestMismatchError)
    assert error.field_violations[0][0] == "header.artifacts.sha256" and error.error_metadata["declared"] == "0" * 64


def test_bad_request_names_the_field(stubs) -> None:
    err = rpc_error(
        lambda: stubs.registry.ListModelVersions(rs.ListModelVersionsRequest(parent="models/Bad"), metadata=stubs.md)
    )
    details = _google_details(err)
    assert details["ErrorInfo"].reason == "INVALID_NAME"
    assert details["BadRequest"].field_violations[0].field == "parent"
    err = rpc_error(lambda: stubs.registry.ListModels(rs.ListModelsRequest(page_size=-1), metadata=stubs.md))
    assert _google_details(err)["BadRequest"].field_violations[0].field == "page_size"


def test_run_reports_say_which_field_and_conflicts_are_typed(stubs) -> None:
    runs = msg.MetricsServiceStub(stubs.channel)
    run = ms.Run(
        run_id="r1",
        model_version="models/digits/versions/1",
        strategy=ms.Strategy(name="full"),
        metrics={"accuracy": 0.5},
        train_examples_pow2=64,
        device_kind=ms.DEVICE_KIND_CPU,
    )
    bad = ms.Run()
    bad.CopyFrom(run)
    bad.metrics["acc\n"] = 0.1
    err = rpc_error(lambda: runs.ReportRun(ms.ReportRunRequest(run=bad), metadata=stubs.md))
    details = _google_details(err)
    assert (
        details["ErrorInfo"].reason == "INVALID_REPORT"
        and details["BadRequest"].field_violations[0].field == "run.metrics"
    )
    runs.ReportRun(ms.ReportRunRequest(run=run), metadata=stubs.md)
    run.wall_seconds = 3.0
    err = rpc_error(lambda: runs.ReportRun(ms.ReportRunRequest(run=run), metadata=stubs.md))
    assert (
        err.code() == grpc.StatusCode.ALREADY_EXISTS and _google_details(err)["ErrorInfo"].reason == "RUN_ID_CONFLICT"
    )
    assert isinstance(client_errors.from_rpc_error(err), client_errors.AlreadyExistsError)


def test_auth_reasons(start_server, tokens) -> None:
    running = start_server(token_file=tokens.file)
    with grpc.insecure_channel(running.target) as channel:
        missing = rpc_error(lambda: Stubs.on(channel).get("models/x/versions/1"))
        wrong = rpc_error(lambda: Stubs.on(channel, "xfer_wrong").get("models/x/versions/1"))
        role = rpc_error(
            lambda: Stubs.on(channel, tokens.client).registry.DeleteModelVersion(
                rs.DeleteModelVersionRequest(name="models/x/versions/1"),
                metadata=[("authorization", f"Bearer {tokens.client}")],
            )
        )
    assert _google_details(missing)["ErrorInfo"].reason == "TOKEN_MISSING"
    assert _google_details(wrong)["ErrorInfo"].reason == "TOKEN_INVALID"
    assert _google_details(role)["ErrorInfo"].reason == "ROLE_FORBIDDEN"
    assert _google_details(role)["ErrorInfo"].metadata["role"] == "client"


def test_every_reply_carries_a_request_id(stubs) -> None:
    err = rpc_error(lambda: stubs.get("models/nope/versions/1"))
    ids = [v for k, v in err.trailing_metadata() if k == "x-request-id"]
    assert len(ids) == 1 and len(ids[0]) == 16
    _, call = stubs.registry.GetModelVersion.with_call(
        rs.GetModelVersionRequest(name="models/digits/versions/1"), metadata=[*stubs.md, ("x-request-id", "trace-42")]
    )
    assert ("x-request-id", "trace-42") in list(call.trailing_metadata())  # a caller's own id is kept


def test_status_proto_has_error_info_bad_request_and_retry_info() -> None:
    status = Status(
        code=grpc.StatusCode.UNAVAILABLE,
        message="m",
        reason=Reason.DATABASE_UNAVAILABLE,
        expected=True,
        metadata={"k": "v"},
        field_violations=(FieldViolation("f", "d"),),
        retry_after=1.5,
    )
    proto = server_rpc_status.status_proto(status)
    parsed = client_errors.parse_status_details(proto.SerializeToString())
    assert parsed == client_errors.StatusDetails(
        reason="DATABASE_UNAVAILABLE",
        domain="xfer.v1",
        metadata={"k": "v"},
        field_violations=(("f", "d"),),
        retry_after=1.5,
    )
    assert client_errors.parse_status_details(b"\xff\xff garbage") == client_errors.StatusDetails()


def test_a_stream_reset_in_transit_is_transient_for_the_sdk() -> None:
    """What a client behind nginx sees when the replica serving its pull dies: retryable, not a server error."""

    class Reset(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.INTERNAL

        def details(self):
            return "Received RST_STREAM with error code 2"

    error = client_errors.from_rpc_error(Reset(), target="lb:443")
    assert isinstance(error, client_errors.UnavailableError) and error.code == grpc.StatusCode.UNAVAILABLE
    assert "lb:443" in str(error)
