import json

import onnxruntime as ort
import pytest

from xfer.models import fashion
from xfer.models.card import ModelCard, validate_card
from xfer.models.files import sha256_file
from xfer.models.train import arch_config, main, train_source_model
from xfer.models.weights import load_safetensors, model_from_card


def test_train_writes_three_consistent_files(tmp_path):
    result = train_source_model(
        out_dir=tmp_path, arch="convnet", config={"width": 8, "depth": 2}, classes=[0, 1, 2, 3, 4], epochs=3, seed=1
    )
    card_file = json.loads((tmp_path / "card.json").read_text())
    card = ModelCard.from_dict(card_file)
    validate_card(card)
    assert card.num_classes == 5 and card.label_names == ("0", "1", "2", "3", "4")
    assert card.dp_epsilon is None
    for fmt, filename in (("safetensors", "model.safetensors"), ("onnx", "model.onnx")):
        assert card_file["artifacts"][fmt]["sha256"] == sha256_file(tmp_path / filename)
    load_safetensors(model_from_card(card), tmp_path / "model.safetensors")
    ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert result.test_accuracy > 0.5  # five easy classes after three epochs: far above chance (0.2)


def test_dp_training_records_the_spent_epsilon(tmp_path):
    result = train_source_model(out_dir=tmp_path, arch="mlp", epochs=2, dp_epsilon=3.0, seed=0)
    card = ModelCard.from_dict(json.loads((tmp_path / "card.json").read_text()))
    assert card.dp_epsilon == pytest.approx(result.dp_epsilon)
    assert 0 < card.dp_epsilon <= 3.0 + 1e-6
    assert card.dp_delta == pytest.approx(1e-5)


def test_cli_rejects_bad_options_with_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--classes", "3", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("models.train: error:") and err.count("\n") == 1
    # A δ of 1/n or more allows releasing some training example outright: refused before training.
    argv = ["--out", str(tmp_path / "dp"), "--arch", "mlp", "--epochs", "1", "--dp-epsilon", "2", "--dp-delta", "0.5"]
    assert main(argv) == 2
    assert "dp_delta 0.5 must be below 1/n" in capsys.readouterr().err
    assert not (tmp_path / "dp" / "card.json").exists()


@pytest.mark.slow  # ~50 s; tests/finetune trains every architecture under DP in a few steps by default
def test_every_architecture_trains_under_dp(tmp_path):
    # Opacus needs per-example gradients for every parameter (vit_tiny's embeddings included).
    for arch in ("mlp", "convnet", "vit_tiny"):
        result = train_source_model(out_dir=tmp_path / arch, arch=arch, epochs=1, dp_epsilon=8.0, seed=0)
        assert 0 < result.dp_epsilon <= 8.0 + 1e-6


def test_trains_on_28x28_data_sets(tmp_path):
    result = train_source_model(out_dir=tmp_path, data="mnist5k", classes=[0, 1, 2], epochs=6, max_examples=600, seed=0)
    card = ModelCard.from_dict(json.loads((tmp_path / "card.json").read_text()))
    assert card.input_shape == (1, 28, 28) and card.architecture_config["stem_stride"] == 2
    assert card.label_names == ("0", "1", "2") and card.license == "BSD-3-Clause"
    assert "5,000 MNIST digits" in card.source_task and "source pool" in card.source_task
    assert result.test_accuracy > 0.6  # three digits, 480 training images, 6 epochs: far above chance (1/3)


@pytest.mark.skipif(not fashion.available(), reason=fashion.INSTALL_HINT)
def test_trains_on_fashion_mnist(tmp_path):
    assert (
        main(
            [
                "--data",
                "fashion-mnist",
                "--classes",
                "0-4",
                "--epochs",
                "1",
                "--max-examples",
                "400",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    card = ModelCard.from_dict(json.loads((tmp_path / "card.json").read_text()))
    assert card.label_names == fashion.LABEL_NAMES[:5] and card.license == "MIT"


def test_arch_config_fits_the_images():
    assert arch_config("mlp", (1, 28, 28))["in_features"] == 784
    assert arch_config("convnet", (1, 8, 8))["stem_stride"] == 1
    assert arch_config("vit_tiny", (1, 28, 28))["patch_size"] == 4
    with pytest.raises(ValueError, match="unknown architecture"):
        arch_config("resnet", (1, 8, 8))
