"""The SDK against a real server subprocess: discovery, pulls, loading, operator calls, metrics, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xfer.client import ArtifactFormat, LoadedModel, Run, RunPrivacy
from xfer.client.errors import (
    AlreadyExistsError,
    AuthenticationError,
    InvalidArgumentError,
    InvalidRefError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    XferError,
)
from xfer.client.transport import RetryPolicy, TlsConfig
from xfer.models.card import ModelCard
from xfer.models.weights import load_safetensors, model_from_card


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def local_card(model_dir: Path) -> ModelCard:
    return ModelCard.from_dict(json.loads((model_dir / "card.json").read_text()))


def test_list_get_and_card_round_trip(xfer_server, model_dir, tmp_path):
    with xfer_server.client(tmp_path) as xfer:
        models = {m.model: m for m in xfer.list_models()}
        assert "digits-convnet" in models
        summary = models["digits-convnet"]
        assert summary.version_count >= 1 and summary.aliases["latest"] >= 1
        version = xfer.get("digits-convnet:1")
        assert version.name == "models/digits-convnet/versions/1" and version.ref == "digits-convnet:1"
        # The card survives proto conversion both ways unchanged.
        assert version.card == local_card(model_dir)
        safetensors = version.artifact("safetensors")
        assert safetensors.sha256 == sha256(model_dir / "model.safetensors")
        assert safetensors.size_bytes == (model_dir / "model.safetensors").stat().st_size
        assert [v.version for v in xfer.list_versions("digits-convnet")][-1] == 1


def test_pull_verifies_caches_and_second_pull_transfers_nothing(xfer_server, model_dir, tmp_path):
    progress: list[tuple[int, int]] = []
    with xfer_server.client(tmp_path / "cache") as xfer:
        first = xfer.pull(
            "digits-convnet:1", "safetensors", progress=lambda done, total: progress.append((done, total))
        )
        assert not first.cache_hit and first.resumed_from == 0
        # Many small chunks (the fixture's server streams 16 KiB), reported in order up to the total.
        assert len(progress) > 5 and progress[-1] == (first.size_bytes, first.size_bytes)
        assert [d for d, _ in progress] == sorted(d for d, _ in progress)
        assert first.transferred_bytes == first.size_bytes == (model_dir / "model.safetensors").stat().st_size
        assert first.blob_path == tmp_path / "cache" / "blobs" / first.sha256
        assert sha256(first.path) == sha256(first.blob_path) == first.sha256
        assert first.path.name == "model.safetensors"
        second = xfer.pull("digits-convnet", "safetensors")
        assert second.cache_hit and second.transferred_bytes == 0 and second.blob_path == first.blob_path
        # Nothing but verified blobs under blobs/, no leftovers in partial/.
        assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == [first.sha256]
        assert not list((tmp_path / "cache" / "partial").iterdir())
        # The resolved reference was recorded for both selectors.
        ref = xfer.cache.read_ref(model="digits-convnet", selector="latest")
        assert ref is not None and ref.artifacts["safetensors"]["sha256"] == first.sha256


def test_load_torch_and_onnx_match_the_uploaded_model(xfer_server, model_dir, tmp_path):
    reference = load_safetensors(model_from_card(local_card(model_dir)), model_dir / "model.safetensors").eval()
    x = torch.randn(3, *local_card(model_dir).input_shape, generator=torch.Generator().manual_seed(0))
    with xfer_server.client(tmp_path) as xfer:
        loaded = xfer.load_torch("digits-convnet:1")
        assert isinstance(loaded, LoadedModel) and not loaded.module.training
        assert loaded.card == local_card(model_dir) and loaded.model_version.version == 1
        with torch.no_grad():
            assert torch.equal(loaded.module(x), reference(x))
        session = xfer.load_onnx("digits-convnet:1")
        logits, _features = session.run(["logits", "features"], {session.get_inputs()[0].name: x.numpy()})
        np.testing.assert_allclose(logits, reference(x).detach().numpy(), atol=1e-4)


def test_operator_calls_alias_deprecate_delete(xfer_server, model_dir, tmp_path):
    with xfer_server.client(tmp_path, token="operator") as op:
        sent: list[int] = []
        v1 = op.register(model_dir, "alias-model", progress=lambda done, total: sent.append(total - done))
        assert sent and sent[-1] == 0
        v2 = op.register([model_dir / "model.safetensors", model_dir / "card.json"], "alias-model")
        assert (v1.version, v2.version) == (1, 2) and "latest" in v2.aliases
        # Without model.onnx the server derives it.
        assert v2.artifact("onnx") is not None and v2.artifact("onnx").derived
        assert "stable" in op.set_alias("alias-model:1", "stable").aliases
        assert op.get("alias-model@stable").version == 1
        deprecated = op.deprecate("alias-model:1", "use @latest")
        assert deprecated.deprecated and deprecated.deprecation_message == "use @latest"
        with pytest.raises(InvalidArgumentError, match="latest"):
            op.set_alias("alias-model:1", "latest")
        with pytest.raises(InvalidArgumentError, match="which version"):
            op.delete("alias-model")
        op.delete("alias-model:2")
        with pytest.raises(NotFoundError):
            op.get("alias-model:2")
        assert op.get("alias-model").version == 1  # latest moved back


def test_register_refuses_bad_input_locally(xfer_server, model_dir, tmp_path):
    with xfer_server.client(tmp_path, token="operator") as op:
        with pytest.raises(InvalidArgumentError, match="model id"):
            op.register(tmp_path, "Bad_Id")
        with pytest.raises(InvalidArgumentError, match="no model weights"):
            op.register(tmp_path, "empty-model")
        (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
        with pytest.raises(InvalidArgumentError, match="card.json"):
            op.register(tmp_path, "empty-model")
        # The card is checked by the server's rules before any byte is uploaded (20 MB used to hit the
        # server's message limit), and JSON nested past Python's recursion limit is a clear error.
        card = tmp_path / "card.json"
        fields = json.loads((model_dir / "card.json").read_text())
        card.write_text(json.dumps({**fields, "description": "x" * 20_000_000}))
        with pytest.raises(InvalidArgumentError, match="'description' is longer than 4096 characters"):
            op.register(tmp_path, "empty-model")
        card.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
        with pytest.raises(InvalidArgumentError, match="its JSON is nested too deeply"):
            op.register(tmp_path, "empty-model")


def test_server_rejects_corrupt_upload(xfer_server, model_dir, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "card.json").write_text((model_dir / "card.json").read_text())
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    with xfer_server.client(tmp_path, token="operator") as op:
        with pytest.raises(InvalidArgumentError):
            op.register(folder, "bad-upload")
        with pytest.raises(NotFoundError):
            op.get("bad-upload")


def test_metrics_report_is_idempotent_and_summarized(xfer_server, tmp_path):
    run = Run(
        run_id="sdk-run-1",
        model_version="digits-convnet:1",
        strategy="linear-probe",
        metrics={"accuracy": 0.75, "loss": 0.5},
        hyperparameters={"lr": "0.01"},
        privacy=RunPrivacy(dp=True, epsilon_spent=3.0, delta=1e-5, noise_multiplier=1.0, max_grad_norm=1.0),
        train_examples_pow2=512,
        device_kind="cpu",
        wall_seconds=1.5,
    )
    with xfer_server.client(tmp_path) as xfer:
        first = xfer.report(run)
        assert not first.duplicate and first.run.model_version == "models/digits-convnet/versions/1"
        assert xfer.report(run).duplicate
        with pytest.raises(AlreadyExistsError):
            xfer.report(Run(**{**run.__dict__, "metrics": {"accuracy": 0.1}}))
        runs = xfer.list_runs(model="digits-convnet", strategy="linear-probe")
        assert "sdk-run-1" in [r.run_id for r in runs]
        stored = next(r for r in runs if r.run_id == "sdk-run-1")
        assert stored.privacy == run.privacy and stored.metrics == run.metrics
        board = xfer.summarize_runs(metric="accuracy", model="digits-convnet:1")
        assert any(e.strategy == "linear-probe" and e.dp and e.count >= 1 for e in board.entries)
        with pytest.raises(InvalidArgumentError):
            xfer.report(
                Run(
                    run_id="sdk-run-2",
                    model_version="digits-convnet:1",
                    strategy="full",
                    metrics={"Bad Name": 1.0},
                    train_examples_pow2=512,
                )
            )


def test_errors_are_typed_and_builtin(xfer_server, tmp_path):
    with xfer_server.client(tmp_path, token="wrong-token") as bad:
        with pytest.raises(AuthenticationError) as info:
            bad.list_models()
        assert isinstance(info.value, PermissionError) and "wrong-token" not in str(info.value)
    with xfer_server.client(tmp_path) as xfer:
        with pytest.raises(NotFoundError) as info:
            xfer.pull("no-such-model")
        assert isinstance(info.value, LookupError) and isinstance(info.value, XferError)
        with pytest.raises(PermissionDeniedError):
            xfer.set_alias("digits-convnet:1", "mine")
        with pytest.raises(InvalidRefError):
            xfer.get("Not A Ref")
        with pytest.raises(InvalidArgumentError, match="format"):
            xfer.pull("digits-convnet", "pickle")


def test_unreachable_server_is_a_connection_error(tmp_path):
    from xfer.client import Client

    with Client("127.0.0.1:1", cache_dir=tmp_path, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)) as xfer:
        with pytest.raises(UnavailableError) as info:
            xfer.list_models()
    assert isinstance(info.value, ConnectionError) and "127.0.0.1:1" in str(info.value)


def test_tls_and_mutual_tls(new_server, tls_files, model_dir, tmp_path, run_cli):
    server = new_server(
        extra_args=(
            "--tls-cert",
            str(tls_files.server_cert),
            "--tls-key",
            str(tls_files.server_key),
            "--tls-client-ca",
            str(tls_files.ca_cert),
        )
    )
    mtls = TlsConfig(root_ca=tls_files.ca_cert, client_cert=tls_files.client_cert, client_key=tls_files.client_key)
    with server.client(tmp_path, token="operator", tls=mtls) as op:
        op.register(model_dir, "tls-model")
        assert op.pull("tls-model").transferred_bytes > 0
    # Without a client certificate the handshake fails: the server is unreachable to us.
    with server.client(tmp_path, tls=TlsConfig(root_ca=tls_files.ca_cert)) as no_cert:
        with pytest.raises(UnavailableError):
            no_cert.list_models()
    with pytest.raises(InvalidArgumentError, match="both"):
        TlsConfig(root_ca=tls_files.ca_cert, client_cert=tls_files.client_cert)
    # The CLI takes the same settings as flags (or XFER_TLS_* variables).
    ok = run_cli(
        server,
        "models",
        "--tls-ca",
        str(tls_files.ca_cert),
        "--tls-cert",
        str(tls_files.client_cert),
        "--tls-key",
        str(tls_files.client_key),
    )
    assert ok.code == 0 and "tls-model" in ok.out, ok.err
    env = {
        "XFER_TLS_CA": str(tls_files.ca_cert),
        "XFER_TLS_CERT": str(tls_files.client_cert),
        "XFER_TLS_KEY": str(tls_files.client_key),
    }
    assert run_cli(server, "show", "tls-model", env=env).code == 0
    plaintext = run_cli(server, "models", "--timeout", "3")
    assert plaintext.code == 8 and plaintext.err.startswith("xfer: error: server unavailable")


def test_register_a_torch_state_dict_and_use_the_result_as_a_path(xfer_server, model_dir, tmp_path):
    card = local_card(model_dir)
    module = load_safetensors(model_from_card(card), model_dir / "model.safetensors")
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "card.json").write_text((model_dir / "card.json").read_text())
    with xfer_server.client(tmp_path / "cache", token="operator") as op:
        version = op.register([tmp_path / "weights.pt", tmp_path / "card.json"], "pt-model")
        assert {a.format for a in version.artifacts} == {ArtifactFormat.SAFETENSORS, ArtifactFormat.ONNX}
        pulled = op.pull("pt-model")
        with open(pulled, "rb") as f:  # PullResult is os.PathLike
            assert hashlib.sha256(f.read()).hexdigest() == pulled.sha256
        loaded = op.load_torch("pt-model")
        x = torch.randn(2, *card.input_shape)
        with torch.no_grad():
            assert torch.equal(loaded.module(x), module.eval()(x))
