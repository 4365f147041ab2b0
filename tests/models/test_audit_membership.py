"""Membership inference and the one-run DP audit against real trained weights (small and fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xfer.models import create_model
from xfer.models.audit.canary import canary_audit
from xfer.models.audit.config import AuditConfig
from xfer.models.audit.membership import audit_membership
from xfer.models.card import ModelCard, validate_card
from xfer.models.fit import FitConfig, fit


def make_mlp() -> torch.nn.Module:
    return create_model("mlp", in_features=16, hidden=[64], num_classes=4)


def random_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs with random labels: a model can only fit them by memorising each one."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_memorised_members_are_found_and_an_untrained_model_leaks_nothing():
    members, non_members = random_data(120, 0), random_data(120, 1)
    recipe = FitConfig(epochs=60, batch_size=32, lr=1e-2, seed=0)
    torch.manual_seed(0)
    trained = fit(make_mlp(), *members, recipe).model
    attacks = audit_membership(
        model=trained,
        make_model=make_mlp,
        members=members,
        non_members=non_members,
        fit_config=recipe,
        config=AuditConfig(reference_pairs=1),
    )
    by_name = {a.attack: a for a in attacks}
    assert set(by_name) == {"loss-threshold", "rmia-offline"}
    assert by_name["loss-threshold"].auc > 0.9 and by_name["rmia-offline"].auc > 0.9
    assert by_name["rmia-offline"].reference_models == 2
    assert all(a.members == 120 and a.non_members == 120 for a in attacks)

    torch.manual_seed(1)
    blank = audit_membership(
        model=make_mlp(),
        make_model=make_mlp,
        members=members,
        non_members=non_members,
        fit_config=recipe,
        config=AuditConfig(reference_pairs=0),
    )
    assert len(blank) == 1 and blank[0].auc_low < 0.5 < blank[0].auc_high


def test_max_members_subsamples_and_too_few_examples_are_refused():
    members, non_members = random_data(50, 0), random_data(20, 1)
    attacks = audit_membership(
        model=make_mlp(),
        make_model=make_mlp,
        members=members,
        non_members=non_members,
        fit_config=FitConfig(epochs=1),
        config=AuditConfig(reference_pairs=0, max_members=10),
    )
    assert attacks[0].members == 10
    with pytest.raises(ValueError, match="at least 2"):
        audit_membership(
            model=make_mlp(),
            make_model=make_mlp,
            members=random_data(1, 0),
            non_members=non_members,
            fit_config=FitConfig(epochs=1),
            config=AuditConfig(reference_pairs=0),
        )


def test_the_canary_audit_never_exceeds_the_claimed_epsilon_on_dp_training():
    x, y = random_data(400, 2)
    recipe = FitConfig(epochs=3, batch_size=64, lr=1e-2, seed=0, dp_epsilon=1.0)
    run = canary_audit(make_model=make_mlp, x=x, y=y, num_classes=4, fit_config=recipe, canaries=100, seed=0)
    audit = run.audit
    assert audit.canaries == 100 and audit.claimed_epsilon == pytest.approx(1.0, rel=0.05)
    assert 0 <= audit.epsilon_lower_bound <= audit.claimed_epsilon
    assert 0 < run.included.sum() < 100


def test_the_canary_audit_needs_dp():
    x, y = random_data(40, 2)
    with pytest.raises(ValueError, match="dp_epsilon"):
        canary_audit(make_model=make_mlp, x=x, y=y, num_classes=4, fit_config=FitConfig(epochs=1))


def test_train_with_audit_writes_the_audit_into_the_card(tmp_path):
    from xfer.models.train import main

    assert (
        main(
            [
                "--data",
                "digits",
                "--out",
                str(tmp_path),
                "--epochs",
                "2",
                "--max-examples",
                "300",
                "--audit",
                "--audit-reference-pairs",
                "0",
                "--json",
            ]
        )
        == 0
    )
    card = ModelCard.from_dict(json.loads((tmp_path / "card.json").read_text()))
    validate_card(card)
    assert card.audit is not None and card.audit.dp is None
    attack = card.audit.attacks[0]
    total = attack.members + attack.non_members  # the stratified subset keeps about 300
    assert attack.attack == "loss-threshold" and 290 <= total <= 310 and attack.non_members == total // 5
    assert {"torch", "numpy", "python"} <= set(card.audit.tool_versions)


def test_standalone_audit_of_a_folder_from_data_specs(tmp_path, capsys):
    from xfer.models.artifacts import write_model_folder
    from xfer.models.audit.__main__ import main

    members, non_members = random_data(80, 3), random_data(80, 4)
    torch.manual_seed(0)
    model = fit(make_mlp(), *members, FitConfig(epochs=40, batch_size=16, lr=1e-2)).model
    write_model_folder(model, tmp_path / "m", label_names=("a", "b", "c", "d"))
    for name, (x, y) in {"in": members, "out": non_members}.items():
        np.savez(tmp_path / f"{name}.npz", x=x.numpy(), y=y.numpy(), label_names=np.array(["a", "b", "c", "d"]))
    before = json.loads((tmp_path / "m" / "card.json").read_text())
    code = main(
        [
            str(tmp_path / "m"),
            "--members",
            str(tmp_path / "in.npz"),
            "--non-members",
            str(tmp_path / "out.npz"),
            "--epochs",
            "40",
            "--batch-size",
            "16",
            "--lr",
            "1e-2",
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    after = json.loads((tmp_path / "m" / "card.json").read_text())
    assert after["audit"] == printed and after["artifacts"] == before["artifacts"]
    assert printed["attacks"][0]["auc"] > 0.8 and printed["attacks"][1]["reference_models"] == 2
    bad = main(
        [str(tmp_path / "m"), "--members", str(tmp_path / "missing.npz"), "--non-members", str(tmp_path / "out.npz")]
    )
    assert bad != 0


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [1.0, 4.0, 8.0])
def test_train_audit_lower_bound_never_exceeds_the_accountants_epsilon(tmp_path, epsilon):
    """The product's own DP training (models.train, Opacus, PRV accountant) with --audit, on real images."""
    from xfer.models.train import train_source_model

    result = train_source_model(
        out_dir=tmp_path, data="digits", epochs=5, seed=0, dp_epsilon=epsilon, audit=AuditConfig(reference_pairs=1)
    )
    dp = result.card.audit.dp
    assert dp is not None and dp.claimed_epsilon == pytest.approx(epsilon, rel=0.05)
    assert 0 <= dp.epsilon_lower_bound <= dp.claimed_epsilon
    assert dp.canaries == min(1000, result.card.audit.attacks[0].members // 5)
    assert {a.attack for a in result.card.audit.attacks} == {"loss-threshold", "rmia-offline"}
