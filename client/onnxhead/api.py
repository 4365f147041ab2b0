"""`fit_head`: adapt a pulled ONNX model to the client's data without torch.

    result = fit_head("model.onnx", train=(x, y), strategy="logreg", val=(xv, yv), test=(xt, yt),
                      card=card, privacy=PrivacyConfig(epsilon=4.0), ledger=ledger, dataset_id="my-data",
                      out_dir="adapted/")
    client.report(result.to_run(run_id=..., model_version=...))

Examples are model-ready: shaped as the model's input and normalised as
its card says (`xfer.client.onnxhead.data.prepare_examples` does both).
The flow: reserve ε in the privacy ledger (before any data is read), run
the backbone over the data once (`features.py`), fit the head (`heads.py`),
settle the ledger to the accountant's ε, score the validation and test
splits, then — with `out_dir` — write the model with the head replaced,
verified by onnxruntime before it is moved into place, its card and
metrics.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from xfer.client.domain import DeviceKind, Run, RunPrivacy, pow2_at_least
from xfer.client.dp_delta import resolve_delta
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.onnxhead.accounting import GaussianAccountant
from xfer.client.onnxhead.data import integer_labels, numbered_label_names, own_bucket_floor
from xfer.client.onnxhead.errors import HeadDataError, HeadPrivacyError
from xfer.client.onnxhead.features import FeatureExtractor
from xfer.client.onnxhead.graph import (
    SurgeryReport,
    VerificationReport,
    load_model,
    replace_head,
    verify_head,
    write_model,
)
from xfer.client.onnxhead.head import LinearHead
from xfer.client.onnxhead.heads import STRATEGY_PREFIX, FitContext, HeadConfig, get_head
from xfer.client.onnxhead.metrics import Metrics, metrics_from_logits
from xfer.client.onnxhead.output import HeadOutputs, head_card, write_outputs
from xfer.client.onnxhead.private import PrivacyConfig, PrivacyReport
from xfer.client.onnxhead.report import build_run, report_fields
from xfer.models.card import ModelCard

log = logging.getLogger(__name__)

#: What callers pass as a split: (x, y), or anything with `.x` and `.y` (e.g. finetune's TensorData).
Split = Any


@dataclasses.dataclass(frozen=True, eq=False)
class HeadFitResult:
    """Everything a head fit produced. `train_examples` stays local; reports use `to_run`."""

    strategy: str
    head: LinearHead
    label_names: tuple[str, ...]
    hyperparameters: dict[str, str]
    details: dict[str, Any]
    train_examples: int
    privacy: PrivacyReport | None
    val_metrics: Metrics | None
    test_metrics: Metrics | None
    outputs: HeadOutputs | None
    verification: VerificationReport | None
    surgery: SurgeryReport | None
    device_kind: DeviceKind
    timings: dict[str, float]
    wall_seconds: float
    dataset_id: str | None

    @property
    def train_examples_pow2(self) -> int:
        """The training-set size as a report may carry it."""
        return pow2_at_least(self.train_examples)

    def run_privacy(self) -> RunPrivacy:
        """The privacy fields of a report."""
        p = self.privacy
        if p is None:
            return RunPrivacy()
        return RunPrivacy(
            dp=True,
            epsilon_spent=p.epsilon_spent,
            delta=p.delta,
            noise_multiplier=p.noise_multiplier,
            max_grad_norm=p.max_grad_norm,
        )

    def to_run(self, *, run_id: str, model_version: str, min_eval_examples: int | None = None) -> Run:
        """The report of this run (test-split metrics, rounded; see `report.py`).

        `min_eval_examples`: the smallest test-split size consistent with what
        is public. The default, the test split's own bucket floor, is right for
        a test set drawn independently of the training set; a caller that split
        both from one data set passes the bound for its split (`data.py`).
        """
        if self.test_metrics is None:
            raise HeadDataError("no test split was scored, so there is nothing to report; pass test=(x, y)")
        floor = own_bucket_floor(self.test_metrics.examples) if min_eval_examples is None else min_eval_examples
        hyper = dict(self.hyperparameters)
        if self.privacy is not None:
            hyper["dp_accountant"] = "gdp-analytic"
            hyper["dp_target_epsilon"] = f"{self.privacy.target_epsilon:g}"
        return build_run(
            run_id=run_id,
            model_version=model_version,
            strategy=self.strategy,
            hyperparameters=hyper,
            metrics=self.test_metrics.scalars(),
            min_eval_examples=floor,
            privacy=self.run_privacy(),
            train_examples_pow2=self.train_examples_pow2,
            device_kind=self.device_kind,
            wall_seconds=self.wall_seconds,
        )

    def report_fields(self, *, min_eval_examples: int | None = None) -> dict[str, Any]:
        """`to_run` as `xfer.v1.Run` JSON fields, without run_id and model_version (like `xfer finetune`'s)."""
        return report_fields(self.to_run(run_id="-", model_version="-", min_eval_examples=min_eval_examples))


def _arrays(split: Split, *, where: str) -> tuple[Any, np.ndarray]:
    if isinstance(split, tuple) and len(split) == 2:
        x, y = split
    elif hasattr(split, "x") and hasattr(split, "y"):
        x, y = split.x, split.y
    else:
        raise HeadDataError(f"{where} must be (x, y) or have .x and .y, got {type(split).__name__}")
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)  # e.g. a CPU torch tensor, through its __array__ (torch itself is never imported)
    y = integer_labels(y, where=where)
    if y.ndim != 1 or len(y) != len(x):
        raise HeadDataError(f"{where}: y must hold one label per example: {len(x)} examples, y shape {list(y.shape)}")
    if len(y) == 0:
        raise HeadDataError(f"{where}: no examples")
    return x, y


