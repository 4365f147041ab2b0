"""`xfer finetune --head ... --self-pretrain-steps ...` on a multi-task source, end to end against a real server."""

from __future__ import annotations

import io
import json

from tests.client.server_process import new_server_process
from xfer.client.cli import main


def test_a_multitask_source_travels_and_a_client_picks_a_head_and_self_pretrains(tmp_path):
    from xfer.models.train import train_source_model

    train_source_model(
        out_dir=tmp_path / "mt",
        arch="convnet",
        config={"width": 8, "depth": 2},
        epochs=1,
        seed=0,
        tasks="items=0-4;parity=even:0,2,4,6,8|odd:1,3,5,7,9@0.5",
    )
    server = new_server_process(tmp_path / "server")
    try:
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            operator.register(tmp_path / "mt", "multi")
        env = {"XFER_SERVER": server.target, "XFER_TOKEN": server.client_token, "XFER_CACHE": str(tmp_path / "cache")}
        out, err = io.StringIO(), io.StringIO()
        assert main(["show", "multi", "--json"], environ=env, stdout=out, stderr=err) == 0, err.getvalue()
        card = json.loads(out.getvalue())["card"]
        assert [t["name"] for t in card["tasks"]] == ["items", "parity"] and card["training_method"] == "multitask"

        common = [
            "finetune",
            "multi",
            "digits:classes=0-1,per_class=8",
            "--strategy",
            "linear-probe",
            "--steps",
            "5",
            "--device",
            "cpu",
            "--json",
        ]
        out, err = io.StringIO(), io.StringIO()
        code = main(
            [*common, "--head", "parity", "--self-pretrain-steps", "4", "--run-id", "mt-1"],
            environ=env,
            stdout=out,
            stderr=err,
        )
        assert code == 0, err.getvalue()
        hyper = json.loads(out.getvalue())["run"]["hyperparameters"]
        assert hyper["head"] == "parity" and hyper["self_pretrain"] == "masked" and hyper["self_pretrain_steps"] == "4"
        err = io.StringIO()
        assert main([*common, "--head", "colour"], environ=env, stdout=io.StringIO(), stderr=err) != 0
        assert "no head 'colour'" in err.getvalue() and "items, parity" in err.getvalue()
    finally:
        server.stop()
