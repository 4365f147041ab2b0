"""End to end against a real server on port 0: pull ONNX, fit a head torch-free, report, read it back."""

from __future__ import annotations

import argparse

import pytest

from tests.client.server_process import new_server_process
from xfer.client.onnxhead import command


@pytest.fixture
def server(tmp_path, source_model_dir):
    server = new_server_process(tmp_path / "server")
    with server.client(tmp_path / "op-cache", token="operator") as operator:
        operator.register(source_model_dir, "digits-convnet")
    yield server
    server.stop()


def test_pull_fit_head_and_report_like_any_other_run(server, tmp_path):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    cache = tmp_path / "client-cache"
    with server.client(cache) as client:
        pulled = client.pull("digits-convnet", "onnx")
        card = pulled.model_version.card
        outcomes = {}
        for head, dp in (("logreg", None), ("prototype", "4")):
            argv = ["digits:classes=5-9,per_class=20", "--head", head, "--out", str(tmp_path / head)]
            args = parser.parse_args(argv + (["--dp-epsilon", dp] if dp else []))
            outcome = command.run(args, onnx_path=pulled.path, card=card, cache_dir=cache, progress=False)
            run = outcome.to_run(run_id=f"e2e-{head}", model_version=pulled.model_version.name)
            reported = client.report(run)
            assert not reported.duplicate
            outcomes[head] = (outcome, run)
        assert client.report(outcomes["logreg"][1]).duplicate  # idempotent on run_id
        stored = {r.strategy: r for r in client.list_runs(model="digits-convnet")}
        board = client.summarize_runs(metric="accuracy", model="digits-convnet")
    assert set(stored) == {"onnx-logreg", "onnx-prototype"}
    for head, (_outcome, run) in outcomes.items():
        back = stored[f"onnx-{head}"]
        assert back.metrics == run.metrics and back.train_examples_pow2 == 128
        assert back.hyperparameters == run.hyperparameters
    assert stored["onnx-prototype"].privacy.dp and stored["onnx-prototype"].privacy.epsilon_spent == pytest.approx(4.0)
    assert not stored["onnx-logreg"].privacy.dp
    assert {(e.strategy, e.dp) for e in board.entries} == {("onnx-logreg", False), ("onnx-prototype", True)}
    # The DP run was charged to the same ledger file `xfer finetune` uses in this cache dir.
    from xfer.client.finetune.ledger import PrivacyLedger

    assert PrivacyLedger.in_cache(cache).status(outcomes["prototype"][0].dataset_id).spent == pytest.approx(4.0)
