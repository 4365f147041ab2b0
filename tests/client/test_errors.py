"""client/errors.py: one mapping from gRPC status codes to typed, builtin-compatible errors."""

import grpc
import pytest

from xfer.client import errors


class FakeRpcError(grpc.RpcError):
    """A failed call as grpc presents it (code + details); no server is mocked here."""

    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize(
    "code, cls, builtin",
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError, LookupError),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError, ValueError),
        (grpc.StatusCode.OUT_OF_RANGE, errors.OutOfRangeError, ValueError),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExistsError, FileExistsError),
        (grpc.StatusCode.UNAUTHENTICATED, errors.AuthenticationError, PermissionError),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError, PermissionError),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError, ConnectionError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError, TimeoutError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError, ValueError),
        (grpc.StatusCode.DATA_LOSS, errors.DataLossError, IOError),
        (grpc.StatusCode.UNIMPLEMENTED, errors.UnimplementedError, NotImplementedError),
        (grpc.StatusCode.INTERNAL, errors.ServerError, RuntimeError),
        (grpc.StatusCode.UNKNOWN, errors.ServerError, RuntimeError),
    ],
)
def test_each_code_maps_to_a_typed_builtin(code, cls, builtin):
    error = errors.from_rpc_error(FakeRpcError(code, "what happened"), target="h:1")
    assert type(error) is cls
    assert isinstance(error, errors.XferError) and isinstance(error, builtin)
    assert error.code == code
    assert "\n" not in str(error)


def test_messages_keep_the_server_details_and_add_hints():
    e = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "bad token"))
    assert "bad token" in str(e) and "XFER_TOKEN" in str(e)
    e = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connect failed"), target="h:1")
    assert "h:1" in str(e) and "connect failed" in str(e)


def test_exit_codes_are_distinct_per_kind():
    kinds = [
        errors.InvalidArgumentError,
        errors.NotFoundError,
        errors.AlreadyExistsError,
        errors.AuthenticationError,
        errors.PermissionDeniedError,
        errors.UnavailableError,
        errors.DeadlineExceededError,
        errors.ResourceExhaustedError,
        errors.DataLossError,
        errors.UnimplementedError,
        errors.ServerError,
    ]
    codes = [k.exit_code for k in kinds]
    assert len(set(codes)) == len(codes)
    assert all(c not in (0, 1, 2) for c in codes)
