"""Every strategy trains exactly the parameters it promises, at the LR it promises."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import cfg, changed, snapshot

from xfer.client.finetune import strategies as S
from xfer.client.finetune.data import load_target
from xfer.client.finetune.errors import (
    DuplicateStrategyError,
    FinetuneError,
    StrategyError,
    UnknownStrategyError,
)
from xfer.client.finetune.trainer import finetune


def block_params(model) -> dict[str, set[str]]:
    owner = model.block_of_parameter()
    out: dict[str, set[str]] = {}
    for name, block in owner.items():
        out.setdefault(block, set()).add(name)
    return out


def run(model, card, data, strategy, *, steps=8, lr=None, **kw):
    return finetune(
        model,
        train=data.train,
        val=None,
        card=card,
        label_names=data.label_names,
        config=cfg(strategy=strategy, steps=steps, lr=lr, batch_size=64, **kw),
    )


def test_registry_lists_all_strategies():
    assert S.list_strategies() == [
        "full",
        "linear-probe",
        "lp-ft",
        "discriminative",
        "gradual-unfreeze",
        "surgical:<block>",
        "surgical:auto",
        "tent",
        "shot",
        "aad",
        "nrc",
    ]
    assert isinstance(S.get_strategy("surgical:block1"), S.Surgical)
    assert isinstance(S.get_strategy("surgical:auto"), S.AutoRGN)


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(UnknownStrategyError, match="valid: full, linear-probe, lp-ft"):
        S.get_strategy("fullest")
    with pytest.raises(UnknownStrategyError):
        S.get_strategy("surgical")  # a family needs its argument


def test_duplicate_strategy_raises():
    with pytest.raises(DuplicateStrategyError, match="already registered"):
        S.register_strategy("full")(lambda _: S.Full())


def test_every_strategy_documents_when_it_helps():
    for cls in (S.Full, S.LinearProbe, S.LPFT, S.Discriminative, S.GradualUnfreeze, S.Surgical, S.AutoRGN):
        assert "Helps" in (cls.__doc__ or ""), cls


def test_surgical_unknown_block(model, card, blur):
    with pytest.raises(StrategyError, match="valid: stem, block1, block2, head"):
        run(model, card, blur, "surgical:block9")


@pytest.mark.parametrize(
    ("strategy", "steps", "trained_blocks"),
    [
        ("full", 2, {"stem", "block1", "block2", "head"}),
        ("linear-probe", 2, {"head"}),
        ("lp-ft", 2, {"stem", "block1", "block2", "head"}),
        ("discriminative", 2, {"stem", "block1", "block2", "head"}),
        ("gradual-unfreeze", 2, {"block2", "head"}),  # two stages of one step: head, then head+block2
        ("gradual-unfreeze", 4, {"stem", "block1", "block2", "head"}),
        ("surgical:block1", 2, {"block1"}),
        ("surgical:head", 2, {"head"}),
        ("surgical:auto", 2, {"stem", "block1", "block2", "head"}),
    ],
)
def test_exactly_the_intended_parameters_change(model, card, blur, strategy, steps, trained_blocks):
    before = snapshot(model)
    result = run(model, card, blur, strategy, steps=steps)
    assert not result.head_reset
    blocks = block_params(model)
    expected = set().union(*(blocks[b] for b in trained_blocks))
    assert changed(before, result.model) == expected
    # Frozen means requires_grad=False while training: no gradient was even computed for them.
    assert {n for n, p in result.model.named_parameters() if p.grad is not None} <= expected
    # The caller's model is untouched.
    assert changed(before, model) == set()


def test_full_uses_one_small_lr(model, card, blur):
    result = run(model, card, blur, "full", steps=1)
    assert {g.lr for g in result.groups} == {1e-3}
    assert S.Full.default_lr < S.LinearProbe.default_lr


def test_surgical_lr_is_the_probe_lr_for_the_head_only(model, card, blur):
    assert {g.lr for g in run(model, card, blur, "surgical:block1", steps=1).groups} == {1e-3}
    head = run(model, card, blur, "surgical:head", steps=1).groups
    assert [(g.name, g.lr) for g in head] == [("head", S.LinearProbe.default_lr)]


def test_linear_probe_lr(model, card, blur):
    result = run(model, card, blur, "linear-probe", steps=1, lr=0.05)
    assert [(g.name, g.lr) for g in result.groups] == [("head", 0.05)]


def test_lp_ft_probes_then_tunes_everything(model, card, blur):
    result = run(model, card, blur, "lp-ft", steps=4, lr=1e-3, eval_every=1)
    probe = [g for g in result.groups if g.phase == "probe"]
    full = [g for g in result.groups if g.phase == "full"]
    assert [(g.name, g.lr) for g in probe] == [("head", pytest.approx(1e-2))]
    assert {g.name for g in full} == {"stem", "block1", "block2", "head"}
    assert {g.lr for g in full} == {1e-3}
    assert [r.phase for r in result.history] == ["probe", "probe", "full", "full"]


def test_discriminative_divides_lr_per_block_toward_input(model, card, blur):
    result = run(model, card, blur, "discriminative", steps=1, lr=1e-2)
    lrs = {g.name: g.lr for g in result.groups}
    assert lrs == pytest.approx({"head": 1e-2, "block2": 1e-2 / 2.6, "block1": 1e-2 / 2.6**2, "stem": 1e-2 / 2.6**3})


def test_gradual_unfreeze_adds_one_block_per_stage(model, card, blur):
    result = run(model, card, blur, "gradual-unfreeze", steps=9, eval_every=1)
    stages = {}
    for g in result.groups:
        stages.setdefault(g.phase, set()).add(g.name)
    assert stages == {
        "unfreeze-1": {"head"},
        "unfreeze-2": {"head", "block2"},
        "unfreeze-3": {"head", "block2", "block1"},
        "unfreeze-4": {"head", "block2", "block1", "stem"},
    }
    # Equal stages of steps // blocks; the last stage takes the rest.
    assert [r.phase for r in result.history] == ["unfreeze-1"] * 2 + ["unfreeze-2"] * 2 + ["unfreeze-3"] * 2 + [
        "unfreeze-4"
    ] * 3


def test_surgical_also_trains_a_reinitialised_head(model, card, session_card):
    from xfer.client.finetune.data import load_target

    five = load_target("digits:classes=5-9", card=session_card, seed=0)
    before = snapshot(model)
    result = run(model, card, five, "surgical:block1", steps=1)
    assert result.head_reset and result.model.num_classes == 5
    blocks = block_params(model)
    trained = changed({k: v for k, v in before.items() if not k.startswith("head")}, result.model)
    assert trained == blocks["block1"]
    assert {g.name for g in result.groups} == {"block1", "head"}


def test_auto_rgn_weights_match_direct_computation(model, card, blur):
    """The first step's LR scales are ‖g‖/‖θ‖ / max of that step's own gradient, and that step applies them."""
    batch = blur.train.subset(range(32))
    result = finetune(
        model,
        train=batch,
        card=card,
        label_names=blur.label_names,
        config=cfg(strategy=S.AutoRGN(), steps=1, batch_size=32, lr=1e-3),
    )
    direct_model = model
    direct_model.zero_grad()
    loss = torch.nn.functional.cross_entropy(direct_model(batch.x), batch.y)
    loss.backward()
    # ‖g‖/‖θ‖, with the documented RMS floor for tensors initialised at zero (GroupNorm biases here).
    rgn = {
        n: float(p.grad.norm() / max(float(p.detach().norm()), S.RGN_RMS_FLOOR * p.numel() ** 0.5))
        for n, p in direct_model.named_parameters()
    }
    assert any(float(p.detach().norm()) == 0 for p in direct_model.parameters())  # the floor is exercised
    top = max(rgn.values())
    expected = {n: r / top for n, r in rgn.items()}
    measured = result.rgn_scales[0]
    assert measured.keys() == expected.keys()
    for name, weight in expected.items():
        assert measured[name] == pytest.approx(weight, rel=1e-4, abs=1e-7), name
    assert max(measured.values()) == pytest.approx(1.0)
    # Each tensor's LR is base LR × its weight, and the measuring step was applied.
    lrs = {g.name: g.lr for g in result.groups}
    assert lrs == pytest.approx({n: 1e-3 * w for n, w in measured.items()})
    assert result.steps_applied == 1 and changed(snapshot(model), result.model)


def test_auto_rgn_remeasures_every_round(model, card, blur):
    result = run(model, card, blur, "surgical:auto", steps=9, eval_every=3)
    assert len(result.rgn_scales) == 3
    assert result.rgn_scales[0] != result.rgn_scales[2]


def test_auto_rgn_trains_on_tiny_data(model, card, session_card):
    """Issue: with n <= 2 x batch every step used to be a measurement, so nothing trained."""
    few = load_target("digits:shift=invert,per_class=2", card=session_card, seed=0)  # 20 examples
    before = snapshot(model)
    result = finetune(
        model,
        train=few.train,
        val=None,
        card=card,
        label_names=few.label_names,
        config=cfg(strategy="surgical:auto", steps=4, batch_size=64),
    )
    assert result.steps_applied == 4
    assert changed(before, result.model) == set(before)


class _NoSteps(S.Strategy):
    name = "no-steps"

    def plan(self, model, *, lr, steps, head_reset):
        return [S.Phase("nothing", 0, lr, (S.GroupPlan("head", tuple(model.head_layer.parameters())),))]


def test_zero_optimizer_steps_is_an_error_not_a_result(model, card, blur):
    with pytest.raises(FinetuneError, match="applied no optimizer step"):
        finetune(
            model, train=blur.train, card=card, label_names=blur.label_names, config=cfg(strategy=_NoSteps(), steps=5)
        )


def test_rgn_helpers():
    assert S.rgn_lr_scales([1.0, 4.0, 2.0]) == [0.25, 1.0, 0.5]
    assert S.rgn_lr_scales([0.0, 0.0]) == [1.0, 1.0]
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([0.3, 0.4])
    assert S.relative_gradient_norms([p]) == [pytest.approx(0.1)]
