"""`adapt`: fine-tune (or search), evaluate once on the test split, save, and describe the run for a report.

This is the API behind `xfer finetune`: one frozen `FinetuneConfig` in, one
`FinetuneOutcome` out, whose `to_run(run_id=..., model_version=...)` is the
`xfer.client.domain.Run` to pass to `Client.report` — with nothing in it that
narrows the data size below its power-of-two bucket (`report.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from xfer.client.domain import DeviceKind, Run, RunPrivacy
from xfer.client.finetune.config import FinetuneConfig
from xfer.client.finetune.data import TargetData
from xfer.client.finetune.errors import FinetuneError
from xfer.client.finetune.ledger import BudgetStatus, PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate
from xfer.client.finetune.output import OutputPaths, save_outputs
from xfer.client.finetune.report import held_out_grid, label_free_metrics, report_metrics, round_seconds
from xfer.client.finetune.search import CVRow, SearchResult, search
from xfer.client.finetune.selfsup import SelfPretrainResult, pretext_pool, self_pretrain
from xfer.client.finetune.sfda_selection import LabelFreeSearch, run_source_free, uses_source_free
from xfer.client.finetune.trainer import FinetuneResult, RoundRecord, finetune
from xfer.models.base import XferModel
from xfer.models.card import ModelCard
from xfer.models.export import ParityReport
from xfer.models.multitask import select_head

log = logging.getLogger(__name__)

#: Hyperparameter values are short strings on the wire.
MAX_VALUE_CHARS = 256


@dataclasses.dataclass
class FinetuneOutcome:
    """What `adapt` produced: the run (or search), its one test evaluation, the files written."""

    result: FinetuneResult
    test_metrics: Metrics | None
    paths: OutputPaths | None
    parity: ParityReport | None
    dataset_id: str
    search: SearchResult | LabelFreeSearch | None
    budget: BudgetStatus | None
    wall_seconds: float
    config: FinetuneConfig
    #: Self-pretraining on the client's unlabelled examples before fine-tuning, if configured.
    pretext: SelfPretrainResult | None = None
    #: The multi-task source's head fine-tuning started from (None: a single-head source).
    head: str | None = None

    @property
    def size_bucket(self) -> int:
        """The training-set size rounded up to a power of two: the only size the report carries."""
        return self.result.budget.bucket

    @property
    def epsilon_spent(self) -> float | None:
        """ε of everything this outcome released (a whole search included); None without DP."""
        if self.result.privacy is None:
            return None
        before = self.pretext.privacy.epsilon_spent if self.pretext is not None and self.pretext.privacy else 0.0
        if self.search is not None and self.search.epsilon_total is not None:
            return before + self.search.epsilon_total
        return before + self.result.privacy.epsilon_spent

    @property
    def delta(self) -> float | None:
        """δ of everything this outcome released: self-pretraining's and fine-tuning's add up; None without DP."""
        if self.result.privacy is None:
            return None
        before = self.pretext.privacy.delta if self.pretext is not None and self.pretext.privacy else 0.0
        return before + self.result.privacy.delta

    def hyperparameters(self) -> dict[str, str]:
        """The run's settings as reported (every value a function of the config and the size bucket)."""
        hyper = dict(self.result.hyperparameters)
        if self.head is not None:
            hyper["head"] = self.head
        if self.pretext is not None:
            hyper.update(self.pretext.hyperparameters())
        found = self.search
        if found is not None:
            hyper["search_grid"] = ";".join(f"{s}@{lr:g}" for s, lr in found.grid)
            if isinstance(found, LabelFreeSearch):
                hyper["search"] = "label-free"
                hyper["search_criterion"] = found.criterion
            elif found.private and found.selection is not None:
                # Not the number of trials drawn, nor which one won (its seed): the selection's guarantee
                # holds only for a number of trials nobody knows.
                hyper["search"] = "private-selection"
                hyper["seed"] = str(self.config.seed)
                hyper["search_mean_trials"] = f"{found.selection.mean_trials:g}"
                hyper["search_score_noise"] = f"{found.selection.score_noise:.4g}"
            else:
                hyper["search"] = "k-fold"
                hyper["search_folds"] = str(len(found.folds))
        if self.test_metrics is not None:
            grid = held_out_grid(self.size_bucket, self.test_metrics.examples)
            hyper["metric_grid"] = f"1/{round(1 / grid)}"
        p = self.result.privacy
        if p is not None:
            hyper["dp_accountant"] = "rdp" if found is not None and found.private else p.accountant
            hyper["dp_target_epsilon"] = f"{self.config.privacy.epsilon if self.config.privacy else p.target_epsilon:g}"
            hyper["dp_sample_rate"] = f"{p.sample_rate:g}"
            if p.ghost_clipping:
                hyper["dp_ghost_clipping"] = "true"
        return {k: str(v)[:MAX_VALUE_CHARS] for k, v in hyper.items()}

    def metrics(self) -> dict[str, float]:
        """The metrics as reported: test scalars on the size bucket's grid; CV accuracy only without DP."""
        cv = None
        if self.search is not None and not self.search.private and not isinstance(self.search, LabelFreeSearch):
            cv = self.search.best.mean
        test = self.test_metrics.scalars() if self.test_metrics is not None else None
        held_out = self.test_metrics.examples if self.test_metrics is not None else None
        metrics = report_metrics(test=test, bucket=self.size_bucket, cv_accuracy=cv, held_out=held_out)
        free = self.result.label_free
        if free and free.get("criterion") and free.get("best"):
            metrics.update(label_free_metrics(free["best"], bucket=self.size_bucket))
        return metrics

    def to_run(self, *, run_id: str, model_version: str) -> Run:
        """The `Run` to report (`Client.report(outcome.to_run(...))`): aggregates only, size as its bucket."""
        p = self.result.privacy
        privacy = RunPrivacy()
        if p is not None:
            privacy = RunPrivacy(
                dp=True,
                epsilon_spent=float(self.epsilon_spent or 0.0),
                delta=float(self.delta or 0.0),
                noise_multiplier=float(p.noise_multiplier),
                max_grad_norm=float(p.max_grad_norm),
            )
        # A private search's wall time grows with the number of trials drawn, which must stay unknown.
        private_search = self.search is not None and self.search.private
        return Run(
            run_id=run_id,
            model_version=model_version,
            strategy=self.result.strategy,
            hyperparameters=self.hyperparameters(),
            metrics=self.metrics(),
            privacy=privacy,
            train_examples_pow2=self.size_bucket,
            device_kind=DeviceKind.parse(self.result.device_kind),
            wall_seconds=0.0 if private_search else round_seconds(self.wall_seconds),
        )

    def report_fields(self) -> dict[str, Any]:
        """The report as JSON (what `to_run` sends, without run id and model version)."""
        fields = self.to_run(run_id="", model_version="").to_dict()
        for key in ("run_id", "model_version", "name", "create_time"):
            fields.pop(key, None)
        return fields

    def summary(self) -> str:
        """A short human-readable summary."""
        lines = []
        m = self.test_metrics
        if m is not None:
            lines.append(
                f"strategy {self.result.strategy}: test accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}, "
                f"loss {m.loss:.4f}, ECE {m.ece:.4f} ({m.examples} examples)"
            )
        else:
            lines.append(f"strategy {self.result.strategy}: no labelled test split to score")
        free = self.result.label_free
        if free and free.get("criterion") and free.get("best") and free.get("source"):
            name = free["criterion"]
            lines.append(
                f"label-free {name} on the unlabelled validation split: source {free['source'][name]:.4f}, "
                f"adapted {free['best'][name]:.4f} (checkpoint at step {free['checkpoint_step']})"
            )
        b = self.result.budget
        if self.pretext is not None:
            sp = self.pretext
            loss = f", loss {sp.losses[0]:.4f} -> {sp.losses[-1]:.4f}" if sp.losses else ""
            eps = f", epsilon {sp.privacy.epsilon_spent:.3f}" if sp.privacy is not None else ""
            lines.append(
                f"self-pretraining ({sp.objective}): {sp.steps_applied} steps at batch {sp.batch_size} on "
                f"the unlabelled pool{loss}{eps}"
            )
        lines.append(f"budget: {self.result.steps_applied} of {b.steps} steps at batch {b.batch_size}, lr {b.lr:g}")
        p = self.result.privacy
        if p is not None:
            lines.append(
                f"privacy: epsilon spent {self.epsilon_spent:.3f} at delta {self.delta:.2e} (noise "
                f"{p.noise_multiplier:.3f}, clip {p.max_grad_norm:g}, "
                f"{'private selection' if self.search is not None and self.search.private else p.accountant})"
            )
            if self.budget is not None and self.budget.budget is not None:
                lines.append(
                    f"privacy budget for {self.dataset_id}: {self.budget.spent:.3f} of "
                    f"{self.budget.budget:.3f} spent, {self.budget.remaining:.3f} left"
                )
        if self.paths is not None and self.parity is not None:
            lines.append(
                f"wrote {self.paths.weights}, {self.paths.onnx} (onnxruntime max |diff| "
                f"{max(self.parity.max_abs_diff_logits, self.parity.max_abs_diff_features):.2e}), "
                f"{self.paths.metrics}"
            )
        return "\n".join(lines)


