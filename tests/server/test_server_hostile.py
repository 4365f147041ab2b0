"""Hostile inputs against a real in-process server: each asserts the status code and message."""

from __future__ import annotations

import os
import pickle
import struct
import threading
import time

import grpc
import onnx
import pytest
import torch
from server_testkit import (
    ONNX,
    SAFETENSORS,
    TORCH,
    Artifact,
    Stubs,
    load_card,
    model_artifacts,
    rpc_error,
    upload_requests,
)

from xfer.models import create_model
from xfer.models.weights import save_safetensors
from xfer.server.convert import card_to_proto as upload_card
from xfer.v1 import registry_service_pb2 as rs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server_and_stubs(start_server, tokens):
    running = start_server(token_file=tokens.file)
    channel = grpc.insecure_channel(running.target)
    yield running, Stubs.on(channel, tokens.operator)
    channel.close()


@pytest.fixture
def stubs(server_and_stubs) -> Stubs:
    return server_and_stubs[1]


def _nothing_registered(stubs: Stubs) -> None:
    assert list(stubs.registry.ListModels(rs.ListModelsRequest(), metadata=stubs.md).models) == []


def _assert_error(err: grpc.RpcError, code: grpc.StatusCode, *fragments: str) -> None:
    assert err.code() == code, f"{err.code()}: {err.details()}"
    for fragment in fragments:
        assert fragment in err.details(), err.details()


class _Evil:
    def __init__(self, call, args):
        self._call, self._args = call, args

    def __reduce__(self):
        return self._call, self._args


def test_pickle_that_runs_code_is_rejected_and_never_runs(stubs, source_model_dir, tmp_path) -> None:
    marker = tmp_path / "pwned-by-system"
    evil = tmp_path / "evil.pt"
    # torch.save pickles the object's __reduce__: loading it would call os.system.
    torch.save({"stem.0.weight": _Evil(os.system, (f"touch {marker}",))}, evil)
    err = rpc_error(
        lambda: stubs.upload(
            model="evil", card=load_card(source_model_dir), artifacts=[Artifact(TORCH, evil.read_bytes())]
        )
    )
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "torch.load(weights_only=True)", "posix.system")
    assert "False" not in err.details()  # torch's "retry with weights_only=False" advice is not passed on
    assert not marker.exists()
    _nothing_registered(stubs)


def test_raw_pickle_that_opens_a_file_is_rejected(stubs, source_model_dir, tmp_path) -> None:
    marker = tmp_path / "pwned-by-open"
    payload = pickle.dumps(_Evil(open, (str(marker), "w")), protocol=2)
    err = rpc_error(
        lambda: stubs.upload(model="evil", card=load_card(source_model_dir), artifacts=[Artifact(TORCH, payload)])
    )
    _assert_error(
        err, grpc.StatusCode.INVALID_ARGUMENT, "could not be read with torch.load(weights_only=True)", "GLOBAL io.open"
    )
    assert not marker.exists()
    _nothing_registered(stubs)


def test_torch_state_dict_upload_is_stored_as_safetensors(stubs, source_model_dir, tmp_path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(source_model_dir / "model.safetensors"))
    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    version = stubs.upload(
        model="from-pt", card=load_card(source_model_dir), artifacts=[Artifact(TORCH, pt.read_bytes())]
    )
    formats = {a.format: a for a in version.artifacts}
    assert set(formats) == {SAFETENSORS, ONNX} and formats[SAFETENSORS].derived and formats[ONNX].derived
    stored = stubs.read(version.name, SAFETENSORS).data
    (tmp_path / "back.safetensors").write_bytes(stored)
    back = load_file(str(tmp_path / "back.safetensors"))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_safetensors_offsets_past_the_file(stubs, source_model_dir) -> None:
    data = (source_model_dir / "model.safetensors").read_bytes()[:-100]  # header promises 100 more bytes
    err = rpc_error(
        lambda: stubs.upload(model="short", card=load_card(source_model_dir), artifacts=[Artifact(SAFETENSORS, data)])
    )
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "invalid safetensors artifact", "data_offsets run to byte")
    _nothing_registered(stubs)


