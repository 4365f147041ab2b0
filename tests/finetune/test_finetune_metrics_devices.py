"""Metrics against scikit-learn, and device selection (GPU checks marked `gpu`)."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from xfer.client.finetune.devices import resolve_device
from xfer.client.finetune.errors import DeviceError
from xfer.client.finetune.metrics import expected_calibration_error, metrics_from_logits


def test_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 4, generator=g)
    y = torch.randint(0, 4, (200,), generator=g)
    m = metrics_from_logits(logits, y, label_names=("a", "b", "c", "d"))
    pred = logits.argmax(1)
    assert m.accuracy == pytest.approx(accuracy_score(y, pred))
    assert m.macro_f1 == pytest.approx(f1_score(y, pred, average="macro"))
    assert m.loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))
    assert set(m.per_class_accuracy) == {"a", "b", "c", "d"}
    assert m.per_class_accuracy["a"] == pytest.approx(float((pred[y == 0] == 0).float().mean()))


def test_ece():
    # Always 90% confident, right half the time: ECE 0.4. Perfectly calibrated: 0.
    probs = torch.tensor([[0.9, 0.1]] * 10)
    y = torch.tensor([0, 1] * 5)
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)
    probs = torch.tensor([[1.0, 0.0]] * 4)
    assert expected_calibration_error(probs, torch.zeros(4, dtype=torch.long)) == pytest.approx(0.0)


def test_cpu_device():
    setup = resolve_device("cpu")
    assert setup.kind == "cpu" and setup.amp_dtype is None and not setup.pin_memory


def test_unknown_or_missing_device():
    with pytest.raises(DeviceError, match="valid: auto, cpu, cuda, mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto").kind in ("cpu", "mps")


@pytest.mark.gpu
def test_cuda_setup_uses_bf16_and_pinned_memory():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    setup = resolve_device("cuda")
    assert setup.pin_memory and setup.non_blocking
    assert setup.amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


@pytest.mark.gpu
@pytest.mark.parametrize("dp", [False, True])
def test_finetune_on_cuda(model, card, blur, dp):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from xfer.client.finetune.config import FinetuneConfig, PrivacyConfig
    from xfer.client.finetune.trainer import finetune

    privacy = PrivacyConfig(epsilon=4.0, accountant="rdp") if dp else None
    config = FinetuneConfig(strategy="lp-ft", epochs=3, device="cuda", privacy=privacy)
    result = finetune(model, train=blur.train, val=blur.val, config=config, card=card, label_names=blur.label_names)
    assert result.device_kind == "cuda"
    assert next(result.model.parameters()).device.type == "cpu"
    assert result.history[-1].train_loss < result.history[0].train_loss or dp
    if dp:
        assert 0 < result.privacy.epsilon_spent <= 4.0 + 1e-6
