"""Privacy policy end to end: a real server with publishing rules, and clients filtering and refusing.

The server refuses to publish versions that break its rules with
FAILED_PRECONDITION naming the rule (CLI exit 16) and stores nothing;
`xfer models --max-epsilon/--max-mia-auc` lists only models that meet a
policy; `xfer pull` and `Client.load_torch(policy=...)` refuse the others
with exit 16 / PolicyError, having downloaded nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.models.test_audit_record import make_audit
from xfer.client import Client
from xfer.client.errors import FailedPreconditionError
from xfer.client.policy import ModelPolicy, PolicyError


def variant(model_dir: Path, out: Path, *, dp_epsilon: float | None = None, auc: float | None = None) -> Path:
    """A copy of the trained model folder whose card claims DP and/or carries an audit."""
    shutil.copytree(model_dir, out)
    card = json.loads((out / "card.json").read_text())
    if dp_epsilon is not None:
        card["dp_epsilon"], card["dp_delta"] = dp_epsilon, 1e-5
    if auc is not None:
        card["audit"] = make_audit(auc=auc, dp_bound=None).to_dict()
    (out / "card.json").write_text(json.dumps(card))
    return out


@pytest.fixture
def folders(model_dir, tmp_path):
    return {
        "plain": variant(model_dir, tmp_path / "plain"),
        "dp8": variant(model_dir, tmp_path / "dp8", dp_epsilon=8.0, auc=0.55),
        "dp2-leaky": variant(model_dir, tmp_path / "dp2-leaky", dp_epsilon=2.0, auc=0.7),
        "dp2-unaudited": variant(model_dir, tmp_path / "dp2-unaudited", dp_epsilon=2.0),
        "dp2": variant(model_dir, tmp_path / "dp2", dp_epsilon=2.0, auc=0.52),
    }


def test_the_server_refuses_to_publish_against_its_policy(new_server, run_cli, folders):
    server = new_server(extra_args=("--max-dp-epsilon", "4", "--require-audit", "--max-mia-auc", "0.6"))
    expected = {
        "plain": "max-dp-epsilon",
        "dp8": "max-dp-epsilon",
        "dp2-unaudited": "require-audit",
        "dp2-leaky": "max-mia-auc",
    }
    for name, rule in expected.items():
        result = run_cli(server, "register", str(folders[name]), "--model", name, token="operator")
        assert result.code == 16, (name, result.err)
        assert f"publishing policy ({rule})" in result.err
    ok = run_cli(server, "register", str(folders["dp2"]), "--model", "dp2", token="operator")
    assert ok.code == 0, ok.err
    listed = run_cli(server, "models", "--json")
    assert [m["model"] for m in json.loads(listed.out)] == ["dp2"]  # nothing refused was stored


def test_the_refusal_carries_the_rule_for_programs(new_server, folders):
    server = new_server(extra_args=("--require-audit",))
    with Client(server.target, token=server.operator_token, cache_dir=folders["plain"].parent / "c") as client:
        with pytest.raises(FailedPreconditionError) as info:
            client.register(folders["plain"], "plain")
    assert info.value.reason == "PUBLISH_POLICY" and info.value.error_metadata["rule"] == "require-audit"


def test_clients_filter_and_refuse_models_that_miss_their_policy(new_server, run_cli, folders, tmp_path):
    server = new_server()
    for name in ("plain", "dp8", "dp2-leaky", "dp2"):
        assert run_cli(server, "register", str(folders[name]), "--model", name, token="operator").code == 0
    every = json.loads(run_cli(server, "models", "--json").out)
    assert len(every) == 4
    chosen = run_cli(server, "models", "--max-epsilon", "4", "--max-mia-auc", "0.6", "--json")
    assert chosen.code == 0 and [m["model"] for m in json.loads(chosen.out)] == ["dp2"]
    table = run_cli(server, "models", "--max-epsilon", "4")
    assert "dp2-leaky" in table.out and "plain" not in table.out and "MIA AUC" in table.out

    refused = run_cli(server, "pull", "dp2-leaky", "--max-mia-auc", "0.6", cache_dir=tmp_path / "c1")
    assert refused.code == 16 and "membership-inference AUC 0.700" in refused.err
    assert not (tmp_path / "c1" / "blobs").exists() or not any((tmp_path / "c1" / "blobs").iterdir())
    assert (
        run_cli(server, "pull", "dp2", "--max-epsilon", "4", "--max-mia-auc", "0.6", cache_dir=tmp_path / "c1").code
        == 0
    )
    shown = run_cli(server, "show", "dp2")
    assert "rmia-offline" in shown.out and "AUC 0.520" in shown.out

    with Client(
        server.target, token=server.client_token, cache_dir=tmp_path / "c2", policy=ModelPolicy(max_epsilon=4)
    ) as client:
        with pytest.raises(PolicyError, match="not trained with DP"):
            client.load_torch("plain")
        loaded = client.load_torch("dp2")
        assert loaded.card.audit is not None and loaded.card.audit.max_auc == pytest.approx(0.52)
        with pytest.raises(PolicyError, match="above 1"):
            client.pull("dp2", policy=ModelPolicy(max_epsilon=1))
        assert [m.model for m in client.list_models(policy=ModelPolicy(max_epsilon=4, max_mia_auc=0.6))] == ["dp2"]