def test_safetensors_forged_header_length(stubs, source_model_dir) -> None:
    real = (source_model_dir / "model.safetensors").stat().st_size
    data = struct.pack("<Q", 2**40) + b"{}" + b"\0" * real  # as long as real weights, so only the header is wrong
    err = rpc_error(
        lambda: stubs.upload(model="forged", card=load_card(source_model_dir), artifacts=[Artifact(SAFETENSORS, data)])
    )
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "header claims", "above the limit")


def test_tensor_shapes_that_do_not_match_the_architecture(stubs, source_model_dir, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(source_model_dir / "model.safetensors"))
    name = next(k for k, v in state.items() if v.dim() == 2 and v.shape[0] != v.shape[1])
    rows, cols = state[name].shape
    state[name] = state[name].t().contiguous()  # same names, same byte count, one shape swapped
    path = tmp_path / "swapped.safetensors"
    save_file(state, str(path))
    err = rpc_error(
        lambda: stubs.upload(
            model="swapped", card=load_card(source_model_dir), artifacts=[Artifact(SAFETENSORS, path.read_bytes())]
        )
    )
    _assert_error(
        err, grpc.StatusCode.INVALID_ARGUMENT, f"tensor '{name}' is F32[{cols}, {rows}]", f"needs F32[{rows}, {cols}]"
    )
    _nothing_registered(stubs)


def test_weights_smaller_than_the_card_says_are_refused_before_upload(stubs, source_model_dir, tmp_path) -> None:
    narrow = create_model("convnet", width=8, groups=4)  # a quarter of the card's parameters
    path = tmp_path / "narrow.safetensors"
    save_safetensors(narrow, path)
    err = rpc_error(
        lambda: stubs.upload(
            model="narrow", card=load_card(source_model_dir), artifacts=[Artifact(SAFETENSORS, path.read_bytes())]
        )
    )
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "the card describes", "declares only")
    _nothing_registered(stubs)


def test_onnx_with_external_data(stubs, source_model_dir, tmp_path) -> None:
    proto = onnx.load(str(source_model_dir / "model.onnx"))
    path = tmp_path / "external.onnx"
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    artifacts = model_artifacts(source_model_dir, onnx=False) + [Artifact(ONNX, path.read_bytes())]
    err = rpc_error(lambda: stubs.upload(model="external", card=load_card(source_model_dir), artifacts=artifacts))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "reference external data")
    _nothing_registered(stubs)


def test_onnx_that_disagrees_with_the_weights(stubs, source_model_dir, tmp_path) -> None:
    other = create_model("convnet")  # random weights, same architecture
    path = tmp_path / "other.safetensors"
    save_safetensors(other, path)
    artifacts = [
        Artifact(SAFETENSORS, path.read_bytes()),
        Artifact(ONNX, (source_model_dir / "model.onnx").read_bytes()),
    ]
    err = rpc_error(lambda: stubs.upload(model="mismatch", card=load_card(source_model_dir), artifacts=artifacts))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "differ from the uploaded weights", "tolerance 0.0001")


def test_declared_sha256_that_does_not_match(stubs, source_model_dir) -> None:
    artifacts = model_artifacts(source_model_dir)
    artifacts[0].declared_sha256 = "0" * 64
    err = rpc_error(lambda: stubs.upload(model="digest", card=load_card(source_model_dir), artifacts=artifacts))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch for the SAFETENSORS artifact")
    _nothing_registered(stubs)


def test_declared_size_above_the_limit(start_server, source_model_dir) -> None:
    running = start_server(max_artifact_bytes=1000)
    with grpc.insecure_channel(running.target) as channel:
        err = rpc_error(lambda: Stubs.on(channel).register("big", source_model_dir))
    _assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "above the server's limit of 1000")


