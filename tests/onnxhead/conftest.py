"""Fixtures for the torch-free head tests: real ONNX models exported from xfer.models, small digits data.

torch is used here only to *create* the models; the code under test never imports it
(test_onnxhead_no_torch.py checks that in a subprocess that cannot import torch).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from xfer.client.onnxhead.data import HeadData, load_data
from xfer.models.card import ModelCard

sys.path.insert(0, str(Path(__file__).parent))  # onnxhead_helpers, importable by the test modules


@dataclasses.dataclass(frozen=True)
class OnnxSource:
    """An exported model: its folder, ONNX path and card."""

    folder: Path
    onnx: Path
    card: ModelCard


def _export(model, folder: Path, **card_fields) -> OnnxSource:
    from xfer.models import card_for_model
    from xfer.models.export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), folder / "model.onnx")
    card = card_for_model(model, **card_fields)
    (folder / "card.json").write_text(json.dumps(card.to_dict()))
    return OnnxSource(folder, folder / "model.onnx", card)


@pytest.fixture(scope="session")
def convnet_source(source_model_dir: Path) -> OnnxSource:
    """The session's trained digits convnet (10 classes), as `models.train` wrote it."""
    card = ModelCard.from_dict(json.loads((source_model_dir / "card.json").read_text()))
    return OnnxSource(source_model_dir, source_model_dir / "model.onnx", card)


@pytest.fixture(scope="session")
def mlp_source(tmp_path_factory: pytest.TempPathFactory) -> OnnxSource:
    """A small random-weight MLP on 64 inputs, 16 features, 3 classes."""
    import torch

    from xfer.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp", in_features=64, hidden=[32, 16], num_classes=3)
    return _export(model, tmp_path_factory.mktemp("mlp"), label_names=("a", "b", "c"))


@pytest.fixture(scope="session")
def digits_59(convnet_source: OnnxSource) -> HeadData:
    """digits classes 5-9 (all of the target pool's), split 60/20/20 as xfer finetune does."""
    return load_data("digits:classes=5-9", card=convnet_source.card, seed=0)
