"""`xfer finetune REF DATA --episodes ...` against a real server on port 0; the model-adapting head on a meta card."""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from tests.client.server_process import new_server_process
from xfer.client.cli import main as cli_main
from xfer.client.fewshot.config import EpisodeConfig
from xfer.client.fewshot.evaluate import evaluate_model_episodes
from xfer.models import create_model
from xfer.models.card import ModelCard


def test_episodes_from_the_cli_report_means_and_intervals(tmp_path, source_model_dir):
    server = new_server_process(tmp_path / "server")
    try:
        with server.client(tmp_path / "op-cache", token="operator") as op:
            op.register(source_model_dir, "digits-convnet")
        env = {"XFER_SERVER": server.target, "XFER_TOKEN": server.client_token, "XFER_CACHE": str(tmp_path / "c")}
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(
            [
                "finetune",
                "digits-convnet",
                "digits:classes=5-9",
                "--episodes",
                "30",
                "--ways",
                "3",
                "--shots",
                "1,5",
                "--queries",
                "5",
                "--out",
                str(tmp_path / "ep"),
                "--json",
                "--run-id",
                "ep-1",
            ],
            environ=env,
            stdout=out,
            stderr=err,
        )
        assert code == 0, err.getvalue()
        result = json.loads(out.getvalue())
        metrics = result["run"]["metrics"]
        for head in ("prototype", "logreg"):
            one, five = metrics[f"fewshot/{head}/3way1shot"], metrics[f"fewshot/{head}/3way5shot"]
            assert 0.5 < one <= 1.0 and 0.5 < five <= 1.0 and 0 < metrics[f"fewshot/{head}/3way5shot/ci95"] < 0.2
        local = json.loads((tmp_path / "ep" / "episodes.json").read_text())
        assert local["kind"] == "episodes" and len(local["scores"]) == 4
        with server.client(tmp_path / "c") as client:
            (run,) = client.list_runs(strategy="fewshot")
        assert run.run_id == "ep-1" and run.metrics == metrics
        bad = io.StringIO()
        code = cli_main(
            ["finetune", "digits-convnet", "digits", "--episodes", "5", "--dp-epsilon", "1"],
            environ=env,
            stdout=io.StringIO(),
            stderr=bad,
        )
        assert code != 0 and "--dp-epsilon do not apply" in bad.getvalue()
    finally:
        server.stop()


def test_finetune_head_uses_a_meta_trained_cards_inner_loop():
    torch.manual_seed(0)
    model = create_model("mlp", in_features=8, hidden=[8], num_classes=3)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 12)
    x = torch.from_numpy((rng.normal(size=(4, 8))[y] * 3 + rng.normal(size=(48, 8))).astype(np.float32))
    card = ModelCard.from_dict(
        {
            **_card_dict(model),
            "training_method": "reptile",
            "training_settings": {"ways": "3", "inner_steps": "4", "inner_lr": "0.2"},
        }
    )
    report = evaluate_model_episodes(
        model,
        x,
        y,
        card=card,
        config=EpisodeConfig(episodes=10, ways=3, shots=(2,), queries=3, heads=("prototype", "finetune")),
    )
    assert report.score("finetune", 2).mean > 0.5 and report.score("prototype", 2).mean > 0.5


def _card_dict(model) -> dict:
    from xfer.models import card_for_model

    return card_for_model(model).to_dict()