@pytest.mark.parametrize("model_id", ["../x", "A B", "x" * 10_000])
def test_hostile_model_ids(stubs, source_model_dir, model_id) -> None:
    err = rpc_error(lambda: stubs.register(model_id, source_model_dir))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "model ids match ^[a-z][a-z0-9-]{1,62}$")
    assert len(err.details()) < 400  # a 10,000-character id is not echoed back whole
    err = rpc_error(lambda: stubs.get(f"models/{model_id}/versions/1"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    _nothing_registered(stubs)


def test_chunks_before_the_header(stubs, source_model_dir) -> None:
    requests = list(
        upload_requests(
            parent="models/order", card=load_card(source_model_dir), artifacts=model_artifacts(source_model_dir)
        )
    )
    err = rpc_error(lambda: stubs.registry.CreateModelVersion(iter(requests[1:] + requests[:1]), metadata=stubs.md))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "first message of CreateModelVersion must be the header")


def test_latest_cannot_be_set_by_hand(stubs, source_model_dir) -> None:
    stubs.register("digits", source_model_dir)
    err = rpc_error(
        lambda: stubs.registry.SetAlias(
            rs.SetAliasRequest(name="models/digits/versions/1", alias="latest"), metadata=stubs.md
        )
    )
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "owned by the server")


def test_bad_page_token(stubs) -> None:
    err = rpc_error(lambda: stubs.registry.ListModels(rs.ListModelsRequest(page_token="garbage!"), metadata=stubs.md))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")


def test_read_offset_past_the_end(stubs, source_model_dir) -> None:
    stubs.register("digits", source_model_dir)
    size = (source_model_dir / "model.safetensors").stat().st_size
    at_end = stubs.read("models/digits/versions/1", SAFETENSORS, offset=size)
    assert at_end.data == b"" and len(at_end.responses) == 1 and at_end.first.total_size_bytes == size
    err = rpc_error(lambda: stubs.read("models/digits/versions/1", SAFETENSORS, offset=size + 1))
    _assert_error(err, grpc.StatusCode.OUT_OF_RANGE, "past the end")
    err = rpc_error(lambda: stubs.read("models/digits/versions/1", SAFETENSORS, offset=-1))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "must not be negative")
    err = rpc_error(lambda: stubs.read("models/digits/versions/1", 0))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "format is unspecified")
    err = rpc_error(lambda: stubs.read("models/digits/versions/9", SAFETENSORS))
    _assert_error(err, grpc.StatusCode.NOT_FOUND, "does not exist")


def test_corrupt_blob_is_data_loss(server_and_stubs, source_model_dir) -> None:
    running, stubs = server_and_stubs
    version = stubs.register("digits", source_model_dir)
    sha = next(a.sha256 for a in version.artifacts if a.format == SAFETENSORS)
    blob = running.config.blob_dir / sha[:2] / sha
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    blob.write_bytes(bytes(data))
    err = rpc_error(lambda: stubs.read(version.name, SAFETENSORS))
    _assert_error(err, grpc.StatusCode.DATA_LOSS, "corrupt")


# -- authentication ------------------------------------------------------------------
def test_no_token(server_and_stubs) -> None:
    running, _ = server_and_stubs
    with grpc.insecure_channel(running.target) as channel:
        err = rpc_error(lambda: Stubs.on(channel).registry.ListModels(rs.ListModelsRequest()))
    _assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "missing credentials", "Bearer")


def test_wrong_token(server_and_stubs) -> None:
    running, _ = server_and_stubs
    with grpc.insecure_channel(running.target) as channel:
        wrong = Stubs.on(channel, "xfer_not-a-real-token")
        err = rpc_error(lambda: wrong.registry.ListModels(rs.ListModelsRequest(), metadata=wrong.md))
    _assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "invalid token")


def test_client_token_cannot_create_versions(server_and_stubs, tokens, source_model_dir) -> None:
    running, _ = server_and_stubs
    with grpc.insecure_channel(running.target) as channel:
        client = Stubs.on(channel, tokens.client)
        err = rpc_error(lambda: client.register("digits", source_model_dir))
        _assert_error(
            err,
            grpc.StatusCode.PERMISSION_DENIED,
            "role 'client' may not call /xfer.v1.RegistryService/CreateModelVersion",
        )
        assert list(client.registry.ListModels(rs.ListModelsRequest(), metadata=client.md).models) == []


