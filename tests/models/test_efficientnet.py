"""EfficientNet-Lite: the architecture's shape, padding and contract (the pretrained weights: test_importer.py)."""

import pytest
import torch

from xfer.models import card_for_model, create_model
from xfer.models.efficientnet import ChannelAffine, round_channels, same_padding
from xfer.models.errors import InvalidConfigError
from xfer.models.weights import model_from_card


def test_lite0_has_the_published_size_and_blocks():
    model = create_model("efficientnet_lite")
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # the 4.65 M of the paper's table
    assert model.block_names() == ["stem", *(f"stage{i}" for i in range(1, 8)), "top", "head"]
    assert model.feature_dim == 1280 and model.input_shape() == (3, 224, 224)
    # Every parameter belongs to exactly one block.
    owners = model.block_of_parameter()
    assert len(owners) == len(list(model.parameters()))


def test_any_resolution_gives_logits_and_features():
    model = create_model("efficientnet_lite", image_size=32, num_classes=7).eval()
    for size in (32, 45, 64):  # fully convolutional with global pooling: the config's size is what the card declares
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert model(x).shape == (2, 7) and model.forward_features(x).shape == (2, 1280)


def test_same_padding_puts_the_odd_pixel_after():
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, bias=False)
    x = torch.ones(1, 1, 8, 8)
    padded = same_padding(x, conv)
    assert padded.shape == (1, 1, 9, 9)  # TensorFlow SAME: output ceil(8/2) = 4 needs 9 rows: 0 before, 1 after
    assert padded[0, 0, 0].sum() == 8 and padded[0, 0, -1].sum() == 0
    conv5 = torch.nn.Conv2d(1, 1, 5, stride=1, bias=False)
    assert same_padding(x, conv5).shape == (1, 1, 12, 12)  # stride 1: symmetric


def test_channel_affine_is_a_per_channel_map_without_buffers():
    layer = ChannelAffine(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.ones(2, 3, 4, 4)
    assert torch.equal(layer(x)[:, :, 0, 0], torch.tensor([[1.0, 3.0, 2.0]] * 2))
    assert not list(layer.buffers())  # Opacus refuses trainable layers with buffers


def test_round_channels():
    assert round_channels(32, 1.0) == 32 and round_channels(40, 1.1) == 48 and round_channels(16, 0.5) == 8


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_size", 16, "at least 32"),
        ("drop_rate", 1.0, "drop_rate must be in"),
        ("width_multiplier", 0.0, "must be positive"),
    ],
)
def test_bad_configs(field, value, message):
    with pytest.raises(InvalidConfigError, match=message):
        create_model("efficientnet_lite", **{field: value})


def test_card_round_trip_and_head_reset():
    model = create_model("efficientnet_lite", image_size=32, num_classes=10)
    card = card_for_model(model)
    rebuilt = model_from_card(card)
    assert rebuilt.block_names() == model.block_names()
    rebuilt.reset_head(3)
    assert rebuilt.num_classes == 3 and rebuilt(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_dropout_and_drop_path_only_in_training():
    model = create_model("efficientnet_lite", image_size=32, num_classes=4, drop_rate=0.5, drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
