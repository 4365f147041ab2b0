import dataclasses

import pytest

from xfer import models
from xfer.models.errors import DuplicateArchitectureError, InvalidConfigError, UnknownArchitectureError
from xfer.models.registry import build_config, register_model


def test_list_models_has_the_builtin_architectures():
    assert {"mlp", "convnet", "vit_tiny"} <= set(models.list_models())


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(UnknownArchitectureError, match="valid ones: convnet, efficientnet_lite, mlp, vit_tiny"):
        models.create_model("resnet9000")
    with pytest.raises(LookupError):
        models.create_model("nope")


def test_duplicate_registration_raises():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        num_classes: int = 2

    with pytest.raises(DuplicateArchitectureError, match="already registered"):
        register_model("mlp", config=Cfg)(models.XferModel)


def test_struct_numbers_are_coerced_to_declared_types():
    # protobuf Struct carries every number as a double.
    config = build_config("convnet", {"width": 8.0, "depth": 2.0, "num_classes": 5.0})
    assert config.width == 8 and isinstance(config.width, int)
    config = build_config("mlp", {"hidden": [32.0, 16.0]})
    assert config.hidden == (32, 16)


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("convnet", {"width": 8.5}, "must be an integer"),
        ("convnet", {"colour": 3}, "unknown config field"),
        ("convnet", {"width": 10, "groups": 4}, "divisible by groups"),
        ("convnet", {"num_classes": 1}, "at least 2"),
        ("mlp", {"hidden": []}, "at least one layer"),
        ("mlp", {"hidden": "64"}, "must be a list"),
        ("vit_tiny", {"image_size": 9}, "divisible by patch_size"),
        ("vit_tiny", {"depth": 0}, "must be positive"),
    ],
)
def test_bad_configs_are_rejected_with_the_field_named(name, config, message):
    with pytest.raises(InvalidConfigError, match=message):
        models.create_model(name, **config)