def test_tokens_never_logged(server_and_stubs, tokens, caplog) -> None:
    running, _ = server_and_stubs
    caplog.set_level("DEBUG")
    with grpc.insecure_channel(running.target) as channel:
        Stubs.on(channel, tokens.operator).registry.ListModels(
            rs.ListModelsRequest(), metadata=[("authorization", f"Bearer {tokens.operator}")]
        )
        wrong = Stubs.on(channel, "xfer_leaked-secret")
        err = rpc_error(lambda: wrong.registry.ListModels(rs.ListModelsRequest(), metadata=wrong.md))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ListModels OK" in caplog.text  # the access log did run
    assert tokens.operator not in caplog.text and "leaked-secret" not in caplog.text


# -- cut-off uploads ---------------------------------------------------------------------
def test_stream_cut_off_mid_upload(start_server, data_dir, source_model_dir) -> None:
    running = start_server()
    requests = list(
        upload_requests(
            parent="models/cut",
            card=load_card(source_model_dir),
            artifacts=model_artifacts(source_model_dir),
            chunk_size=4096,
        )
    )
    sent = threading.Event()
    release = threading.Event()

    def stream():
        yield from requests[:4]  # the header and three chunks
        sent.set()
        release.wait(10)

    channel = grpc.insecure_channel(running.target)
    stubs = Stubs.on(channel)
    future = stubs.registry.CreateModelVersion.future(stream())
    assert sent.wait(10)
    blob_root = running.config.blob_dir
    deadline = time.monotonic() + 5
    while not list(blob_root.glob(".upload-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(blob_root.glob(".upload-*")), "the server should be streaming into a temp file"
    future.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    # The handler notices the cancellation and removes its temp files.
    deadline = time.monotonic() + 5
    while [p for p in blob_root.iterdir() if p.is_file()] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in blob_root.iterdir() if p.is_file()] == []
    _nothing_registered(stubs)
    err = rpc_error(lambda: stubs.get("models/cut/versions/1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    channel.close()
    running.stop(0)
    # After a restart on the same data dir: still nothing, no temp files, no blobs.
    again = start_server()
    with grpc.insecure_channel(again.target) as channel:
        _nothing_registered(Stubs.on(channel))
    assert [p for p in blob_root.iterdir() if p.is_file()] == []
    assert list(blob_root.glob("??/*")) == []


def test_startup_removes_leftover_temp_files(start_server, data_dir) -> None:
    blobs = data_dir / "blobs"
    blobs.mkdir()
    leftover = blobs / ".upload-crashed.tmp"
    leftover.write_bytes(b"half an upload")
    export_leftover = blobs / "..upload-x.onnx.tmp.abc.tmp"
    export_leftover.write_bytes(b"half an export")
    start_server()
    assert not leftover.exists() and not export_leftover.exists()


# -- TLS ------------------------------------------------------------------------------------
def test_tls(start_server, tls_files) -> None:
    running = start_server(tls_cert=tls_files.server_cert, tls_key=tls_files.server_key)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_files.ca_cert.read_bytes())
    with grpc.secure_channel(running.target, credentials) as channel:
        assert list(Stubs.on(channel).registry.ListModels(rs.ListModelsRequest(), timeout=10).models) == []
    # A plaintext client cannot talk to a TLS server.
    with grpc.insecure_channel(running.target) as channel:
        err = rpc_error(lambda: Stubs.on(channel).registry.ListModels(rs.ListModelsRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(start_server, tls_files) -> None:
    running = start_server(
        tls_cert=tls_files.server_cert, tls_key=tls_files.server_key, tls_client_ca=tls_files.ca_cert
    )
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=tls_files.ca_cert.read_bytes(),
        private_key=tls_files.client_key.read_bytes(),
        certificate_chain=tls_files.client_cert.read_bytes(),
    )
    with grpc.secure_channel(running.target, with_cert) as channel:
        assert list(Stubs.on(channel).registry.ListModels(rs.ListModelsRequest(), timeout=10).models) == []
    without_cert = grpc.ssl_channel_credentials(root_certificates=tls_files.ca_cert.read_bytes())
    with grpc.secure_channel(running.target, without_cert) as channel:
        err = rpc_error(lambda: Stubs.on(channel).registry.ListModels(rs.ListModelsRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


# -- issue 11: inputs that used to slip through, or came back INTERNAL ---------------------------------
def _details(err: grpc.RpcError):
    """The google.rpc.Status details of a failed call, as the SDK reads them."""
    from xfer.client.errors import details_of

    return details_of(err)


def _upload_onnx(stubs: Stubs, source_model_dir, model: str, onnx_bytes: bytes) -> grpc.RpcError:
    artifacts = [
        Artifact(SAFETENSORS, (source_model_dir / "model.safetensors").read_bytes()),
        Artifact(ONNX, onnx_bytes),
    ]
    return rpc_error(lambda: stubs.upload(model=model, card=load_card(source_model_dir), artifacts=artifacts))


def test_onnx_with_nan_features_is_refused(stubs, source_model_dir) -> None:
    from server_testkit import onnx_nan_features

    err = _upload_onnx(stubs, source_model_dir, "nan-features", onnx_nan_features(source_model_dir))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "output 'features' is not finite")
    assert _details(err).reason == "INVALID_ARTIFACT"
    _nothing_registered(stubs)


def test_onnx_that_behaves_only_at_batch_4_with_an_if_is_refused(stubs, source_model_dir) -> None:
    from server_testkit import onnx_only_at_batch_4

    err = _upload_onnx(stubs, source_model_dir, "batch-four", onnx_only_at_batch_4(source_model_dir, control_flow=True))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "['If']", "plain dataflow")
    _nothing_registered(stubs)


def test_onnx_that_behaves_only_at_batch_4_without_control_flow_is_refused(stubs, source_model_dir) -> None:
    from server_testkit import onnx_only_at_batch_4

    err = _upload_onnx(
        stubs, source_model_dir, "batch-four", onnx_only_at_batch_4(source_model_dir, control_flow=False)
    )
    _assert_error(
        err, grpc.StatusCode.INVALID_ARGUMENT, "output 'logits' is not finite", "on a probe input of shape [1,"
    )
    _nothing_registered(stubs)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_onnx_that_asks_for_a_gibibyte_is_stopped_in_the_sandbox(stubs, source_model_dir) -> None:
    """A few hundred KB of ONNX whose ConstantOfShape wants 1 GiB: RESOURCE_EXHAUSTED, serving memory flat."""
    from server_testkit import onnx_constant_of_shape

    graph = onnx_constant_of_shape(source_model_dir, gib=1.0)
    assert len(graph) < 1024 * 1024
    peak, stop = [_rss_bytes(os.getpid())], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(_rss_bytes(os.getpid()))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        err = _upload_onnx(stubs, source_model_dir, "gibibyte", graph)
    finally:
        stop.set()
        sampler.join()
    _assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "memory limit")
    assert _details(err).reason == "VALIDATION_LIMIT"
    assert max(peak) - peak[0] < 200 * 1024 * 1024  # the serving process never held the gibibyte
    _nothing_registered(stubs)


def test_card_for_a_gibibyte_model_is_refused_before_any_artifact_byte(stubs, source_model_dir) -> None:
    """An MLP card with two 16,384-wide layers: sized on the meta device; the client has sent only the header."""
    from xfer.models import card_for_model, create_model

    card = card_for_model(create_model("mlp", in_features=64, hidden=[8, 8], num_classes=10))
    card = card.__class__(
        **{**card.__dict__, "architecture_config": {**card.architecture_config, "hidden": [16384, 16384]}}
    )
    header = rs.CreateModelVersionRequest(
        header=rs.CreateModelVersionHeader(
            parent="models/huge",
            card=upload_card(card),
            artifacts=[rs.ArtifactDeclaration(format=SAFETENSORS, size_bytes=400 * 1024 * 1024, sha256="a" * 64)],
        )
    )
    hold = threading.Event()

    def header_then_wait():
        yield header
        hold.wait(30)  # no chunk is ever sent

    try:
        err = rpc_error(lambda: stubs.registry.CreateModelVersion(header_then_wait(), metadata=stubs.md, timeout=60))
    finally:
        hold.set()
    _assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "269,680,650 parameters", "--max-artifact-mb")
    assert _details(err).reason == "MODEL_TOO_LARGE"
    _nothing_registered(stubs)


@pytest.mark.parametrize("alias", ["stable\n", "stable\r\n", "stable ", "\nstable", "stäble", "stable\x00"])
def test_alias_with_a_trailing_newline_or_other_junk_is_refused(stubs, source_model_dir, alias) -> None:
    stubs.register("digits", source_model_dir)
    err = rpc_error(
        lambda: stubs.registry.SetAlias(
            rs.SetAliasRequest(name="models/digits/versions/1", alias=alias), metadata=stubs.md
        )
    )
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "invalid alias")
    assert _details(err).reason == "INVALID_NAME" and _details(err).field_violations[0][0] == "alias"
    assert stubs.get("models/digits/versions/1").aliases == ["latest"]


