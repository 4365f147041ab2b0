"""Train a source model for operators: `python -m xfer.models.train --out DIR`.

Trains on scikit-learn's digits (the *source* pool, which ships with the
package and never overlaps the clients' *target* pool) and writes the three
files `xfer register` uploads: `model.safetensors`, `model.onnx` and
`card.json`. With `--dp-epsilon` the model is trained with Opacus DP-SGD and
the card records the (epsilon, delta) the accountant reports, so clients
know the source model's own privacy guarantee.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from xfer.models.card import card_for_model, validate_card, ModelCard
from xfer.models.digits import SHIFTS, apply_shift, load_pool, parse_classes, select_classes
from xfer.models.export import export_onnx
from xfer.models.files import sha256_file, write_json_atomic
from xfer.models.registry import create_model
from xfer.models.weights import save_safetensors

log = logging.getLogger(__name__)

#: Digits-shaped defaults per architecture (8x8 greyscale, or 64 features).
DIGITS_CONFIGS: dict[str, dict[str, Any]] = {
    "mlp": {"in_features": 64, "hidden": [128, 64]},
    "convnet": {"in_channels": 1, "image_size": 8, "width": 16, "depth": 3},
    "vit_tiny": {"in_channels": 1, "image_size": 8, "patch_size": 2},
}
SAFETENSORS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
CARD_NAME = "card.json"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What training produced and how well the source model does on held-out source data."""

    out_dir: Path
    card: ModelCard
    train_accuracy: float
    test_accuracy: float
    epochs: int
    seconds: float
    dp_epsilon: float | None
    dp_delta: float | None


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_source_model(
    *,
    out_dir: str | Path,
    arch: str = "convnet",
    config: dict[str, Any] | None = None,
    classes: Sequence[int] = tuple(range(10)),
    shift: str = "none",
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
    max_grad_norm: float = 1.0,
    license: str = "BSD-3-Clause",
    description: str = "",
) -> TrainResult:
    """Trains a source model on the digits source pool and writes its artifacts to `out_dir`."""
    if arch not in DIGITS_CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(sorted(DIGITS_CONFIGS))}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs, batch_size and lr must be positive")
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = apply_shift(select_classes(load_pool("source"), list(classes)), shift, seed=seed)
    model = create_model(arch, **{**DIGITS_CONFIGS[arch], **(config or {}), "num_classes": len(data.label_names)})

    order = np.random.default_rng(seed).permutation(len(data))
    n_test = max(len(order) // 5, 1)
    test_idx, train_idx = order[:n_test], order[n_test:]
    mean, std = float(data.x[train_idx].mean()), float(data.x[train_idx].std())
    shape = model.input_shape()

    def tensors(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = (data.x[index] - mean) / std
        return torch.from_numpy(x.reshape(len(index), *shape)), torch.from_numpy(data.y[index])

    x_train, y_train = tensors(train_idx)
    x_test, y_test = tensors(test_idx)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train_model = model
    engine = None
    with warnings.catch_warnings():
        # Known, harmless notices: secure_mode (a CSPRNG for the noise) is a deliberate opt-out
        # for a demo source model, and torch's backward-hook notice would fire on every batch.
        for notice in ("Secure RNG turned off", "Full backward hook is firing", "Optimal order is the largest"):
            warnings.filterwarnings("ignore", message=notice)
        if dp_epsilon is not None:
            from opacus import PrivacyEngine

            dp_delta = dp_delta if dp_delta is not None else min(1e-5, 1.0 / len(train_idx) ** 1.1)
            engine = PrivacyEngine(accountant="prv", secure_mode=False)
            train_model, optimizer, loader = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader, epochs=epochs,
                target_epsilon=dp_epsilon, target_delta=dp_delta, max_grad_norm=max_grad_norm,
            )
        for _ in range(epochs):
            train_model.train()
            for xb, yb in loader:
                optimizer.zero_grad(set_to_none=True)
                # Poisson sampling can draw an empty batch; it must still be a (noise-only) step that
                # the accountant counts, so the loss is a sum that is well defined for zero examples.
                loss = nn.functional.cross_entropy(train_model(xb), yb, reduction="sum") / max(len(yb), 1)
                loss.backward()
                optimizer.step()
        spent = engine.get_epsilon(dp_delta) if engine is not None else None
    if engine is not None:
        model = train_model._module  # unwrap GradSampleModule: the card describes the plain module
        model.zero_grad(set_to_none=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, out / SAFETENSORS_NAME, metadata={"architecture": arch})
    export_onnx(model, out / ONNX_NAME)
    train_acc, test_acc = _accuracy(model, x_train, y_train), _accuracy(model, x_test, y_test)
    task = f"digits classes {list(classes)}" + (f" under shift {shift}" if shift != "none" else "")
    card = card_for_model(
        model,
        input_mean=(mean,),
        input_std=(std,),
        preprocessing="8x8 greyscale pixel intensities divided by 16 (scikit-learn digits scale)",
        label_names=data.label_names,
        source_task=f"{task}; held-out source accuracy {test_acc:.3f}",
        dp_epsilon=spent,
        dp_delta=dp_delta if spent is not None else None,
        license=license,
        framework_versions={"torch": torch.__version__.split("+")[0], "python": platform.python_version()},
        description=description or f"{arch} trained on {task}",
    )
    validate_card(card)
    card_file = card.to_dict()
    card_file["artifacts"] = {
        name: {"file": filename, "sha256": sha256_file(out / filename), "size_bytes": (out / filename).stat().st_size}
        for name, filename in (("safetensors", SAFETENSORS_NAME), ("onnx", ONNX_NAME))
    }
    card_file["create_time"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(out / CARD_NAME, card_file)
    return TrainResult(out_dir=out, card=card, train_accuracy=train_acc, test_accuracy=test_acc, epochs=epochs,
                       seconds=time.perf_counter() - started, dp_epsilon=spent,
                       dp_delta=dp_delta if spent is not None else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xfer.models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--arch", default="convnet", choices=sorted(DIGITS_CONFIGS))
    parser.add_argument("--config", default="{}", help="JSON overrides of the architecture config")
    parser.add_argument("--classes", default="0-9", help="digits to train on, e.g. 0-4 or 1,3,5")
    parser.add_argument("--shift", default="none", choices=SHIFTS, help="shift applied to the source data")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dp-epsilon", type=float, help="train with DP-SGD to this epsilon")
    parser.add_argument("--dp-delta", type=float, help="DP delta (default min(1e-5, 1/n^1.1))")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP per-example clip norm")
    parser.add_argument("--license", default="BSD-3-Clause")
    parser.add_argument("--description", default="")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    try:
        config = json.loads(args.config)
        if not isinstance(config, dict):
            raise ValueError("--config must be a JSON object")
        result = train_source_model(
            out_dir=args.out, arch=args.arch, config=config, classes=parse_classes(args.classes),
            shift=args.shift, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta, max_grad_norm=args.max_grad_norm,
            license=args.license, description=args.description,
        )
    except (ValueError, LookupError) as exc:
        print(f"models.train: error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "out_dir": str(result.out_dir), "architecture": result.card.architecture,
        "train_accuracy": round(result.train_accuracy, 4), "test_accuracy": round(result.test_accuracy, 4),
        "dp_epsilon": result.dp_epsilon, "dp_delta": result.dp_delta, "seconds": round(result.seconds, 2),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        privacy = f", DP epsilon {result.dp_epsilon:.2f} delta {result.dp_delta:.1e}" if result.dp_epsilon else ""
        print(f"trained {result.card.architecture} in {result.seconds:.1f}s: source test accuracy "
              f"{result.test_accuracy:.3f}{privacy} -> {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
