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

Two other ways to train, both recorded in the card (`training_method`,
`training_settings`):

- `--meta protonet|fomaml|reptile` trains on N-way K-shot episodes
  (`xfer.models.meta`; `--episodes`, `--ways`, `--shots`, ...);
- `--tasks 'items=0-4;group=top:0,2,4|bottom:1,3@0.5'` trains one body with
  one head per task on different label sets of the same data, minimising
  Σ w_i L_i (`xfer.models.multitask`); the card lists the heads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from xfer.models.meta import METHODS, MetaConfig, MetaResult, meta_train
from xfer.models.multitask import (
    MultiHeadNet,
    TaskSpec,
    attach_task_heads,
    multitask_loss,
    parse_tasks,
    task_targets,
    used_classes,
)
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
__all__ = [
    "ARCHITECTURES",
    "CARD_NAME",
    "ONNX_NAME",
    "SAFETENSORS_NAME",
    "TrainResult",
    "arch_config",
    "main",
    "train_source_model",
]


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
    #: Multi-task sources: held-out accuracy of every head on the examples its task labels.
    task_accuracies: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Meta-learned sources: what meta-training did (held-out episodic accuracy included).
    meta: MetaResult | None = None


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
    meta: MetaConfig | None = None,
    tasks: str | Sequence[TaskSpec] | None = None,
    audit: AuditConfig | None = None,
) -> TrainResult:
    """Trains a source model on pool `split` of data set `data` and writes its artifacts to `out_dir`.

    `classes` (default: all) are relabelled 0..k-1; `max_examples` keeps a stratified random subset of the
    pool (a shorter run); a fifth of what is kept is held out to measure the source accuracy. `meta`
    meta-trains on episodes instead (`epochs`, `batch_size` and `lr` then do not apply); `tasks` (a
    `--tasks` string or parsed specs) trains one head per task on the classes they list.
    With `audit` (plain or DP supervised training only), membership inference is measured against the
    weights (that fifth as non-members) and, for DP training, a one-run canary audit bounds epsilon from
    below; the card records both (`xfer.models.audit`).
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs, batch_size and lr must be positive")
    if max_examples is not None and max_examples < 10:
        raise ValueError(f"max_examples must be at least 10, got {max_examples}")
    if meta is not None and tasks is not None:
        raise ValueError("--meta and --tasks are separate ways to train a source; choose one")
    if meta is not None and dp_epsilon is not None:
        raise ValueError(
            f"--meta {meta.method} with --dp-epsilon: an episode's loss couples its examples "
            "(prototypes, inner loops), so per-example clipping bounds no single example's influence; "
            "train the source with plain or multi-task DP-SGD instead"
        )
    if audit is not None and (meta is not None or tasks is not None):
        raise ValueError("--audit measures plain (or DP) supervised training; it does not cover --meta or --tasks")
    if tasks is not None and classes is not None:
        raise ValueError("--tasks chooses the classes itself (those its tasks list); leave out --classes")
    dataset = get_dataset(data)
    started = time.perf_counter()
    torch.manual_seed(seed)
    images = load_images(data, split)
    specs: tuple[TaskSpec, ...] = ()
    if tasks is not None:
        specs = parse_tasks(tasks, label_names=images.label_names) if isinstance(tasks, str) else tuple(tasks)
        # Original class numbers stay: every task maps them to its own outputs.
        images = images.take(np.nonzero(np.isin(images.y, used_classes(specs)))[0])
    elif classes is not None:
        images = select_classes(images, list(classes))
    images = apply_shift(images, shift, seed=seed, severity=severity)
    if max_examples is not None and max_examples < len(images):
        images = images.take(_stratified_subset(images.y, max_examples, seed=seed))
    base = arch_config(arch, dataset.image_shape)
    if specs:
        num_classes = len(specs[0].groups)
    elif meta is not None and meta.head_classes is not None:
        num_classes = meta.head_classes
    else:
        num_classes = len(images.label_names)
    model = create_model(arch, **{**base, **(config or {}), "num_classes": num_classes})
    if specs:
        attach_task_heads(model, [t.head() for t in specs[1:]])

    order = np.random.default_rng(seed).permutation(len(images))
    n_test = max(len(order) // 5, 1)
    test_idx, train_idx = order[:n_test], order[n_test:]
    data_set = images
    mean, std = float(data_set.x[train_idx].mean()), float(data_set.x[train_idx].std())
    shape = model.input_shape()

    labels = task_targets(data_set.y, specs) if specs else data_set.y

    def tensors(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = (data_set.x[index] - mean) / std
        return torch.from_numpy(x.reshape(len(index), *shape)), torch.from_numpy(labels[index])

    x_train, y_train = tensors(train_idx)
    x_test, y_test = tensors(test_idx)
    if meta is not None:
        meta_result = meta_train(model, x=x_train, y=y_train.numpy(), config=meta, heldout=(x_test, y_test.numpy()))
        return _write(
            model,
            out=Path(out_dir),
            dataset=dataset,
            images=images,
            arch=arch,
            split=split,
            classes=classes,
            shift=shift,
            mean=mean,
            std=std,
            n_train=len(train_idx),
            started=started,
            train_acc=meta_result.train_accuracy,
            test_acc=meta_result.heldout_accuracy,
            epochs=0,
            spent=None,
            dp_delta=None,
            license=license,
            description=description,
            meta=meta,
            meta_result=meta_result,
            test_data=(x_test, y_test),
        )
    recipe = FitConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        dp_epsilon=dp_epsilon,
        dp_delta=dp_delta,
        max_grad_norm=max_grad_norm,
    )
    sizes = [len(t.groups) for t in specs]
    weights = [t.weight for t in specs]

    def multitask(logits: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return multitask_loss(logits, yb, sizes=sizes, weights=weights)

    fitted = fit(MultiHeadNet(model) if specs else model, x_train, y_train, recipe, loss=multitask if specs else None)
    trained, spent, dp_delta = fitted.model, fitted.dp_epsilon, fitted.dp_delta
    model = trained.model if isinstance(trained, MultiHeadNet) else trained
    privacy_audit = None
    if audit is not None:
        from xfer.models.audit.runner import audit_trained_model

        privacy_audit = audit_trained_model(
            model=model,
            make_model=lambda: create_model(arch, **{**base, **(config or {}), "num_classes": len(images.label_names)}),
            members=(x_train, y_train),
            non_members=(x_test, y_test),
            num_classes=len(images.label_names),
            fit_config=recipe,
            config=audit,
        )

    if specs:
        task_acc = {t.name: _task_accuracy(model, x_test, y_test, task=i) for i, t in enumerate(specs)}
        train_acc, test_acc = _task_accuracy(model, x_train, y_train, task=0), task_acc[specs[0].name]
    else:
        task_acc = {}
        train_acc, test_acc = _accuracy(model, x_train, y_train), _accuracy(model, x_test, y_test)
    return _write(
        model,
        out=Path(out_dir),
        dataset=dataset,
        images=images,
        arch=arch,
        split=split,
        classes=classes,
        shift=shift,
        mean=mean,
        std=std,
        n_train=len(train_idx),
        started=started,
        train_acc=train_acc,
        test_acc=test_acc,
        epochs=epochs,
        spent=spent,
        dp_delta=dp_delta,
        license=license,
        description=description,
        specs=specs,
        task_accuracies=task_acc,
        audit=privacy_audit,
        settings={"epochs": str(epochs), "batch_size": str(batch_size), "lr": f"{lr:g}", "optimizer": "adam"},
    )


def _task_accuracy(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, *, task: int) -> float:
    """Accuracy of head `task` (0: the model's own) on the examples that task labels."""
    from xfer.models.multitask import all_logits

    model.eval()
    with torch.no_grad():
        logits = all_logits(model, x)[task]
    y = targets[:, task]
    has = y >= 0
    return float((logits[has].argmax(1) == y[has]).float().mean()) if bool(has.any()) else float("nan")


def _write(
    model: nn.Module,
    *,
    out: Path,
    dataset: Any,
    images: Any,
    arch: str,
    split: str,
    classes: Sequence[int] | None,
    shift: str,
    mean: float,
    std: float,
    n_train: int,
    started: float,
    train_acc: float,
    test_acc: float,
    epochs: int,
    spent: float | None,
    dp_delta: float | None,
    license: str | None,
    description: str,
    specs: Sequence[TaskSpec] = (),
    task_accuracies: dict[str, float] | None = None,
    settings: dict[str, str] | None = None,
    meta: MetaConfig | None = None,
    meta_result: MetaResult | None = None,
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    audit: Any = None,
) -> TrainResult:
    """Writes the model folder with a card that says how the model was trained; returns the TrainResult."""
    if specs:
        chosen = "classes " + ", ".join(str(c) for c in used_classes(specs))
    else:
        chosen = "all classes" if classes is None else f"classes {list(classes)}"
    what = (
        f"{dataset.description}, {split} pool, {chosen} ({', '.join(images.label_names)}), {n_train} training images"
    ) + (f", under shift {shift}" if shift != "none" else "")
    label_names: tuple[str, ...] = tuple(images.label_names)
    fields: dict[str, Any] = {"training_method": "supervised", "training_settings": settings or {}}
    if specs:
        label_names = specs[0].label_names
        heads = "; ".join(
            f"{t.name} ({len(t.groups)} classes, weight {t.weight:g}, held-out accuracy "
            f"{(task_accuracies or {}).get(t.name, float('nan')):.3f})"
            for t in specs
        )
        accuracy = f"heads {heads}"
        fields = {
            "training_method": "multitask",
            "tasks": tuple(t.head() for t in specs),
            "training_settings": {**(settings or {}), "objective": "sum of w_i * L_i (per example)"},
        }
    elif meta is not None:
        fields = {"training_method": meta.method, "training_settings": meta.settings()}
        if meta.head_classes is not None:
            label_names = ()  # its outputs are episode slots, not classes
            accuracy = (
                f"held-out {meta.ways}-way {meta.shots}-shot episodic accuracy {test_acc:.3f} "
                f"after {meta.inner_steps} inner steps"
            )
        else:
            accuracy = f"held-out {meta.ways}-way {meta.shots}-shot episodic accuracy {test_acc:.3f}"
            if test_data is not None:
                accuracy += f"; prototype head over all source classes {_accuracy(model, *test_data):.3f}"
        what = f"{what}, meta-trained with {meta.method} on {meta.episodes} episodes"
    else:
        accuracy = f"held-out source accuracy {test_acc:.3f}"
    c, h, w = dataset.image_shape
    card, _ = write_model_folder(
        model,
        out,
        input_mean=(mean,),
        input_std=(std,),
        preprocessing=(
            f"{h}x{w} greyscale pixel intensities scaled to [0, 1], then (x - {mean:.4f}) / {std:.4f}"
            if c == 1
            else f"{h}x{w} RGB scaled to [0, 1], then (x - {mean:.4f}) / {std:.4f}"
        ),
        label_names=label_names,
        source_task=f"{what}; {accuracy}",
        dp_epsilon=spent,
        dp_delta=dp_delta if spent is not None else None,
        license=license or dataset.license.split(" ")[0],
        description=description or f"{arch} trained on {what}",
        audit=audit,
        **fields,
    )
    return TrainResult(
        out_dir=out,
        card=card,
        train_accuracy=train_acc,
        test_accuracy=test_acc,
        epochs=epochs,
        seconds=time.perf_counter() - started,
        dp_epsilon=spent,
        dp_delta=dp_delta if spent is not None else None,
        task_accuracies=dict(task_accuracies or {}),
        meta=meta_result,
    )


def _stratified_subset(y: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """About `n` rows with every class in its proportion (at least one each), seeded."""
    rng = np.random.default_rng(seed + 7)
    keep = []
    for label in np.unique(y):
        rows = np.nonzero(y == label)[0]
        keep.append(rng.permutation(rows)[: max(1, round(n * len(rows) / len(y)))])
    return np.sort(np.concatenate(keep))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xfer.models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--data", default="digits", choices=list_datasets(), help="built-in data set to train on (default digits)"
    )
    parser.add_argument(
        "--split",
        default="source",
        choices=SPLITS,
        help="its pool (default source: the operator's, disjoint from the clients' target pool)",
    )
    parser.add_argument("--arch", default="convnet", choices=ARCHITECTURES)
    parser.add_argument("--config", default="{}", help="JSON overrides of the architecture config")
    parser.add_argument("--classes", default=None, help="classes to train on, e.g. 0-4 or 1,3,5 (default: all)")
    parser.add_argument("--shift", default="none", choices=SHIFTS, help="shift applied to the source data")
    parser.add_argument("--severity", type=int, default=DEFAULT_SEVERITY, help="severity 1-5 of the shift")
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="train on a stratified random subset of this many images (a shorter run)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dp-epsilon", type=float, help="train with DP-SGD to this epsilon")
    parser.add_argument("--dp-delta", type=float, help="DP delta, below 1/n (default min(1e-5, 1/n^1.1))")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP per-example clip norm")
    parser.add_argument(
        "--meta",
        choices=METHODS,
        default=None,
        help="meta-train on N-way K-shot episodes instead: protonet (prototypes), fomaml "
        "(first-order MAML) or reptile; --epochs, --batch-size and --lr do not apply",
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=MetaConfig.episodes,
        help=f"--meta: tasks (episodes) over the whole run (default {MetaConfig.episodes})",
    )
    parser.add_argument("--ways", type=int, default=MetaConfig.ways, help="--meta: classes per episode (default 5)")
    parser.add_argument(
        "--shots", type=int, default=MetaConfig.shots, help="--meta: support examples per class (default 5)"
    )
    parser.add_argument(
        "--queries", type=int, default=MetaConfig.queries, help="--meta: query examples per class (default 15)"
    )
    parser.add_argument(
        "--meta-lr", type=float, default=MetaConfig.lr, help="--meta protonet/fomaml: Adam learning rate (default 1e-3)"
    )
    parser.add_argument(
        "--inner-steps",
        type=int,
        default=MetaConfig.inner_steps,
        help="--meta fomaml/reptile: SGD steps per task (default 5)",
    )
    parser.add_argument(
        "--inner-lr",
        type=float,
        default=MetaConfig.inner_lr,
        help="--meta fomaml/reptile: inner SGD learning rate (default 0.05)",
    )
    parser.add_argument(
        "--meta-batch",
        type=int,
        default=MetaConfig.meta_batch,
        help="--meta fomaml/reptile: tasks per meta-update (default 4)",
    )
    parser.add_argument(
        "--meta-step",
        type=float,
        default=MetaConfig.meta_step,
        help="--meta reptile: outer step size at the start, annealed to 0 (default 1)",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="multi-task source: 'NAME=CLASSES[@WEIGHT];...', one head per task, the first the "
        "model's own; CLASSES a list (0-4) or groups (top:0,2,4|bottom:1,3); loss sum w_i L_i",
    )
    parser.add_argument("--license", default=None, help="licence of the weights (default: the data set's)")
    parser.add_argument("--description", default="")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: a small convnet gains little from more, and on a busy "
        "machine two threads on two cores run several times slower than one)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    audit = parser.add_argument_group("privacy audit (recorded in the card)")
    audit.add_argument(
        "--audit",
        action="store_true",
        help="measure membership inference against the weights (the held-out fifth as non-members) "
        "and, with --dp-epsilon, bound epsilon from below with a one-run canary audit",
    )
    audit.add_argument(
        "--audit-reference-pairs",
        type=int,
        default=AuditConfig.reference_pairs,
        help="pairs of RMIA reference models, trained like the source (default %(default)s; 0: loss attack only)",
    )
    audit.add_argument(
        "--audit-canaries",
        type=int,
        default=None,
        help="canaries of the DP audit (default: a fifth of the training set, at most 1000)",
    )
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
        meta = None
        if args.meta is not None:
            meta = MetaConfig(
                method=args.meta,
                episodes=args.episodes,
                ways=args.ways,
                shots=args.shots,
                queries=args.queries,
                lr=args.meta_lr,
                inner_steps=args.inner_steps,
                inner_lr=args.inner_lr,
                meta_batch=args.meta_batch,
                meta_step=args.meta_step,
                seed=args.seed,
            )
        result = train_source_model(
            out_dir=args.out,
            arch=args.arch,
            data=args.data,
            split=args.split,
            config=config,
            classes=parse_classes(args.classes) if args.classes else None,
            shift=args.shift,
            severity=args.severity,
            max_examples=args.max_examples,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            dp_epsilon=args.dp_epsilon,
            dp_delta=args.dp_delta,
            max_grad_norm=args.max_grad_norm,
            license=args.license,
            description=args.description,
            meta=meta,
            tasks=args.tasks,
            audit=AuditConfig(reference_pairs=args.audit_reference_pairs, canaries=args.audit_canaries, seed=args.seed)
            if args.audit
            else None,
        )
    except (ValueError, LookupError) as exc:
        print(f"models.train: error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, ModelError) else exc.exit_code
    summary = {
        "out_dir": str(result.out_dir),
        "architecture": result.card.architecture,
        "training_method": result.card.training_method,
        "train_accuracy": round(result.train_accuracy, 4),
        "test_accuracy": round(result.test_accuracy, 4),
        "dp_epsilon": result.dp_epsilon,
        "dp_delta": result.dp_delta,
        "seconds": round(result.seconds, 2),
    }
    if result.task_accuracies:
        summary["task_accuracies"] = {k: round(v, 4) for k, v in result.task_accuracies.items()}
    if result.card.audit is not None:
        summary["audit"] = result.card.audit.to_dict()
    if args.json:
        print(json.dumps(summary))
    else:
        privacy = f", DP epsilon {result.dp_epsilon:.2f} delta {result.dp_delta:.1e}" if result.dp_epsilon else ""
        how = "" if result.card.training_method == "supervised" else f" ({result.card.training_method})"
        heads = "".join(f", head {k} {v:.3f}" for k, v in result.task_accuracies.items())
        print(
            f"trained {result.card.architecture}{how} in {result.seconds:.1f}s: source test accuracy "
            f"{result.test_accuracy:.3f}{heads}{privacy} -> {result.out_dir}"
        )
        if result.card.audit is not None:
            from xfer.models.audit.runner import summary_lines

            for line in summary_lines(result.card.audit):
                print(f"  audit: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