@pytest.mark.parametrize("model_id", ["digits\n", "digits\r\n", "digits\x00"])
def test_model_id_with_a_trailing_newline_is_refused(stubs, source_model_dir, model_id) -> None:
    err = rpc_error(lambda: stubs.register(model_id, source_model_dir))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "invalid model id")
    err = rpc_error(lambda: stubs.get(f"models/{model_id}/versions/1"))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "invalid model id")
    _nothing_registered(stubs)


def test_forged_page_token_with_a_huge_offset_is_invalid_argument(stubs, source_model_dir) -> None:
    import base64
    import json

    stubs.register("digits", source_model_dir)
    body = base64.urlsafe_b64encode(json.dumps({"q": "x", "k": 10**30}).encode()).decode().rstrip("=")
    for token in (body, f"{body}.AAAAAAAAAAAAAAAAAAAAAA", "e30"):
        for call in (
            lambda token=token: stubs.registry.ListModels(rs.ListModelsRequest(page_token=token), metadata=stubs.md),
            lambda token=token: stubs.registry.ListModelVersions(
                rs.ListModelVersionsRequest(parent="models/digits", page_token=token), metadata=stubs.md
            ),
        ):
            err = rpc_error(call)
            _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")
            assert _details(err).reason == "INVALID_PAGE_TOKEN"