def _check_labels(y: np.ndarray, *, num_classes: int, where: str) -> None:
    if y.min() < 0 or y.max() >= num_classes:
        raise HeadDataError(f"{where}: labels must be 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")


def _digest(x: Any, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for start in range(0, len(y), 4096):  # in blocks, so a memory-mapped x is never copied whole
        h.update(np.ascontiguousarray(x[start : start + 4096]).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return "arrays-" + h.hexdigest()[:16]


def fit_head(
    model: str | os.PathLike | bytes,
    *,
    train: Split,
    strategy: str = "logreg",
    val: Split | None = None,
    test: Split | None = None,
    label_names: tuple[str, ...] | list[str] | None = None,
    card: ModelCard | None = None,
    privacy: PrivacyConfig | None = None,
    ledger: PrivacyLedger | None = None,
    dataset_id: str | None = None,
    privacy_budget: float | None = None,
    config: HeadConfig = HeadConfig(),
    out_dir: str | os.PathLike | None = None,
) -> HeadFitResult:
    """Fits a new head on the ONNX model's `features` (see the module docstring).

    `strategy`: 'logreg' or 'prototype' (or 'onnx-logreg', 'onnx-prototype').
    `privacy`: a target (ε, δ) for the whole fit; charged to `ledger` under
    `dataset_id` (default: a digest of the training arrays) against
    `privacy_budget`. `label_names` default to '0'..'K-1', K = max label + 1.
    """
    started = time.perf_counter()
    name, fitter = get_head(strategy)
    if privacy is None and (privacy_budget is not None or ledger is not None):
        raise HeadDataError("a privacy ledger or budget needs privacy=PrivacyConfig(epsilon=...)")
    x_train, y_train = _arrays(train, where="train")
    names = (
        tuple(str(n) for n in label_names) if label_names is not None else numbered_label_names(y_train, where="train")
    )
    k = len(names)
    if k < 2:
        raise HeadDataError(f"a classifier needs at least two classes, got label names {list(names)}")
    splits = {"train": (x_train, y_train)}
    for where, split in (("val", val), ("test", test)):
        if split is not None:
            splits[where] = _arrays(split, where=where)
    for where, (_, y) in splits.items():
        _check_labels(y, num_classes=k, where=where)
    absent = [names[c] for c in range(k) if not np.any(y_train == c)]
    if absent:
        raise HeadDataError(
            f"class(es) {absent} have no training examples; every class needs at least one "
            f"(or leave it out of label_names)"
        )
    n = len(y_train)
    delta = 0.0
    entry = None
    if privacy is not None:
        delta = resolve_delta(privacy.delta, bucket=pow2_at_least(n), error=HeadPrivacyError)
        if ledger is not None:
            dataset_id = dataset_id or _digest(x_train, y_train)
            # Reserve the whole target before the data is read; settled to the accountant's figure below.
            entry = ledger.charge(
                dataset_id, epsilon=privacy.epsilon, delta=delta, budget=privacy_budget, note=f"{STRATEGY_PREFIX}{name}"
            )

    t0 = time.perf_counter()
    extractor = FeatureExtractor(model, batch_size=config.batch_size, options=config.session)
    features = {where: extractor(x) for where, (x, _) in splits.items()}
    t1 = time.perf_counter()
    accountant = GaussianAccountant()
    val_pair = (features["val"], splits["val"][1]) if "val" in splits else None
    fitted = fitter(
        FitContext(
            features=features["train"],
            y=y_train,
            num_classes=k,
            val=val_pair,
            config=config,
            privacy=privacy,
            epsilon=privacy.epsilon if privacy else 0.0,
            delta=delta,
            accountant=accountant,
        )
    )
    t2 = time.perf_counter()
    report = None
    if privacy is not None:
        spent = accountant.epsilon(delta)
        if ledger is not None and entry is not None and dataset_id is not None:
            ledger.settle(dataset_id, entry.entry_id, epsilon=spent, delta=delta)
        report = PrivacyReport(
            epsilon_spent=spent,
            delta=delta,
            target_epsilon=privacy.epsilon,
            noise_multiplier=1.0 / accountant.mu,
            max_grad_norm=fitted.max_grad_norm,
            releases=tuple(accountant.releases),
        )
    scored = {
        where: metrics_from_logits(fitted.head.logits(features[where]), splits[where][1], label_names=names)
        for where in ("val", "test")
        if where in splits
    }
    strategy_name = f"{STRATEGY_PREFIX}{name}"
    outputs = verification = surgery = None
    if out_dir is not None:
        outputs, verification, surgery = _write(
            model,
            fitted.head,
            out_dir=Path(out_dir),
            card=card,
            names=names,
            strategy=strategy_name,
            probe=np.ascontiguousarray(x_train[: config.verify_examples], dtype=extractor.dtype),
            probe_features=features["train"][: config.verify_examples],
            config=config,
            local={
                "strategy": strategy_name,
                "head": fitted.head.describe(),
                "label_names": list(names),
                "hyperparameters": fitted.hyperparameters,
                "details": fitted.details,
                "val": scored["val"].to_dict() if "val" in scored else None,
                "test": scored["test"].to_dict() if "test" in scored else None,
                "privacy": _privacy_dict(report, accountant),
            },
        )
    t3 = time.perf_counter()
    providers = config.session.providers
    device = DeviceKind.CUDA if providers and providers[0] == "CUDAExecutionProvider" else DeviceKind.CPU
    return HeadFitResult(
        strategy=strategy_name,
        head=fitted.head,
        label_names=names,
        hyperparameters=fitted.hyperparameters,
        details=fitted.details,
        train_examples=n,
        privacy=report,
        val_metrics=scored.get("val"),
        test_metrics=scored.get("test"),
        outputs=outputs,
        verification=verification,
        surgery=surgery,
        device_kind=device,
        timings={"features": t1 - t0, "fit": t2 - t1, "write": t3 - t2},
        wall_seconds=time.perf_counter() - started,
        dataset_id=dataset_id,
    )


def _privacy_dict(report: PrivacyReport | None, accountant: GaussianAccountant) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "epsilon_spent": report.epsilon_spent,
        "delta": report.delta,
        "target_epsilon": report.target_epsilon,
        "noise_multiplier": report.noise_multiplier,
        "max_grad_norm": report.max_grad_norm,
        "accountant": "gdp-analytic",
        **accountant.to_dict(),
    }


def _write(
    model: str | os.PathLike | bytes,
    head: LinearHead,
    *,
    out_dir: Path,
    card: ModelCard | None,
    names: tuple[str, ...],
    strategy: str,
    probe: np.ndarray,
    probe_features: np.ndarray,
    config: HeadConfig,
    local: dict[str, Any],
) -> tuple[HeadOutputs, VerificationReport, SurgeryReport]:
    import onnx

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else load_model(model)
    new_card = head_card(card, head=head, label_names=names, strategy=strategy) if card is not None else None
    new, surgery = replace_head(proto, head, metadata={"xfer.head": strategy})
    checked: list[VerificationReport] = []

    def write_onnx(path: Path) -> None:
        checked.append(
            write_model(
                new,
                path,
                check=lambda tmp: verify_head(tmp, head, x=probe, features=probe_features, options=config.session),
            )
        )

    outputs = write_outputs(
        out_dir=out_dir,
        write_onnx=write_onnx,
        card=new_card,
        metrics=lambda: {
            **local,
            "verification": dataclasses.asdict(checked[0]),
            "surgery": dataclasses.asdict(surgery),
        },
    )
    return outputs, checked[0], surgery
