"""Every `xfer` subcommand against a real server, in-process and as a real subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.server_process import cli_env

XFER = Path(sys.executable).with_name("xfer")


def one_error_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("xfer: error: ") and "Traceback" not in result.err
    return lines[0]


def test_models_versions_show(xfer_server, run_cli):
    table = run_cli(xfer_server, "models")
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split()[:3] == ["MODEL", "VERSIONS", "LATEST"]
    assert any(row.split()[0] == "digits-convnet" for row in rows)

    listed = run_cli(xfer_server, "models", "--json")
    assert listed.code == 0 and "digits-convnet" in [m["model"] for m in json.loads(listed.out)]
    # Global flags work before the subcommand too.
    assert json.loads(run_cli(xfer_server, "--json", "models").out) == json.loads(listed.out)

    versions = run_cli(xfer_server, "versions", "digits-convnet", "--json")
    assert versions.code == 0 and json.loads(versions.out)[-1]["ref"] == "digits-convnet:1"

    show = run_cli(xfer_server, "show", "digits-convnet:1")
    assert show.code == 0
    assert "architecture" in show.out and "convnet" in show.out and "safetensors" in show.out
    shown = json.loads(run_cli(xfer_server, "show", "digits-convnet:1", "--json").out)
    assert shown["version"] == 1 and shown["card"]["architecture"] == "convnet"
    assert {a["format"] for a in shown["artifacts"]} == {"safetensors", "onnx"}


def test_pull_prints_path_and_json(xfer_server, run_cli, model_dir, tmp_path):
    cache = tmp_path / "cache"
    human = run_cli(xfer_server, "pull", "digits-convnet:1", cache_dir=cache)
    assert human.code == 0, human.err
    assert "downloaded, verified" in human.out
    path = Path(human.out.strip().splitlines()[-1])
    assert path.read_bytes() == (model_dir / "model.safetensors").read_bytes()
    again = run_cli(xfer_server, "pull", "digits-convnet:1", "--json", cache_dir=cache)
    document = json.loads(again.out)  # stdout holds the JSON document and nothing else
    assert document["cache_hit"] and document["transferred_bytes"] == 0
    onnx = json.loads(run_cli(xfer_server, "pull", "digits-convnet", "--format", "onnx", "--json", cache_dir=cache).out)
    assert onnx["format"] == "onnx" and Path(onnx["path"]).name == "model.onnx"
    assert hashlib.sha256(Path(onnx["blob_path"]).read_bytes()).hexdigest() == onnx["sha256"]


def test_operator_commands(xfer_server, run_cli, model_dir):
    registered = run_cli(xfer_server, "register", str(model_dir), "--model", "cli-model", token="operator")
    assert registered.code == 0, registered.err
    assert registered.out.startswith("registered cli-model:1")
    second = json.loads(
        run_cli(xfer_server, "register", str(model_dir), "--model", "cli-model", "--json", token="operator").out
    )
    assert second["version"] == 2 and "latest" in second["aliases"]

    alias = run_cli(xfer_server, "alias", "cli-model:1", "stable", token="operator")
    assert alias.code == 0 and alias.out.strip() == "cli-model@stable -> cli-model:1"
    deprecate = run_cli(xfer_server, "deprecate", "cli-model:1", "--message", "use @latest", token="operator")
    assert deprecate.code == 0 and deprecate.out.strip() == "deprecated cli-model:1: use @latest"
    shown = run_cli(xfer_server, "show", "cli-model@stable")
    assert "DEPRECATED" in shown.out and "deprecated" in shown.err  # a warning line on stderr

    refused = run_cli(xfer_server, "delete", "cli-model")
    assert refused.code == 3 and "which version" in one_error_line(refused)
    denied = run_cli(xfer_server, "delete", "cli-model:2")  # a client token
    assert denied.code == 7 and "operator" in one_error_line(denied)
    deleted = run_cli(xfer_server, "delete", "cli-model:2", "--json", token="operator")
    assert deleted.code == 0 and json.loads(deleted.out) == {"deleted": "models/cli-model/versions/2"}
    assert run_cli(xfer_server, "show", "cli-model:2").code == 4


def test_runs_and_leaderboard(xfer_server, run_cli, tmp_path):
    from xfer.client import Run

    with xfer_server.client(tmp_path) as xfer:
        for i, accuracy in enumerate([0.6, 0.8]):
            xfer.report(
                Run(
                    run_id=f"cli-run-{i}",
                    model_version="digits-convnet:1",
                    strategy="full",
                    metrics={"accuracy": accuracy},
                    train_examples_pow2=128,
                    device_kind="cpu",
                )
            )
    runs = run_cli(xfer_server, "runs", "--model", "digits-convnet", "--strategy", "full")
    assert runs.code == 0 and runs.out.splitlines()[0].split()[:3] == ["RUN", "VERSION", "STRATEGY"]
    assert "cli-run-0" in runs.out and "cli-run-1" in runs.out
    as_json = json.loads(run_cli(xfer_server, "runs", "--json", "--strategy", "full").out)
    assert {"cli-run-0", "cli-run-1"} <= {r["run_id"] for r in as_json}
    board = run_cli(xfer_server, "leaderboard", "--metric", "accuracy", "--model", "digits-convnet:1")
    assert board.code == 0 and "full" in board.out
    entries = json.loads(run_cli(xfer_server, "leaderboard", "--json").out)["entries"]
    full = next(e for e in entries if e["strategy"] == "full" and not e["dp"])
    assert full["count"] >= 2 and full["best"] >= 0.8


def test_finetune_pulls_adapts_saves_and_reports(xfer_server, run_cli, tmp_path):
    out = tmp_path / "adapted"
    result = run_cli(
        xfer_server,
        "finetune",
        "digits-convnet:1",
        "digits:classes=0-4,per_class=10",
        "--strategy",
        "linear-probe",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--run-id",
        "cli-ft-1",
        "--json",
    )
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["run"]["run_id"] == "cli-ft-1" and document["run"]["strategy"] == "linear-probe"
    assert "accuracy" in document["run"]["metrics"]
    assert (out / "model.safetensors").exists()
    listed = json.loads(run_cli(xfer_server, "runs", "--json", "--strategy", "linear-probe").out)
    assert "cli-ft-1" in {r["run_id"] for r in listed}


def test_fit_head_adapts_the_onnx_artifact_and_reports(xfer_server, run_cli, tmp_path):
    out = tmp_path / "head"
    result = run_cli(
        xfer_server,
        "fit-head",
        "digits-convnet:1",
        "digits:classes=0-4,per_class=10",
        "--head",
        "prototype",
        "--out",
        str(out),
        "--run-id",
        "cli-head-1",
        "--json",
    )
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["run"]["strategy"] == "onnx-prototype" and "accuracy" in document["run"]["metrics"]
    assert (out / "model.onnx").exists() and not (out / "model.safetensors").exists()


def test_errors_are_one_line_with_distinct_exit_codes(xfer_server, run_cli):
    wrong = run_cli(xfer_server, "models", token="not-a-token")
    assert wrong.code == 6 and "not-a-token" not in wrong.err
    assert "token" in one_error_line(wrong)
    missing = run_cli(xfer_server, "show", "no-such-model")
    assert missing.code == 4 and "no-such-model" in one_error_line(missing)
    bad_ref = run_cli(xfer_server, "pull", "Bad:Ref")
    assert bad_ref.code == 3 and "MODEL:VERSION" in one_error_line(bad_ref)
    down = run_cli(None, "models", "--timeout", "2", env={"XFER_SERVER": "127.0.0.1:1"})
    assert down.code == 8 and "127.0.0.1:1" in one_error_line(down)
    usage = run_cli(xfer_server, "pull")
    assert usage.code == 2 and "REF" in one_error_line(usage)
    unknown = run_cli(xfer_server, "frobnicate")
    assert unknown.code == 2 and "frobnicate" in one_error_line(unknown)


FINETUNE = ("finetune", "digits-convnet:1", "digits")
FIT_HEAD = ("fit-head", "digits-convnet:1", "digits")
RANK = ("rank", "digits", "--models", "aa-model:1,bb-model:1")


@pytest.mark.parametrize(
    ("command", "flag", "value", "message"),
    [
        (FINETUNE, "--steps", "-1", "steps must be a positive finite number, got -1"),
        (FINETUNE, "--lr", "nan", "lr must be a positive finite number, got nan"),
        (FINETUNE, "--dp-epsilon", "inf", "target epsilon must be between 0.01 and 100, got inf"),
        (FINETUNE, "--dp-epsilon", "1e-9", "target epsilon must be between 0.01 and 100, got 1e-09"),
        (FINETUNE, "--lr", "1e300", "lr must be at most 3.4e+38 (training computes in float32), got 1e+300"),
        (FINETUNE, "--seed", "-5", "a seed is a whole number 0..4294967295, got '-5'"),
        (FIT_HEAD, "--seed", "99999999999999999999", "a seed is a whole number 0..4294967295"),
        (RANK, "--seed", "-1", "a seed is a whole number 0..4294967295, got '-1'"),
        (FIT_HEAD, "--l2", "-1", "l2 must be positive"),
        (FIT_HEAD, "--batch-size", "0", "batch_size must be positive, got 0"),
        (FIT_HEAD, "--dp-epsilon", "nan", "target epsilon must be positive and finite, got nan"),
        (FIT_HEAD, "--threads", "-3", "threads must be 0 (onnxruntime's choice) or more, got -3"),
        (RANK, "--batch-size", "-1", "batch_size must be positive, got -1"),
        (RANK, "--threads", "-2", "threads must be 0 (onnxruntime's choice) or more, got -2"),
    ],
)
def test_a_bad_flag_is_reported_before_contacting_the_server(run_cli, command, flag, value, message):
    # The server address is unreachable: the flag's error must come first, not "server unavailable".
    result = run_cli(None, *command, flag, value, env={"XFER_SERVER": "127.0.0.1:1"})
    assert result.code != 0 and message in one_error_line(result)


def test_real_xfer_subprocess(xfer_server, tmp_path):
    env = cli_env(xfer_server, tmp_path / "cache", xfer_server.client_token)
    ok = subprocess.run(
        [str(XFER), "pull", "digits-convnet:1", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["transferred_bytes"] > 0
    assert "\r" not in ok.stderr and "[#" not in ok.stderr  # stderr is not a TTY here: no progress bar
    env["XFER_TOKEN"] = "wrong-token"
    bad = subprocess.run([str(XFER), "models"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 6 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("xfer: error:")
    assert "wrong-token" not in bad.stderr


@pytest.mark.parametrize("argv", [["--help"], ["pull", "--help"], ["finetune", "--help"]])
def test_help(run_cli, argv):
    result = run_cli(None, *argv)
    assert result.code == 0 and "usage: xfer" in result.out


def test_offline_mode_serves_cached_models_only(xfer_server, run_cli, tmp_path):
    cache = tmp_path / "cache"
    assert run_cli(xfer_server, "pull", "digits-convnet:1", cache_dir=cache).code == 0
    offline = {"XFER_OFFLINE": "1", "XFER_SERVER": "127.0.0.1:1"}  # nothing listens there: proves no contact
    shown = run_cli(None, "show", "digits-convnet:1", "--json", cache_dir=cache, env=offline)
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["card"]["architecture"] == "convnet"
    pulled = json.loads(run_cli(None, "pull", "digits-convnet:1", "--json", cache_dir=cache, env=offline).out)
    assert pulled["cache_hit"] and pulled["transferred_bytes"] == 0
    missing = run_cli(None, "pull", "digits-convnet:1", "--format", "onnx", cache_dir=cache, env=offline)
    assert missing.code == 8 and "offline mode" in one_error_line(missing)
    listing = run_cli(None, "models", cache_dir=cache, env=offline)
    assert listing.code == 8 and "needs the server" in one_error_line(listing)


def test_login_checks_the_token_then_later_commands_use_it(xfer_server, run_cli, tmp_path):
    config = {"XFER_CONFIG_DIR": str(tmp_path / "config")}
    refused = run_cli(xfer_server, "--token", "not-a-token", "login", token=None, env=config)
    assert refused.code == 6 and not (tmp_path / "config" / "credentials.json").exists()
    assert "not-a-token" not in refused.err
    stored = run_cli(xfer_server, "--token", xfer_server.client_token, "login", token=None, env=config)
    assert stored.code == 0, stored.err
    listed = run_cli(xfer_server, "models", "--json", token=None, env=config)  # no XFER_TOKEN: the stored login
    assert listed.code == 0 and "digits-convnet" in listed.out
