"""End to end on a really pretrained source (slow: trains one with models.train)."""

from __future__ import annotations

import json

import pytest

from xfer.client.finetune import FinetuneConfig, PrivacyConfig, adapt, evaluate, finetune, load_target
from xfer.models.card import ModelCard
from xfer.models.weights import load_safetensors, model_from_card


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from xfer.models.train import train_source_model

    out = tmp_path_factory.mktemp("source")
    train_source_model(out_dir=out, arch="convnet", epochs=20, seed=0)
    card = ModelCard.from_dict(json.loads((out / "card.json").read_text()))
    return load_safetensors(model_from_card(card), out / "model.safetensors"), card


@pytest.mark.slow
def test_adaptation_recovers_a_rotated_target(pretrained):
    model, card = pretrained
    target = load_target("digits:shift=rotate", card=card, seed=0)
    before = evaluate(model, target.test.x, target.test.y, label_names=target.label_names).accuracy
    result = finetune(
        model,
        train=target.train,
        val=target.val,
        card=card,
        label_names=target.label_names,
        config=FinetuneConfig(strategy="lp-ft", device="cpu"),
    )
    after = evaluate(result.model, target.test.x, target.test.y, label_names=target.label_names).accuracy
    assert before < 0.4 and after > 0.85


@pytest.mark.slow
def test_private_linear_probe_on_unseen_classes(pretrained):
    model, card = pretrained
    target = load_target("digits:classes=5-9", card=card, seed=0)
    result = finetune(
        model,
        train=target.train,
        val=target.val,
        card=card,
        label_names=target.label_names,
        config=FinetuneConfig(strategy="linear-probe", device="cpu", privacy=PrivacyConfig(epsilon=2.0)),
    )
    assert result.head_reset and result.privacy.epsilon_spent <= 2.0 + 1e-6
    assert evaluate(result.model, target.test.x, target.test.y, label_names=target.label_names).accuracy > 0.8


@pytest.mark.slow
def test_default_budget_learns_permuted_labels_from_five_per_class(pretrained):
    """Issue: 10 epochs of batch 64 were 10 steps on 50 labels (0.052); the step budget learns them."""
    import dataclasses

    model, card = pretrained
    target = dataclasses.replace(load_target("digits:shift=permute-labels,per_class=5", card=card, seed=0), val=None)
    outcome = adapt(model, target=target, config=FinetuneConfig(strategy="lp-ft", device="cpu"), card=card)
    assert outcome.result.steps_applied >= 200 and outcome.test_metrics.accuracy > 0.8
