"""A fresh linear-probe head trains on standardised features and is folded back into a plain Linear."""

from __future__ import annotations

import torch
from finetune_helpers import cfg, tiny_model
from torch import nn

from xfer.client.finetune.config import PrivacyConfig
from xfer.client.finetune.data import load_target
from xfer.client.finetune.standardize import StandardizedHead, fold_head, standardize_head
from xfer.client.finetune.trainer import finetune
from xfer.models import card_for_model


def test_folding_keeps_the_logits_and_the_architecture():
    model = tiny_model()
    x = torch.randn(40, *model.input_shape()) * 3 + 1
    standardize_head(model, x)
    assert isinstance(model.head_layer, StandardizedHead)
    with torch.no_grad():
        model.head_layer.linear.weight.normal_()
        before = model(x)
    fold_head(model)
    assert type(model.head_layer) is nn.Linear
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)
    features = model.forward_features(x)
    assert model.head_layer.in_features == features.shape[1]


def test_dead_feature_dimensions_are_not_scaled_up():
    model = tiny_model()
    x = torch.zeros(8, *model.input_shape())  # every feature constant: no spread at all
    standardize_head(model, x)
    assert torch.isfinite(model.head_layer.inv_std).all() and float(model.head_layer.inv_std.max()) < 1e13


def test_linear_probe_with_a_new_label_set_trains_standardised_but_never_under_dp():
    model = tiny_model()
    card = card_for_model(model, label_names=tuple("abcdefghij"), input_mean=(0.3,), input_std=(0.4,))
    data = load_target("digits:classes=5-9,per_class=10", card=card, seed=0)
    plain = finetune(
        model,
        train=data.train,
        val=None,
        card=card,
        label_names=data.label_names,
        config=cfg(strategy="linear-probe", steps=20),
    )
    assert plain.hyperparameters["head_features"] == "standardized" and plain.head_reset
    assert type(plain.model.head_layer) is nn.Linear and plain.model.num_classes == 5
    private = finetune(
        model,
        train=data.train,
        val=None,
        card=card,
        label_names=data.label_names,
        config=cfg(strategy="linear-probe", steps=20, privacy=PrivacyConfig(epsilon=4.0)),
    )
    assert "head_features" not in private.hyperparameters
    kept = finetune(
        model,
        train=data.train,
        val=None,
        card=card,
        label_names=data.label_names,
        config=cfg(strategy="lp-ft", steps=20),
    )
    assert "head_features" not in kept.hyperparameters
