"""End to end on a really pretrained source (slow: trains one with models.train)."""

from __future__ import annotations

import json

import pytest

from xfer.client.finetune import PrivacyConfig, evaluate, finetune, load_target
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
    result = finetune(model, train=target.train, val=target.val, strategy="lp-ft", epochs=10, card=card,
                      label_names=target.label_names, device="cpu")
    after = evaluate(result.model, target.test.x, target.test.y, label_names=target.label_names).accuracy
    assert before < 0.4 and after > 0.85


@pytest.mark.slow
def test_private_linear_probe_on_unseen_classes(pretrained):
    model, card = pretrained
    target = load_target("digits:classes=5-9", card=card, seed=0)
    result = finetune(model, train=target.train, val=target.val, strategy="linear-probe", epochs=10, card=card,
                      label_names=target.label_names, device="cpu", privacy=PrivacyConfig(epsilon=2.0))
    assert result.head_reset and result.privacy.epsilon_spent <= 2.0 + 1e-6
    assert evaluate(result.model, target.test.x, target.test.y, label_names=target.label_names).accuracy > 0.8
