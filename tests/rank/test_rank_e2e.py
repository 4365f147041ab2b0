"""`xfer rank` against a real server on port 0: ONNX pulled only, the trained source ranked first, scores reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.client.server_process import new_server_process
from xfer.client.cli import main as cli_main


@pytest.fixture
def random_source_dir(tmp_path: Path, source_model_dir: Path) -> Path:
    """The session's trained digits convnet's card with freshly initialised weights (no ONNX: the server derives it)."""
    import torch

    from xfer.models.card import ModelCard
    from xfer.models.weights import model_from_card, save_safetensors

    out = tmp_path / "random-source"
    out.mkdir()
    card = ModelCard.from_dict(json.loads((source_model_dir / "card.json").read_text()))
    torch.manual_seed(123)
    save_safetensors(model_from_card(card), out / "model.safetensors")
    shutil.copy(source_model_dir / "card.json", out / "card.json")
    return out


def test_rank_pulls_only_onnx_ranks_the_trained_source_first_and_reports_scores(
    tmp_path, source_model_dir, random_source_dir
):
    server = new_server_process(tmp_path / "server")
    try:
        with server.client(tmp_path / "op-cache", token="operator") as op:
            op.register(source_model_dir, "trained")
            op.register(random_source_dir, "scratch")
        cache = tmp_path / "client-cache"
        env = {"XFER_SERVER": server.target, "XFER_TOKEN": server.client_token, "XFER_CACHE": str(cache)}

        def xfer(*argv: str) -> tuple[int, str, str]:
            import io

            out, err = io.StringIO(), io.StringIO()
            return cli_main(list(argv), environ=env, stdout=out, stderr=err), out.getvalue(), err.getvalue()

        code, out, err = xfer(
            "rank", "digits:classes=5-9", "--models", "scratch,trained", "--json", "--run-id", "rk-e2e"
        )
        assert code == 0, err
        result = json.loads(out)
        assert [r["ref"] for r in result["ranking"]] == ["trained", "scratch"]
        assert result["ranking"][0]["logme"] > result["ranking"][1]["logme"]
        assert result["reported"] == ["rk-e2e-1", "rk-e2e-2"]
        with server.client(cache) as client:
            for name in ("trained", "scratch"):
                version = client.get(name)
                kinds = {a.format.name.lower(): a.sha256 for a in version.artifacts}
                assert client.cache.has_blob(kinds["onnx"]) and not client.cache.has_blob(kinds["safetensors"])
            runs = {r.run_id: r for r in client.list_runs(strategy="rank")}
        assert set(runs) == {"rk-e2e-1", "rk-e2e-2"}
        assert set(runs["rk-e2e-1"].metrics) == {"rank/logme", "rank/knn_accuracy"}
        n_train = result["ranking"][0]["examples"]
        assert runs["rk-e2e-1"].train_examples_pow2 >= n_train > runs["rk-e2e-1"].train_examples_pow2 // 2
        # A plain table for people; a bad criterion is a usage error that says what is valid.
        code, out, _ = xfer("rank", "digits:classes=5-9", "--models", "trained,scratch", "--no-report")
        assert code == 0 and out.splitlines()[0].split()[:3] == ["PLACE", "MODEL", "LOGME"]
        code, _, err = xfer("rank", "digits", "--models", "trained", "--k", "0", "--no-report")
        assert code != 0 and "k must be a whole number" in err
        code, _, err = xfer("rank", "digits", "--models", "nosuch", "--no-report")
        assert code != 0 and "nosuch" in err
    finally:
        server.stop()
