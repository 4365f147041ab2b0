"""`xfer finetune --strategy shot|tent` on unlabelled data, end to end against a real server; the refusals' exit codes."""

from __future__ import annotations

import argparse
import io

import numpy as np

from tests.client.server_process import new_server_process
from xfer.client.cli import main
from xfer.client.finetune import options
from xfer.client.finetune.command import config_from_args
from xfer.errors import EXIT_CODES


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_make_a_source_free_config():
    config = config_from_args(_args("data.npz", "--strategy", "shot", "--criterion", "entropy"))
    assert config.strategy == "shot" and config.criterion == "entropy"
    config = config_from_args(_args("data.npz", "--strategy", "tent,shot", "--search", "--lr", "1e-4,1e-3"))
    assert config.search is not None and config.search.strategies == ("tent", "shot")
    assert config_from_args(_args("data.npz")).criterion == "im"


def test_unlabelled_adaptation_from_the_cli(tmp_path, source_model_dir):
    server = new_server_process(tmp_path / "server")
    try:
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            operator.register(source_model_dir, "digits-convnet")
        env = {"XFER_SERVER": server.target, "XFER_TOKEN": server.client_token, "XFER_CACHE": str(tmp_path / "cache")}
        # Images without labels: an .npz with only `x`.
        np.savez(tmp_path / "unlabelled.npz", x=np.random.default_rng(0).random((60, 8, 8)).astype(np.float32))
        out, err = io.StringIO(), io.StringIO()
        code = main(
            [
                "finetune",
                "digits-convnet",
                str(tmp_path / "unlabelled.npz"),
                "--strategy",
                "shot",
                "--steps",
                "4",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "out"),
                "--run-id",
                "shot-1",
            ],
            environ=env,
            stdout=out,
            stderr=err,
        )
        assert code == 0, err.getvalue()
        assert "no labelled test split" in out.getvalue() and (tmp_path / "out" / "model.onnx").exists()

        # A built-in spec with hidden labels keeps its test labels for scoring only.
        code = main(
            [
                "finetune",
                "digits-convnet",
                "digits:shift=blur,unlabeled",
                "--strategy",
                "tent",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "out2"),
                "--run-id",
                "tent-1",
            ],
            environ=env,
            stdout=out,
            stderr=err,
        )
        assert code == 0, err.getvalue()
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            runs = {r.run_id: r for r in operator.list_runs(model="digits-convnet")}
        assert set(runs) == {"shot-1", "tent-1"}
        assert set(runs["shot-1"].metrics) == {"label_free/im", "label_free/entropy"}
        assert {"accuracy", "label_free/im"} <= set(runs["tent-1"].metrics)
        assert runs["tent-1"].hyperparameters["labels"] == "none" and runs["tent-1"].strategy == "tent"

        # Refusals exit with code 3 and say why, before anything is trained or reported.
        for argv, reason in (
            (["--strategy", "shot", "--dp-epsilon", "1"], "diversity term"),
            (["--strategy", "aad", "--dp-epsilon", "1"], "bank"),
            (["--strategy", "lp-ft"], "tent, shot, aad, nrc"),
        ):
            err = io.StringIO()
            code = main(
                [
                    "finetune",
                    "digits-convnet",
                    "digits:shift=blur,unlabeled",
                    *argv,
                    "--steps",
                    "2",
                    "--device",
                    "cpu",
                    "--out",
                    str(tmp_path / "refused"),
                ],
                environ=env,
                stdout=io.StringIO(),
                stderr=err,
            )
            assert code == EXIT_CODES["invalid_argument"] == 3, err.getvalue()
            assert reason in err.getvalue() and err.getvalue().startswith("xfer: error:")
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            assert len(operator.list_runs(model="digits-convnet")) == 2
    finally:
        server.stop()
