"""`xfer finetune` end to end through `xfer.client.cli.main` against a real server: exit codes and the report."""

from __future__ import annotations

import io

from tests.client.server_process import new_server_process
from xfer.client.cli import main
from xfer.errors import EXIT_CODES


def test_refused_budget_exits_14_and_a_fitting_run_is_reported(tmp_path, source_model_dir):
    server = new_server_process(tmp_path / "server")
    try:
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            operator.register(source_model_dir, "digits-convnet")
        env = {"XFER_SERVER": server.target, "XFER_TOKEN": server.client_token, "XFER_CACHE": str(tmp_path / "cache")}
        common = [
            "finetune",
            "digits-convnet",
            "digits:shift=blur,per_class=5",
            "--strategy",
            "linear-probe",
            "--steps",
            "6",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
            "--privacy-budget",
            "2",
            "--accountant",
            "rdp",
        ]
        out, err = io.StringIO(), io.StringIO()
        code = main([*common, "--dp-epsilon", "3"], environ=env, stdout=out, stderr=err)
        assert code == EXIT_CODES["privacy_budget"] == 14, err.getvalue()
        assert "privacy budget exceeded" in err.getvalue() and err.getvalue().startswith("xfer: error:")

        out, err = io.StringIO(), io.StringIO()
        code = main([*common, "--dp-epsilon", "1", "--run-id", "fits-1"], environ=env, stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            runs = operator.list_runs(model="digits-convnet")
        assert [r.run_id for r in runs] == ["fits-1"]
        run = runs[0]
        assert run.train_examples_pow2 == 64 and run.privacy.dp and 0 < run.privacy.epsilon_spent <= 1 + 1e-9
        assert run.privacy.delta == 1e-5 and set(run.metrics) == {"accuracy", "macro_f1", "loss", "ece"}
        grid = 1 / int(run.hyperparameters["metric_grid"].split("/")[1])
        assert run.metrics["accuracy"] / grid == round(run.metrics["accuracy"] / grid)
    finally:
        server.stop()