def test_safetensors_header_nested_100000_deep_is_invalid_argument(stubs, source_model_dir) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    real = (source_model_dir / "model.safetensors").stat().st_size
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * max(0, real - len(raw))
    err = rpc_error(
        lambda: stubs.upload(model="deep", card=load_card(source_model_dir), artifacts=[Artifact(SAFETENSORS, data)])
    )
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "nests JSON too deeply")
    _nothing_registered(stubs)


@pytest.mark.parametrize(
    "field,value",
    [
        ("description", "clear\x1b[2J\x1b[Hscreen"),
        ("source_task", "ding\x07"),
        ("license", "MIT\x00"),
        ("label_names", tuple(f"c{i}" if i else "\x1b[31mred" for i in range(10))),
    ],
)
def test_card_text_with_control_characters_is_refused(stubs, source_model_dir, field, value) -> None:
    card = load_card(source_model_dir)
    card = card.__class__(**{**card.__dict__, field: value})
    err = rpc_error(lambda: stubs.upload(model="ctrl", card=card, artifacts=model_artifacts(source_model_dir)))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "control character U+")
    assert _details(err).reason == "INVALID_CARD"
    _nothing_registered(stubs)


def test_deprecation_message_with_control_characters_is_refused(stubs, source_model_dir) -> None:
    stubs.register("digits", source_model_dir)
    for message in ("\x1b]52;c;ZXZpbA==\x07", "nul\x00"):
        err = rpc_error(
            lambda message=message: stubs.registry.DeprecateModelVersion(
                rs.DeprecateModelVersionRequest(name="models/digits/versions/1", message=message), metadata=stubs.md
            )
        )
        _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "control character")
    assert not stubs.get("models/digits/versions/1").deprecated