def _local_metrics(
    outcome_result: FinetuneResult,
    test: Metrics | None,
    found: SearchResult | LabelFreeSearch | None,
    epsilon: float | None,
) -> dict[str, Any]:
    """metrics.json: everything, exact (it never leaves the machine)."""
    r = outcome_result
    metrics: dict[str, Any] = {
        **(test.to_dict() if test else {}),
        "split": "test",
        "strategy": r.strategy,
        "hyperparameters": r.hyperparameters,
        "head_reset": r.head_reset,
        "steps_applied": r.steps_applied,
        "val": r.val_metrics.to_dict() if r.val_metrics else None,
        "privacy": dataclasses.asdict(r.privacy) if r.privacy else None,
    }
    if r.label_free is not None:
        metrics["label_free"] = r.label_free
    if found is not None:
        kind = (
            "label-free" if isinstance(found, LabelFreeSearch) else "private-selection" if found.private else "k-fold"
        )
        metrics["search"] = {
            "kind": kind,
            "rows": [
                {"strategy": row.strategy, "lr": row.lr, "scores": list(row.scores), "mean": row.mean}
                for row in found.rows
            ],
            "best": {"strategy": found.best.strategy, "lr": found.best.lr},
        }
        if found.selection is not None:
            metrics["search"]["selection"] = dataclasses.asdict(found.selection)
            metrics["search"]["trials"] = found.trials
        if epsilon is not None and metrics["privacy"] is not None:
            metrics["privacy"]["search_epsilon_total"] = epsilon
    return metrics


