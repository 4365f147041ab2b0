"""The trainer: head reset, best checkpoint and early stopping, repeatability, schedules."""

from __future__ import annotations

import itertools

import pytest
import torch
from finetune_helpers import snapshot

from xfer.client.finetune.data import load_target
from xfer.client.finetune.errors import DataError, FinetuneError
from xfer.client.finetune.schedules import constant, cosine, get_schedule, slanted_triangular
from xfer.client.finetune.trainer import finetune, needs_head_reset


def test_head_reset_when_the_label_set_differs(model, card, session_card):
    five = load_target("digits:classes=5-9", card=session_card)
    assert needs_head_reset(model, label_names=five.label_names, card=card)
    result = finetune(model, train=five.train, val=five.val, strategy="linear-probe", epochs=1, card=card,
                      label_names=five.label_names, device="cpu")
    assert result.head_reset and result.model.num_classes == 5
    assert result.model.config.num_classes == 5
    assert model.num_classes == 10  # the source is untouched


def test_head_reset_on_same_count_but_other_labels(model, card):
    other = tuple("abcdefghij")
    assert needs_head_reset(model, label_names=other, card=card)
    assert not needs_head_reset(model, label_names=card.label_names, card=card)


def test_head_reset_on_request(model, card, blur):
    before = snapshot(model)
    result = finetune(model, train=blur.train, strategy="surgical:block1", epochs=1, card=card, reinit_head=True,
                      label_names=blur.label_names, device="cpu", lr=0.0)
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


def test_keeps_the_best_checkpoint_and_stops_early(model, card, blur):
    # A huge LR diverges after the first epochs; the best (lowest validation loss) epoch is kept.
    result = finetune(model, train=blur.train, val=blur.val, strategy="full", epochs=8, lr=0.5, patience=2,
                      schedule="constant", card=card, label_names=blur.label_names, device="cpu")
    losses = [r.val_loss for r in result.history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert result.best_epoch == result.history[best].epoch
    assert len(result.history) <= result.best_epoch + 2  # stopped `patience` epochs after the best
    assert result.val_metrics.loss == pytest.approx(losses[best], rel=1e-4)


def test_repeatable_on_cpu_and_seed_matters(model, card, blur):
    kw = {"train": blur.train, "strategy": "lp-ft", "epochs": 2, "card": card, "label_names": blur.label_names,
          "device": "cpu"}
    a, b, c = finetune(model, seed=3, **kw), finetune(model, seed=3, **kw), finetune(model, seed=4, **kw)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_learning_actually_happens(model, card, blur):
    result = finetune(model, train=blur.train, val=blur.val, strategy="full", epochs=4, lr=3e-3, card=card,
                      label_names=blur.label_names, device="cpu")
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.val_metrics.accuracy > 0.3  # 10 classes: chance is 0.1


def test_bad_arguments(model, card, blur):
    with pytest.raises(FinetuneError, match="epochs"):
        finetune(model, train=blur.train, epochs=0, card=card, device="cpu")
    with pytest.raises(DataError, match="out of range"):
        finetune(model, train=blur.train, epochs=1, label_names=("a", "b"), card=card, device="cpu")
    with pytest.raises(FinetuneError, match="unknown schedule 'linear'; valid: cosine, slanted-triangular"):
        finetune(model, train=blur.train, epochs=1, schedule="linear", card=card, device="cpu")


def test_schedules():
    assert cosine(0, 100) == 1.0 and cosine(50, 100) == pytest.approx(0.5) and cosine(99, 100) < 0.01
    values = [slanted_triangular(t, 100) for t in range(100)]
    peak = values.index(max(values))
    assert peak == 10 and max(values) == pytest.approx(1.0) and values[0] == pytest.approx(1 / 32)
    assert values[-1] < 0.05 and all(a <= b for a, b in itertools.pairwise(values[:peak + 1]))
    assert constant(5, 10) == 1.0 and get_schedule("cosine") is cosine


def test_schedule_drives_the_lr(model, card, blur, monkeypatch):
    from xfer.client.finetune import trainer

    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    finetune(model, train=blur.train, strategy="linear-probe", epochs=2, lr=0.1, batch_size=64,
             schedule="slanted-triangular", card=card, label_names=blur.label_names, device="cpu")
    total = 2 * -(-len(blur.train) // 64)
    assert seen == pytest.approx([0.1 * slanted_triangular(t, total) for t in range(total)])
    assert trainer is not None