def test_dp_false_with_an_epsilon_is_a_contradiction(stubs, source_model_dir) -> None:
    card = upload_card(load_card(source_model_dir))
    card.source_privacy.dp = False
    card.source_privacy.epsilon = 3.0
    err = rpc_error(lambda: stubs.upload(model="dp", card=card, artifacts=model_artifacts(source_model_dir)))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "dp=false but sets epsilon or delta")
    _nothing_registered(stubs)


def _run(**overrides):
    from xfer.v1 import metrics_service_pb2 as ms

    run = ms.Run(
        run_id="r1",
        model_version="models/digits/versions/1",
        strategy=ms.Strategy(name="full"),
        metrics={"accuracy": 0.5},
        train_examples_pow2=64,
        device_kind=ms.DEVICE_KIND_CPU,
    )
    for key, value in overrides.items():
        if key == "metric":
            run.metrics[value] = 0.1
        elif key == "hyperparameter":
            run.strategy.hyperparameters[value[0]] = value[1]
        elif key == "strategy":
            run.strategy.name = value
        else:
            setattr(run, key, value)
    return run


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(run_id="r1\n"), "run.run_id"),
        (dict(metric="acc\n"), "run.metrics"),
        (dict(strategy="full\n"), "run.strategy.name"),
        (dict(hyperparameter=("lr\n", "1")), "run.strategy.hyperparameters"),
        (dict(hyperparameter=("lr", "1\x00")), "run.strategy.hyperparameters[lr]"),
        (dict(model_version="models/digits/versions/1\n"), "run.model_version"),
    ],
    ids=["run-id", "metric", "strategy", "hyperparameter-name", "hyperparameter-nul", "model-version"],
)
def test_run_report_names_with_trailing_newlines_are_refused(server_and_stubs, overrides, field) -> None:
    from xfer.v1 import metrics_service_pb2 as ms
    from xfer.v1 import metrics_service_pb2_grpc as msg

    running, stubs = server_and_stubs
    runs = msg.MetricsServiceStub(stubs.channel)
    err = rpc_error(lambda: runs.ReportRun(ms.ReportRunRequest(run=_run(**overrides)), metadata=stubs.md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert _details(err).field_violations[0][0] == field


@pytest.mark.postgres
def test_nul_characters_and_forged_tokens_on_postgresql_are_invalid_argument(
    start_server, tokens, postgres_url, source_model_dir
) -> None:
    """PostgreSQL refuses NUL in text and BIGINT overflows: both must be the caller's error, not INTERNAL."""
    from xfer.v1 import metrics_service_pb2 as ms
    from xfer.v1 import metrics_service_pb2_grpc as msg

    running = start_server(token_file=tokens.file, db_url=postgres_url)
    with grpc.insecure_channel(running.target) as channel:
        stubs = Stubs.on(channel, tokens.operator)
        stubs.register("digits", source_model_dir)
        card = load_card(source_model_dir)
        card = card.__class__(**{**card.__dict__, "description": "nul\x00here"})
        err = rpc_error(lambda: stubs.upload(model="nul", card=card, artifacts=model_artifacts(source_model_dir)))
        _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "control character U+0000")
        err = rpc_error(
            lambda: stubs.registry.DeprecateModelVersion(
                rs.DeprecateModelVersionRequest(name="models/digits/versions/1", message="a\x00b"), metadata=stubs.md
            )
        )
        _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "control character")
        runs = msg.MetricsServiceStub(channel)
        err = rpc_error(
            lambda: runs.ReportRun(ms.ReportRunRequest(run=_run(hyperparameter=("lr", "1\x00"))), metadata=stubs.md)
        )
        _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "control characters")
        for token in (
            "eyJxIjoieCIsImsiOjEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMH0",
            running.registry.catalog._tokens.encode(query="versions:digits", last=10**30),
        ):
            err = rpc_error(
                lambda token=token: stubs.registry.ListModelVersions(
                    rs.ListModelVersionsRequest(parent="models/digits", page_token=token), metadata=stubs.md
                )
            )
            _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")
        err = rpc_error(lambda: runs.ListRuns(ms.ListRunsRequest(page_token=token), metadata=stubs.md))
        _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")