def adapt(
    model: XferModel,
    *,
    target: TargetData,
    config: FinetuneConfig,
    card: ModelCard | None = None,
    ledger: PrivacyLedger | None = None,
    dataset_id: str | None = None,
    out_dir: str | os.PathLike | None = None,
    on_progress: Callable[[RoundRecord], None] | None = None,
    on_row: Callable[[CVRow], None] | None = None,
) -> FinetuneOutcome:
    """Adapts `model` to `target` as `config` says (a search if `config.search`), scores it once on the test split.

    With `out_dir`, writes model.safetensors, model.onnx (parity-checked),
    metrics.json (exact, local) and card.json there. Under DP the ledger (if
    given) is charged for `dataset_id` (default: the target's own id).
    """
    started = time.perf_counter()
    if not isinstance(config, FinetuneConfig):
        raise FinetuneError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    dataset_id = dataset_id or target.dataset_id
    # One head of a multi-task source (or the model as it is), then optional self-pretraining of its body.
    chosen = select_head(model, card=card, head=config.head)
    model, card, run_config = chosen.model, chosen.card, config.replace(head=None)
    pretext = None
    if config.self_pretrain is not None:
        pretext = self_pretrain(
            model,
            data=pretext_pool(target),
            config=config.self_pretrain,
            privacy=config.privacy,
            device=config.device,
            seed=config.seed,
            ledger=ledger,
            dataset_id=dataset_id,
        )
        model = pretext.model
        run_config = run_config.replace(privacy=pretext.finetune_privacy, self_pretrain=None)
    found: SearchResult | LabelFreeSearch | None = None
    if uses_source_free(run_config):
        # Unlabelled adaptation (tent, shot, aad, nrc): label-free checkpoint and search (sfda_selection.py).
        free = run_source_free(
            model,
            target=target,
            config=run_config,
            card=card,
            ledger=ledger,
            dataset_id=dataset_id,
            on_progress=on_progress,
            on_row=on_row,
        )
        result, test_metrics, found = free.result, free.test_metrics, free.search
    elif config.search is not None:
        found = search(
            model,
            train=target.train,
            val=target.val,
            test=target.test,
            config=run_config,
            card=card,
            label_names=target.label_names,
            ledger=ledger,
            dataset_id=dataset_id,
            on_row=on_row,
        )
        result, test_metrics = found.final, found.test_metrics
    else:
        result = finetune(
            model,
            train=target.train,
            val=target.val,
            config=run_config,
            card=card,
            label_names=target.label_names,
            ledger=ledger,
            dataset_id=dataset_id,
            on_progress=on_progress,
        )
        test = target.test
        test_metrics = None
        if test is not None and len(test) and test.y is not None:
            test_metrics = evaluate(result.model, test.x, test.y, label_names=target.label_names)
    status = ledger.status(dataset_id) if ledger is not None and config.privacy is not None else None
    epsilon = found.epsilon_total if found is not None else None
    paths = parity = None
    if out_dir is not None:
        paths, parity = save_outputs(
            model=result.model,
            out_dir=out_dir,
            card=card,
            label_names=target.label_names,
            strategy=result.strategy,
            metrics=_local_metrics(result, test_metrics, found, epsilon),
        )
    return FinetuneOutcome(
        result=result,
        test_metrics=test_metrics,
        paths=paths,
        parity=parity,
        dataset_id=dataset_id,
        search=found,
        budget=status,
        wall_seconds=time.perf_counter() - started,
        config=config,
        pretext=pretext,
        head=chosen.head,
    )
