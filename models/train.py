"""Train a source model for operators: `python -m xfer.models.train --data fashion-mnist --out DIR`.

Trains on the *source* pool of a built-in data set (`--data`: digits,
digits28, mnist5k or fashion-mnist, see `xfer.models.datasets`), which never
overlaps the clients' *target* pool, and writes the three files
`xfer register` uploads: `model.safetensors`, `model.onnx` and `card.json`.
With `--dp-epsilon` the model is trained with Opacus DP-SGD and the card
records the (epsilon, delta) the accountant reports, so clients know the
source model's own privacy guarantee. With `--audit` the card also records
what membership inference (and, under DP, a one-run canary audit) measured
against the weights (`xfer.models.audit`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from xfer.models.artifacts import CARD_NAME, ONNX_NAME, SAFETENSORS_NAME, write_model_folder
from xfer.models.audit.config import AuditConfig
from xfer.models.card import ModelCard
from xfer.models.datasets import get_dataset, list_datasets, load_images
from xfer.models.errors import ModelError
from xfer.models.fit import FitConfig, fit
from xfer.models.imagesets import SPLITS, parse_classes, select_classes
from xfer.models.registry import create_model
from xfer.models.shifts import DEFAULT_SEVERITY, SHIFTS, apply_shift

log = logging.getLogger(__name__)

#: Digits-shaped defaults per architecture (8x8 greyscale, or 64 features); `arch_config` adapts them.
DIGITS_CONFIGS: dict[str, dict[str, Any]] = {
    "mlp": {"in_features": 64, "hidden": [128, 64]},
    "convnet": {"in_channels": 1, "image_size": 8, "width": 16, "depth": 3},
    "vit_tiny": {"in_channels": 1, "image_size": 8, "patch_size": 2},
}
ARCHITECTURES = tuple(sorted(DIGITS_CONFIGS))
__all__ = ["ARCHITECTURES", "CARD_NAME", "ONNX_NAME", "SAFETENSORS_NAME", "TrainResult", "arch_config", "main",
           "train_source_model"]


def arch_config(arch: str, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The default config of `arch` for images of `image_shape` (channels, height, width)."""
    if arch not in DIGITS_CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    c, h, w = image_shape
    if arch == "mlp":
        return {**DIGITS_CONFIGS[arch], "in_features": c * h * w}
    if arch == "convnet":
        # From 16 pixels up, a stride-2 stem: a quarter of the compute, and 28x28 still ends at 4x4.
        return {**DIGITS_CONFIGS[arch], "in_channels": c, "image_size": h, "stem_stride": 2 if h >= 16 else 1}
    patch = 2 if h <= 8 else 4 if h % 4 == 0 else 2
    return {**DIGITS_CONFIGS[arch], "in_channels": c, "image_size": h, "patch_size": patch}


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
    data: str = "digits",
    split: str = "source",
    config: dict[str, Any] | None = None,
    classes: Sequence[int] | None = None,
    shift: str = "none",
    severity: int = DEFAULT_SEVERITY,
    max_examples: int | None = None,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
    max_grad_norm: float = 1.0,
    license: str | None = None,
    description: str = "",
    audit: AuditConfig | None = None,
) -> TrainResult:
    """Trains a source model on pool `split` of data set `data` and writes its artifacts to `out_dir`.

    `classes` (default: all) are relabelled 0..k-1; `max_examples` keeps a stratified random subset of the
    pool (a shorter run); a fifth of what is kept is held out to measure the source accuracy. With `audit`,
    membership inference is measured against the weights (that fifth as non-members) and, for DP training,
    a one-run canary audit bounds epsilon from below; the card records both (`xfer.models.audit`).
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs, batch_size and lr must be positive")
    if max_examples is not None and max_examples < 10:
        raise ValueError(f"max_examples must be at least 10, got {max_examples}")
    dataset = get_dataset(data)
    started = time.perf_counter()
    torch.manual_seed(seed)
    images = load_images(data, split)
    if classes is not None:
        images = select_classes(images, list(classes))
    images = apply_shift(images, shift, seed=seed, severity=severity)
    if max_examples is not None and max_examples < len(images):
        images = images.take(_stratified_subset(images.y, max_examples, seed=seed))
    base = arch_config(arch, dataset.image_shape)
    model = create_model(arch, **{**base, **(config or {}), "num_classes": len(images.label_names)})

    order = np.random.default_rng(seed).permutation(len(images))
    n_test = max(len(order) // 5, 1)
    test_idx, train_idx = order[:n_test], order[n_test:]
    data_set = images
    mean, std = float(data_set.x[train_idx].mean()), float(data_set.x[train_idx].std())
    shape = model.input_shape()

    def tensors(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = (data_set.x[index] - mean) / std
        return torch.from_numpy(x.reshape(len(index), *shape)), torch.from_numpy(data_set.y[index])

    x_train, y_train = tensors(train_idx)
    x_test, y_test = tensors(test_idx)
    recipe = FitConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, dp_epsilon=dp_epsilon,
                       dp_delta=dp_delta, max_grad_norm=max_grad_norm)
    fitted = fit(model, x_train, y_train, recipe)
    model, spent, dp_delta = fitted.model, fitted.dp_epsilon, fitted.dp_delta
    privacy_audit = None
    if audit is not None:
        from xfer.models.audit.runner import audit_trained_model

        privacy_audit = audit_trained_model(
            model=model, make_model=lambda: create_model(arch, **{**base, **(config or {}),
                                                                  "num_classes": len(images.label_names)}),
            members=(x_train, y_train), non_members=(x_test, y_test), num_classes=len(images.label_names),
            fit_config=recipe, config=audit)

    out = Path(out_dir)
    train_acc, test_acc = _accuracy(model, x_train, y_train), _accuracy(model, x_test, y_test)
    chosen = "all classes" if classes is None else f"classes {list(classes)}"
    task = (f"{dataset.description}, {split} pool, {chosen} ({', '.join(images.label_names)}), "
            f"{len(train_idx)} training images") + (f", under shift {shift}" if shift != "none" else "")
    c, h, w = dataset.image_shape
    card, _ = write_model_folder(
        model, out,
        input_mean=(mean,),
        input_std=(std,),
        preprocessing=(f"{h}x{w} greyscale pixel intensities scaled to [0, 1], then (x - {mean:.4f}) / {std:.4f}"
                       if c == 1 else f"{h}x{w} RGB scaled to [0, 1], then (x - {mean:.4f}) / {std:.4f}"),
        label_names=images.label_names,
        source_task=f"{task}; held-out source accuracy {test_acc:.3f}",
        dp_epsilon=spent,
        dp_delta=dp_delta if spent is not None else None,
        license=license or dataset.license.split(" ")[0],
        description=description or f"{arch} trained on {task}",
        audit=privacy_audit,
    )
    return TrainResult(out_dir=out, card=card, train_accuracy=train_acc, test_accuracy=test_acc, epochs=epochs,
                       seconds=time.perf_counter() - started, dp_epsilon=spent,
                       dp_delta=dp_delta if spent is not None else None)


def _stratified_subset(y: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """About `n` rows with every class in its proportion (at least one each), seeded."""
    rng = np.random.default_rng(seed + 7)
    keep = []
    for label in np.unique(y):
        rows = np.nonzero(y == label)[0]
        keep.append(rng.permutation(rows)[:max(1, round(n * len(rows) / len(y)))])
    return np.sort(np.concatenate(keep))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xfer.models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--data", default="digits", choices=list_datasets(),
                        help="built-in data set to train on (default digits)")
    parser.add_argument("--split", default="source", choices=SPLITS,
                        help="its pool (default source: the operator's, disjoint from the clients' target pool)")
    parser.add_argument("--arch", default="convnet", choices=ARCHITECTURES)
    parser.add_argument("--config", default="{}", help="JSON overrides of the architecture config")
    parser.add_argument("--classes", default=None, help="classes to train on, e.g. 0-4 or 1,3,5 (default: all)")
    parser.add_argument("--shift", default="none", choices=SHIFTS, help="shift applied to the source data")
    parser.add_argument("--severity", type=int, default=DEFAULT_SEVERITY, help="severity 1-5 of the shift")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="train on a stratified random subset of this many images (a shorter run)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dp-epsilon", type=float, help="train with DP-SGD to this epsilon")
    parser.add_argument("--dp-delta", type=float, help="DP delta (default min(1e-5, 1/n^1.1))")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP per-example clip norm")
    parser.add_argument("--license", default=None, help="licence of the weights (default: the data set's)")
    parser.add_argument("--description", default="")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: a small convnet gains little from more, and on a busy "
                             "machine two threads on two cores run several times slower than one)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    audit = parser.add_argument_group("privacy audit (recorded in the card)")
    audit.add_argument("--audit", action="store_true",
                       help="measure membership inference against the weights (the held-out fifth as non-members) "
                            "and, with --dp-epsilon, bound epsilon from below with a one-run canary audit")
    audit.add_argument("--audit-reference-pairs", type=int, default=AuditConfig.reference_pairs,
                       help="pairs of RMIA reference models, trained like the source (default %(default)s; 0: loss "
                            "attack only)")
    audit.add_argument("--audit-canaries", type=int, default=None,
                       help="canaries of the DP audit (default: a fifth of the training set, at most 1000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        print("models.train: error: --threads must be at least 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        config = json.loads(args.config)
        if not isinstance(config, dict):
            raise ValueError("--config must be a JSON object")
        result = train_source_model(
            out_dir=args.out, arch=args.arch, data=args.data, split=args.split, config=config,
            classes=parse_classes(args.classes) if args.classes else None, shift=args.shift, severity=args.severity,
            max_examples=args.max_examples, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta, max_grad_norm=args.max_grad_norm,
            license=args.license, description=args.description,
            audit=AuditConfig(reference_pairs=args.audit_reference_pairs, canaries=args.audit_canaries,
                              seed=args.seed) if args.audit else None,
        )
    except (ValueError, LookupError) as exc:
        print(f"models.train: error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, ModelError) else exc.exit_code
    summary = {
        "out_dir": str(result.out_dir), "architecture": result.card.architecture,
        "train_accuracy": round(result.train_accuracy, 4), "test_accuracy": round(result.test_accuracy, 4),
        "dp_epsilon": result.dp_epsilon, "dp_delta": result.dp_delta, "seconds": round(result.seconds, 2),
    }
    if result.card.audit is not None:
        summary["audit"] = result.card.audit.to_dict()
    if args.json:
        print(json.dumps(summary))
    else:
        privacy = f", DP epsilon {result.dp_epsilon:.2f} delta {result.dp_delta:.1e}" if result.dp_epsilon else ""
        print(f"trained {result.card.architecture} in {result.seconds:.1f}s: source test accuracy "
              f"{result.test_accuracy:.3f}{privacy} -> {result.out_dir}")
        if result.card.audit is not None:
            from xfer.models.audit.runner import summary_lines

            for line in summary_lines(result.card.audit):
                print(f"  audit: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
