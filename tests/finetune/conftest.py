"""Fixtures for the fine-tuning tests: a tiny convnet, its card, small digits targets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from xfer.client.finetune.data import TargetData, load_target
from xfer.models import card_for_model
from xfer.models.base import XferModel
from xfer.models.card import ModelCard

sys.path.insert(0, str(Path(__file__).parent))

from finetune_helpers import DIGIT_NAMES, tiny_model


@pytest.fixture
def model() -> XferModel:
    return tiny_model()


@pytest.fixture
def card(model: XferModel) -> ModelCard:
    return card_for_model(model, label_names=DIGIT_NAMES, input_mean=(0.3,), input_std=(0.4,))


@pytest.fixture(scope="session")
def session_card() -> ModelCard:
    return card_for_model(tiny_model(), label_names=DIGIT_NAMES, input_mean=(0.3,), input_std=(0.4,))


@pytest.fixture(scope="session")
def blur(session_card: ModelCard) -> TargetData:
    """digits:shift=blur — same label set as the card (no head reset)."""
    return load_target("digits:shift=blur", card=session_card, seed=0)


@pytest.fixture(scope="session")
def small_blur(session_card: ModelCard) -> TargetData:
    """A few-shot variant (20 per class = 200 train) for the slower DP tests."""
    return load_target("digits:shift=blur,per_class=20", card=session_card, seed=0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest single-threaded, and the CI box is shared: avoid oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
