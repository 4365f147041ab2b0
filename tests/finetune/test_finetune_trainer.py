"""The trainer: head reset, step budgets, best checkpoint and early stopping, few-label mode, repeatability."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from finetune_helpers import cfg, snapshot

from xfer.client.finetune.budget import MIN_STEPS, plan_budget, size_bucket
from xfer.client.finetune.config import FinetuneConfig
from xfer.client.finetune.data import load_target
from xfer.client.finetune.errors import DataError, DeviceError, DivergedError, FinetuneError
from xfer.client.finetune.schedules import constant, cosine, get_schedule, slanted_triangular
from xfer.client.finetune.trainer import finetune, needs_head_reset


def test_head_reset_when_the_label_set_differs(model, card, session_card):
    five = load_target("digits:classes=5-9", card=session_card)
    assert needs_head_reset(model, label_names=five.label_names, card=card)
    result = finetune(
        model,
        train=five.train,
        val=five.val,
        config=cfg(strategy="linear-probe", steps=5),
        card=card,
        label_names=five.label_names,
    )
    assert result.head_reset and result.model.num_classes == 5
    assert result.model.config.num_classes == 5
    assert model.num_classes == 10  # the source is untouched


def test_head_reset_on_same_count_but_other_labels(model, card):
    other = tuple("abcdefghij")
    assert needs_head_reset(model, label_names=other, card=card)
    assert not needs_head_reset(model, label_names=card.label_names, card=card)


def test_head_reset_on_request(model, card, blur):
    before = snapshot(model)
    result = finetune(
        model,
        train=blur.train,
        config=cfg(strategy="surgical:block1", steps=2, reinit_head=True, lr=1e-9),
        card=card,
        label_names=blur.label_names,
    )
    assert result.head_reset
    assert not torch.equal(result.model.head.weight, before["head.weight"])


def test_labels_reordered_to_the_card_instead_of_reset(tmp_path, model, card):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8)).astype(np.float32)
    y = np.arange(60) % 10
    names = np.array([str(9 - i) for i in range(10)])  # same set, reversed order
    np.savez(tmp_path / "d.npz", x=x, y=y, label_names=names)
    target = load_target(str(tmp_path / "d.npz"), card=card)
    assert target.label_names == card.label_names
    assert not needs_head_reset(model, label_names=target.label_names, card=card)


def test_the_budget_is_steps_with_a_floor_and_depends_only_on_the_bucket():
    # 50 labelled examples get MIN_STEPS updates, not 10 epochs of one batch.
    small = plan_budget(n=50, config=FinetuneConfig(), strategy_lr=1e-3)
    assert small.steps == MIN_STEPS and small.bucket == 64 and small.batch_size <= 16
    # 50,000 get about ten passes at batch 64.
    large = plan_budget(n=50_000, config=FinetuneConfig(), strategy_lr=1e-3)
    assert large.batch_size == 64 and large.steps == 10 * 65536 // 64 and large.eval_every * 50 >= large.steps
    # Every size in a bucket gets the same plan, DP included (so a report cannot tell them apart).
    dp = FinetuneConfig(privacy=__import__("xfer.client.finetune.config", fromlist=["x"]).PrivacyConfig(epsilon=2))
    for config in (FinetuneConfig(), FinetuneConfig(epochs=3), dp):
        plans = {plan_budget(n=n, config=config, strategy_lr=1e-3) for n in range(257, 513)}
        assert len(plans) == 1
    assert size_bucket(1) == 1 and size_bucket(513) == 1024
    # Epochs are passes over the bucket, steps win when given.
    assert plan_budget(n=300, config=FinetuneConfig(epochs=2, batch_size=64), strategy_lr=1e-3).steps == 16
    assert plan_budget(n=300, config=FinetuneConfig(steps=7), strategy_lr=1e-3).steps == 7


def test_runs_exactly_the_step_budget(model, card, blur):
    result = finetune(
        model,
        train=blur.train,
        config=cfg(strategy="lp-ft", steps=13, batch_size=32),
        card=card,
        label_names=blur.label_names,
    )
    assert result.steps_applied == 13 and result.hyperparameters["steps"] == "13"
    assert result.history[-1].step == 13


def test_keeps_the_best_checkpoint_and_stops_early(model, card, blur):
    # A huge LR diverges after the first evaluations; the best (lowest validation loss) one is kept.
    result = finetune(
        model,
        train=blur.train,
        val=blur.val,
        card=card,
        label_names=blur.label_names,
        config=cfg(strategy="full", steps=200, eval_every=10, lr=5.0, patience=2, schedule="constant"),
    )
    losses = [r.val_loss for r in result.history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert result.best_step == result.history[best].step
    assert len(result.history) <= best + 1 + 2  # stopped `patience` evaluations after the best
    assert result.steps_applied == result.history[-1].step < 200
    assert result.val_metrics.loss == pytest.approx(losses[best], rel=1e-4)


def test_few_label_mode_without_validation_keeps_the_last_step(model, card, session_card):
    few = load_target("digits:shift=blur,per_class=3", card=session_card, seed=0)
    result = finetune(
        model, train=few.train, val=None, config=cfg(strategy="lp-ft", steps=10), card=card, label_names=few.label_names
    )
    assert result.val_metrics is None and result.best_step == 10
    assert all(r.val_loss is None for r in result.history)
    with pytest.raises(FinetuneError, match="patience .* needs a validation split"):
        finetune(
            model, train=few.train, val=None, config=cfg(steps=4, patience=2), card=card, label_names=few.label_names
        )


def test_a_run_that_leaves_nan_weights_is_an_error_naming_the_learning_rate(model, card, session_card):
    few = load_target("digits:per_class=5", card=session_card, seed=0)
    with pytest.raises(DivergedError, match="full diverged: .* at learning rate 1e\\+30; lower it"):
        finetune(model, train=few.train, config=cfg(strategy="full", lr=1e30, steps=20), card=card)


def test_inputs_the_source_model_overflows_on_are_a_data_error(model, card, session_card):
    few = load_target("digits:per_class=5", card=session_card, seed=0)
    huge = dataclasses.replace(few.train, x=few.train.x * 1e30)
    with pytest.raises(DataError, match="outputs are NaN or infinite on 50 of the first 50 .* check their scale"):
        finetune(model, train=huge, config=cfg(strategy="linear-probe", steps=4), card=card)


def test_repeatable_on_cpu_and_seed_matters(model, card, blur):
    kw = {"train": blur.train, "card": card, "label_names": blur.label_names}
    a, b = finetune(model, config=cfg(seed=3, steps=10), **kw), finetune(model, config=cfg(seed=3, steps=10), **kw)
    c = finetune(model, config=cfg(seed=4, steps=10), **kw)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_learning_actually_happens(model, card, blur):
    result = finetune(
        model,
        train=blur.train,
        val=blur.val,
        config=cfg(strategy="full", steps=60, lr=3e-3, eval_every=20),
        card=card,
        label_names=blur.label_names,
    )
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.val_metrics.accuracy > 0.3  # 10 classes: chance is 0.1


def test_bad_config_fails_before_any_data_is_read():
    with pytest.raises(FinetuneError, match="steps must be a positive"):
        FinetuneConfig(steps=0)
    with pytest.raises(FinetuneError, match="steps or as epochs, not both"):
        FinetuneConfig(steps=10, epochs=2)
    with pytest.raises(FinetuneError, match="lr must be a positive finite"):
        FinetuneConfig(lr=float("nan"))
    with pytest.raises(FinetuneError, match="lr must be at most 3.4e\\+38"):
        FinetuneConfig(lr=1e300)
    for seed in (-1, 2**63, True, 1.5):
        with pytest.raises(FinetuneError, match="seed must be a whole number 0..9223372036854775807"):
            FinetuneConfig(seed=seed)
    assert FinetuneConfig(seed=2**32 - 1 + 4).seed == 2**32 + 3  # the largest --seed plus a fold number
    with pytest.raises(FinetuneError, match="unknown schedule 'linear'; valid: cosine, slanted-triangular"):
        FinetuneConfig(schedule="linear")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        FinetuneConfig(device="tpu")
    with pytest.raises(TypeError):
        FinetuneConfig("lp-ft")  # keyword-only


def test_bad_arguments(model, card, blur):
    with pytest.raises(DataError, match="out of range"):
        finetune(model, train=blur.train, config=cfg(steps=1), label_names=("a", "b"), card=card)
    with pytest.raises(TypeError):
        finetune(model, train=blur.train, config=cfg(steps=1), epochs=1, card=card)  # settings live in the config


def test_schedules():
    assert cosine(0, 100) == 1.0 and cosine(50, 100) == pytest.approx(0.5) and cosine(99, 100) < 0.01
    values = [slanted_triangular(t, 100) for t in range(100)]
    peak = values.index(max(values))
    assert peak == 10 and max(values) == pytest.approx(1.0) and values[0] == pytest.approx(1 / 32)
    assert values[-1] < 0.05 and all(a <= b for a, b in itertools.pairwise(values[: peak + 1]))
    assert constant(5, 10) == 1.0 and get_schedule("cosine") is cosine


def test_schedule_drives_the_lr(model, card, blur, monkeypatch):
    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    finetune(
        model,
        train=blur.train,
        config=cfg(strategy="linear-probe", steps=12, lr=0.1, schedule="slanted-triangular"),
        card=card,
        label_names=blur.label_names,
    )
    assert seen == pytest.approx([0.1 * slanted_triangular(t, 12) for t in range(12)])
