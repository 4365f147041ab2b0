"""The gRPC transport: channel, credentials, deadlines, retries, error mapping.

With convert.py the only client module that touches `xfer.v1` messages.
Every call goes through `_unary` or `read_artifact`, so that each failure is
mapped to a typed error exactly once (client/errors.py).

Unary calls that are safe to repeat are retried by gRPC itself, through the
channel's service config (`retryPolicy`: on UNAVAILABLE, the code gRPC
reserves for "transient, try again", with exponential backoff and jitter;
and on RESOURCE_EXHAUSTED, a token over the server's call rate, after the
server's `grpc-retry-pushback-ms`).
Uploads and deletes are never retried. Pulls keep their own loop in
download.py, because a retried pull must resume at the byte it reached.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from xfer.client import convert
from xfer.client.domain import ArtifactFormat, ManifestSignature, Run
from xfer.client.errors import InvalidArgumentError, from_rpc_error
from xfer.models.card import ModelCard
from xfer.models.card_proto import card_to_proto
from xfer.v1 import metrics_service_pb2 as metrics_pb2
from xfer.v1 import metrics_service_pb2_grpc as metrics_grpc
from xfer.v1 import model_pb2
from xfer.v1 import registry_service_pb2 as registry_pb2
from xfer.v1 import registry_service_pb2_grpc as registry_grpc
from xfer.v1 import transfer_service_pb2 as transfer_pb2

log = logging.getLogger(__name__)

#: Largest HTTP/2 frame this client accepts (SETTINGS_MAX_FRAME_SIZE; HTTP/2's default is 16 KiB).
HTTP2_MAX_FRAME_BYTES = 1 << 20
#: Longest RetryInfo delay a client honours: a broken or hostile server cannot park it for hours.
MAX_SERVER_HINT_S = 60.0
#: Largest message the client accepts; the server's ReadArtifact chunks are far smaller.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """TLS settings: a private root CA (None: the system roots) and, for mTLS, a client cert + key."""

    root_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    #: Name to verify the server certificate against when it differs from the target host.
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise InvalidArgumentError("mTLS needs both a client certificate and its key")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials; reads the PEM files now so a bad path fails early and clearly."""

        def read(path: Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise InvalidArgumentError(f"cannot read the TLS {what} {str(path)!r}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.root_ca, "root CA"),
            private_key=read(self.client_key, "client key"),
            certificate_chain=read(self.client_cert, "client certificate"),
        )


#: gRPC caps a retryPolicy's maxAttempts at 5 (gRFC A6); the pull's resume loop has no cap.
GRPC_MAX_ATTEMPTS = 5
#: Unary methods safe to repeat. DeleteModelVersion is not (a retry after a lost reply
#: would say NOT_FOUND); ReportRun is, because the server is idempotent on run_id.
_IDEMPOTENT = {
    "xfer.v1.RegistryService": (
        "GetModelVersion",
        "ListModels",
        "ListModelVersions",
        "SetAlias",
        "DeprecateModelVersion",
    ),
    "xfer.v1.MetricsService": ("ReportRun", "ListRuns", "SummarizeRuns"),
}


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, on UNAVAILABLE (gRPC's A6 proposal); a pull also waits out a full server.

    Unary calls retry through gRPC's service config, which allows at most 5
    attempts, on UNAVAILABLE and on RESOURCE_EXHAUSTED (a token over its call
    rate), waiting as long as the server's pushback says; `max_attempts`
    above 5 applies to pulls only. A pull retries UNAVAILABLE and
    RESOURCE_EXHAUSTED with reason STREAM_LIMIT (its token or the server has
    as many pulls open as allowed) or RATE_LIMITED, waiting as long as the
    server's RetryInfo says when it says.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or not (0 < self.initial_backoff <= self.max_backoff) or self.multiplier < 1:
            raise InvalidArgumentError(
                f"invalid retry policy {self}: need max_attempts >= 1, "
                "0 < initial_backoff <= max_backoff and multiplier >= 1"
            )

    def service_config(self) -> str:
        """The channel's service config (JSON): this policy for every idempotent unary method."""
        names = [
            {"service": service, "method": method} for service, methods in _IDEMPOTENT.items() for method in methods
        ]
        policy = {
            "maxAttempts": max(2, min(self.max_attempts, GRPC_MAX_ATTEMPTS)),
            "initialBackoff": f"{self.initial_backoff:.3f}s",
            "maxBackoff": f"{self.max_backoff:.3f}s",
            "backoffMultiplier": self.multiplier,
            # RESOURCE_EXHAUSTED is the answer to a token over its call rate (RATE_LIMITED); the server's
            # pushback trailer tells gRPC how long to wait. Uploads, the one call that could be refused for
            # its size, are never retried.
            "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
        }
        if self.max_attempts == 1:
            return json.dumps({"methodConfig": []})
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})

    def delay(self, attempt: int, *, server_hint: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based).

        `server_hint` is the server's RetryInfo delay: the wait is at least
        that (up to MAX_SERVER_HINT_S, whatever a server says), plus up to
        half of it again, so clients told the same delay do not all come
        back at the same moment.
        """
        if server_hint is not None and server_hint > 0:
            return min(server_hint, MAX_SERVER_HINT_S) * random.uniform(1.0, 1.5)
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        # Full jitter spreads the retries of many clients hit by the same outage.
        return random.uniform(0, ceiling)


@dataclasses.dataclass(frozen=True)
class ArtifactPiece:
    """One ReadArtifact response; `total_size`, `sha256`, `model_version` are set on the first only.

    `data` is a read-only view into the received message, not a copy.
    """

    offset: int
    data: bytes | memoryview
    total_size: int
    sha256: str
    model_version: str


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_read_artifact_response(raw: bytes) -> ArtifactPiece:
    """Decodes a serialized `xfer.v1.ReadArtifactResponse` into an ArtifactPiece.

    Why by hand: the generated class would copy each chunk twice (into the
    message, then out of it as `bytes`); here `data` is a memoryview into
    the buffer gRPC handed us. That is a third of the client's CPU on a
    large pull (bench/pull.py). Anything this small decoder does not
    expect (groups, malformed input) falls back to the generated parser,
    which stays the reference.
    """
    try:
        fields: dict[int, Any] = {}
        view = memoryview(raw)
        i, end = 0, len(raw)
        while i < end:
            key, i = _varint(raw, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                fields[number], i = _varint(raw, i)
            elif wire == 2:
                length, i = _varint(raw, i)
                if i + length > end:
                    raise ValueError("truncated field")
                fields[number] = view[i : i + length]
                i += length
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                raise ValueError(f"unexpected wire type {wire}")
        if i != end:
            raise ValueError("truncated message")
        text = {n: bytes(fields[n]).decode("utf-8") if isinstance(fields.get(n), memoryview) else "" for n in (2, 5)}
        data = fields.get(4, b"")
        if not isinstance(data, memoryview) or not all(isinstance(fields.get(n, 0), int) for n in (1, 3)):
            raise ValueError("field of the wrong wire type")
        return ArtifactPiece(
            offset=_int64(fields.get(3, 0)),
            data=data,
            total_size=_int64(fields.get(1, 0)),
            sha256=text[2],
            model_version=text[5],
        )
    except (IndexError, ValueError, UnicodeDecodeError):
        reply = transfer_pb2.ReadArtifactResponse.FromString(raw)
        return ArtifactPiece(
            offset=reply.offset,
            data=reply.data,
            total_size=reply.total_size_bytes,
            sha256=reply.sha256,
            model_version=reply.model_version,
        )


@dataclasses.dataclass(frozen=True)
class UploadDeclaration:
    """One artifact announced in an upload header."""

    format: ArtifactFormat
    size_bytes: int
    sha256: str


class Transport:
    """Typed stubs over one channel; returns protobuf messages for convert.py to translate."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: TlsConfig | bool | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        if not 0 < timeout < float("inf"):  # NaN fails too
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout}")
        self.target = target
        self.timeout = timeout
        self.retry = retry
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Let the server send a whole 1 MiB chunk in one HTTP/2 DATA frame instead of 64 of 16 KiB:
            # 10-15% less client CPU per pulled MiB and as much more throughput (bench/serve_load.py).
            ("grpc.http2.max_frame_size", HTTP2_MAX_FRAME_BYTES),
            # Reconnect soon after an outage (gRPC's default first wait is 1 s, growing to 120 s),
            # so that retries find the server once it is back.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", retry.service_config()),
        ]
        if tls is None or tls is False:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            config = TlsConfig() if tls is True else tls
            if config.server_name:
                options.append(("grpc.ssl_target_name_override", config.server_name))
            self._channel = grpc.secure_channel(target, config.credentials(), options=options)
        # Plain metadata rather than call credentials: those are refused on
        # insecure channels, and tokens must work on loopback without TLS too.
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._registry = registry_grpc.RegistryServiceStub(self._channel)
        method = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].methods_by_name["ReadArtifact"]
        # The same RPC as the generated stub, with a zero-copy response decoder.
        self._read_artifact = self._channel.unary_stream(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=transfer_pb2.ReadArtifactRequest.SerializeToString,
            response_deserializer=decode_read_artifact_response,
        )
        self._metrics = metrics_grpc.MetricsServiceStub(self._channel)

    def __repr__(self) -> str:  # never show the token
        return f"Transport(target={self.target!r})"

    def close(self) -> None:
        """Closes the channel; in-flight calls are cancelled."""
        self._channel.close()

    # -- plumbing -------------------------------------------------------------
    def _unary(self, method: Callable[..., Any], request: Any) -> Any:
        # Retries (for the idempotent methods) happen inside gRPC, per the service config.
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target=self.target) from None

    # -- registry -------------------------------------------------------------
    def get_model_version(self, name: str) -> model_pb2.ModelVersion:
        """GetModelVersion(name) -> ModelVersion message."""
        reply = self._unary(self._registry.GetModelVersion, registry_pb2.GetModelVersionRequest(name=name))
        return reply.model_version

    def list_models(self, *, page_size: int = 0, page_token: str = "") -> registry_pb2.ListModelsResponse:
        """One page of ListModels."""
        return self._unary(
            self._registry.ListModels, registry_pb2.ListModelsRequest(page_size=page_size, page_token=page_token)
        )

    def list_model_versions(
        self, parent: str, *, page_size: int = 0, page_token: str = ""
    ) -> registry_pb2.ListModelVersionsResponse:
        """One page of ListModelVersions."""
        request = registry_pb2.ListModelVersionsRequest(parent=parent, page_size=page_size, page_token=page_token)
        return self._unary(self._registry.ListModelVersions, request)

    def set_alias(self, name: str, alias: str) -> model_pb2.ModelVersion:
        """SetAlias; idempotent (pointing an alias at the same version twice is a no-op)."""
        reply = self._unary(self._registry.SetAlias, registry_pb2.SetAliasRequest(name=name, alias=alias))
        return reply.model_version

    def deprecate(self, name: str, message: str) -> model_pb2.ModelVersion:
        """DeprecateModelVersion; idempotent."""
        request = registry_pb2.DeprecateModelVersionRequest(name=name, message=message)
        return self._unary(self._registry.DeprecateModelVersion, request).model_version

    def delete(self, name: str) -> None:
        """DeleteModelVersion; not retried, since a retry after a lost reply would say NOT_FOUND."""
        self._unary(self._registry.DeleteModelVersion, registry_pb2.DeleteModelVersionRequest(name=name))

    def create_model_version(
        self,
        *,
        parent: str,
        card: ModelCard,
        declarations: list[UploadDeclaration],
        chunks: Iterable[tuple[ArtifactFormat, bytes]],
        signatures: Sequence[ManifestSignature] = (),
    ) -> model_pb2.ModelVersion:
        """Streams the header, then `chunks` as they are produced (never all in memory).

        Not retried: a repeated upload would create a second version.
        """
        header = registry_pb2.CreateModelVersionHeader(
            parent=parent,
            card=card_to_proto(card),
            artifacts=[
                registry_pb2.ArtifactDeclaration(
                    format=convert.format_to_pb(d.format), size_bytes=d.size_bytes, sha256=d.sha256
                )
                for d in declarations
            ],
            signatures=[convert.signature_to_pb(s) for s in signatures],
        )

        def requests() -> Iterator[registry_pb2.CreateModelVersionRequest]:
            yield registry_pb2.CreateModelVersionRequest(header=header)
            for fmt, data in chunks:
                chunk = registry_pb2.ArtifactChunk(format=convert.format_to_pb(fmt), data=data)
                yield registry_pb2.CreateModelVersionRequest(chunk=chunk)

        try:
            # No deadline: the upload takes as long as the bytes take.
            reply = self._registry.CreateModelVersion(requests(), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target=self.target) from None
        return reply.model_version

    # -- transfer -------------------------------------------------------------
    def read_artifact(
        self, name: str, fmt: ArtifactFormat, *, offset: int = 0, timeout: float | None = None
    ) -> ArtifactStream:
        """Starts ReadArtifact at `offset`; iterate the result for pieces, close it to cancel."""
        request = transfer_pb2.ReadArtifactRequest(name=name, format=convert.format_to_pb(fmt), read_offset=offset)
        call = self._read_artifact(request, timeout=timeout, metadata=self._metadata)
        return ArtifactStream(call, target=self.target)

    # -- metrics --------------------------------------------------------------
    def report_run(self, run: Run, *, model_version: str) -> metrics_pb2.ReportRunResponse:
        """ReportRun; safe to retry because the server is idempotent on run_id."""
        request = metrics_pb2.ReportRunRequest(run=convert.run_to_pb(run, model_version=model_version))
        return self._unary(self._metrics.ReportRun, request)

    def list_runs(
        self, *, model: str = "", strategy: str = "", page_size: int = 0, page_token: str = ""
    ) -> metrics_pb2.ListRunsResponse:
        """One page of ListRuns."""
        request = metrics_pb2.ListRunsRequest(
            model=model, strategy=strategy, page_size=page_size, page_token=page_token
        )
        return self._unary(self._metrics.ListRuns, request)

    def summarize_runs(
        self, *, metric: str, model: str = "", goal: str = "maximize"
    ) -> metrics_pb2.SummarizeRunsResponse:
        """SummarizeRuns (the leaderboard)."""
        if goal not in convert.GOALS:
            raise InvalidArgumentError(f"goal must be one of {sorted(convert.GOALS)}, got {goal!r}")
        request = metrics_pb2.SummarizeRunsRequest(model=model, metric=metric, goal=convert.GOALS[goal])
        return self._unary(self._metrics.SummarizeRuns, request)


class ArtifactStream:
    """Iterates a ReadArtifact call as `ArtifactPiece`s, mapping failures to typed errors."""

    def __init__(self, call: Any, *, target: str) -> None:
        self._call = call
        self._target = target

    def __iter__(self) -> Iterator[ArtifactPiece]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target=self._target) from None

    def close(self) -> None:
        """Cancels the call so the server stops sending (a no-op once it has finished)."""
        self._call.cancel()

    def __enter__(self) -> ArtifactStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
