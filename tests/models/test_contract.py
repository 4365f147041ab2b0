"""Every architecture honours the one contract adaptation strategies rely on."""

import pytest
import torch

from xfer import models

ARCHITECTURES = ["mlp", "convnet", "vit_tiny"]


@pytest.fixture(params=ARCHITECTURES)
def model(request):
    torch.manual_seed(0)
    return models.create_model(request.param)


def test_blocks_run_from_stem_to_head_and_own_every_parameter_once(model):
    names = model.block_names()
    assert names[0] == "stem" and names[-1] == model.head_name == "head"
    assert names[1:-1] == [f"block{i}" for i in range(1, len(names) - 1)]
    grouped = [id(p) for _, params in model.blocks() for p in params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}


def test_forward_is_head_of_features(model):
    x = torch.randn(5, *model.input_shape())
    features = model.forward_features(x)
    assert features.shape == (5, model.feature_dim)
    torch.testing.assert_close(model(x), model.head_layer(features))
    assert model(x).shape == (5, model.num_classes)


def test_reset_head_changes_classes_and_keeps_the_body(model):
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    old_head = model.head_layer.weight.clone()
    model.reset_head(3, generator=torch.Generator().manual_seed(1))
    assert model.num_classes == 3 and model.config.num_classes == 3
    assert model.head_layer.weight.shape[0] == 3
    assert not torch.equal(model.head_layer.weight[:3], old_head[:3])
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, body[key])
    with pytest.raises(ValueError):
        model.reset_head(1)


def test_block_of_parameter_maps_every_parameter(model):
    owners = model.block_of_parameter()
    assert set(owners) == {name for name, _ in model.named_parameters()}
    assert owners["head.weight"] == "head"
    assert set(owners.values()) == set(model.block_names())
