"""The training loop that executes a strategy's plan, with or without DP.

The budget is a number of optimizer steps (`budget.plan_budget`), not of
epochs: every strategy gets enough updates on 50 examples and the usual
passes on 50,000. Built for throughput on small models: the whole data set
lives on the device as tensors and batches are gathered by index (no
per-example collation), the running loss stays on the device (one host sync
per evaluation, not per step), and the LR schedule is a cheap per-group
multiply. A run that applied no optimizer step raises: it is never a result.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from xfer.client.finetune.budget import Budget, plan_budget
from xfer.client.finetune.config import FinetuneConfig, PrivacyConfig
from xfer.client.finetune.data import TensorData
from xfer.client.finetune.devices import DeviceSetup, autocast, resolve_device, seed_everything, to_device
from xfer.client.finetune.errors import DataError, DivergedError, FinetuneError, StrategyError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate
from xfer.client.finetune.privacy import AccountedRun, PrivacyReport, PrivateRun, make_compatible
from xfer.client.finetune.schedules import get_schedule
from xfer.client.finetune.sfda_strategies import SourceFreeStrategy
from xfer.client.finetune.standardize import fold_head, standardize_head
from xfer.client.finetune.strategies import (
    AutoRGN,
    Phase,
    get_strategy,
    relative_gradient_norms,
    rgn_lr_scales,
)
from xfer.client.targets import numbered_label_names
from xfer.models.base import XferModel
from xfer.models.card import ModelCard
from xfer.models.multitask import select_head

log = logging.getLogger(__name__)

#: Training examples the source model is run on to tell inputs it overflows on from a too-large step.
DIVERGENCE_SAMPLE = 1024


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """One evaluation point: every `eval_every` steps and at the end of every phase."""

    phase: str
    step: int  # optimizer steps done so far, over all phases
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    #: Source-free runs: every label-free criterion on the unlabelled validation split (higher is better).
    label_free: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class GroupRecord:
    """An optimizer parameter group as trained: its base LR (before the schedule)."""

    phase: str
    name: str
    params: tuple[str, ...]
    lr: float


@dataclasses.dataclass
class FinetuneResult:
    """Everything a fine-tuning run produced. `model` is the chosen checkpoint, on the CPU, in eval mode."""

    model: XferModel
    strategy: str
    #: The run's settings as reported: every value a function of the config and the size bucket.
    hyperparameters: dict[str, str]
    label_names: tuple[str, ...]
    head_reset: bool
    history: list[RoundRecord]
    #: Steps done when the kept checkpoint was taken (the last step without a validation split).
    best_step: int
    groups: list[GroupRecord]
    #: Auto-RGN only: per evaluation round, parameter name -> LR scale (RGN / max RGN) at its first step.
    rgn_scales: list[dict[str, float]]
    privacy: PrivacyReport | None
    #: The DP accountant history [(noise_multiplier, sample_rate, steps)]; empty without DP.
    dp_history: list[tuple[float, float, int]]
    val_metrics: Metrics | None
    train_examples: int
    budget: Budget
    steps_applied: int
    device_kind: str
    wall_seconds: float
    train_seconds: float
    examples_seen: int
    #: Source-free runs: the criterion, its value at the source and at the kept checkpoint, diagnostics (local only).
    label_free: dict[str, Any] | None = None


def needs_head_reset(model: XferModel, *, label_names: Sequence[str], card: ModelCard | None) -> bool:
    """True when the target's label count, or (known) label set/order, differs from the source's."""
    if len(label_names) != model.num_classes:
        return True
    return bool(card is not None and card.label_names and tuple(card.label_names) != tuple(label_names))


@torch.no_grad()
def _explain_divergence(source: XferModel, x: torch.Tensor, *, lr: float, strategy: str) -> None:
    """Raises why training left NaN or infinite weights: inputs the source model overflows on, or the step size."""
    was_training = source.training
    source.eval()
    try:
        sample = x[:DIVERGENCE_SAMPLE].cpu()
        outputs = torch.cat([source(sample[i : i + 256]) for i in range(0, len(sample), 256)])
    finally:
        source.train(was_training)
    bad = ~torch.isfinite(outputs).all(dim=1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise DataError(
            f"the source model's outputs are NaN or infinite on {int(bad.sum())} of the first {len(sample)} "
            f"training examples (rows {rows}; inputs reach {float(sample.abs().max()):.3g} after the card's "
            f"normalisation); check their scale: images are pixels in [0, 1]"
        )
    raise DivergedError(
        f"{strategy} diverged: training left NaN or infinite weights at learning rate {lr:g}; lower it (--lr)"
    )


def _labels(data: TensorData, purpose: str, strategy: str) -> torch.Tensor:
    y = getattr(data, "y", None)
    if y is None:
        from xfer.client.finetune.sfda_strategies import SOURCE_FREE

        raise DataError(
            f"{purpose} with {strategy} needs labelled examples, but these have no labels (an "
            f"'unlabeled' data spec, an .npz without 'y' or an image folder without class sub-folders). "
            f"Adapt without labels with a source-free strategy ({', '.join(SOURCE_FREE)}: e.g. "
            f"--strategy shot), or give labels"
        )
    return y


def finetune(
    model: XferModel,
    *,
    train: TensorData,
    val: TensorData | None = None,
    config: FinetuneConfig | None = None,
    card: ModelCard | None = None,
    label_names: Sequence[str] | None = None,
    ledger: PrivacyLedger | None = None,
    dataset_id: str | None = None,
    on_progress: Callable[[RoundRecord], None] | None = None,
    bucket: int | None = None,
    noise_multiplier: float | None = None,
) -> FinetuneResult:
    """Adapts a copy of `model` to `train` as `config` says, optionally under DP-SGD.

    `model` itself is left untouched. The head is re-initialised when the
    target's labels (`label_names`, default 0..max(y)) differ from the
    card's, or when `config.reinit_head`. With `val`, training keeps the
    checkpoint of lowest validation loss and, with `config.patience`, stops a
    phase after that many evaluations without improvement; with `val=None`
    (few-label mode: all labels are training data) the last step is kept.
    With `config.privacy`, training is DP-SGD with σ solved for the target ε
    over the whole plan; with a `ledger` the target ε is charged to
    `dataset_id` before training (refused past `config.privacy.budget`) and
    settled to the ε actually spent afterwards. `bucket` plans the budget for
    that size bucket instead of the training set's own, and `noise_multiplier`
    fixes σ (both used by a search, whose runs train on parts of the data).
    """
    started = time.perf_counter()
    config = config if config is not None else FinetuneConfig()
    if config.self_pretrain is not None:
        raise FinetuneError(
            "self-pretraining needs the unlabelled pool: run it with adapt(), or call "
            "xfer.client.finetune.selfsup.self_pretrain first and fine-tune its model"
        )
    setup = resolve_device(config.device)
    seed_everything(config.seed)
    strat = get_strategy(config.strategy)
    if isinstance(strat, SourceFreeStrategy):
        from xfer.client.finetune.sfda import adapt_source_free

        return adapt_source_free(
            model,
            train=train,
            val=val,
            config=config,
            card=card,
            label_names=label_names,
            ledger=ledger,
            dataset_id=dataset_id,
            on_progress=on_progress,
            bucket=bucket,
        )
    sched = get_schedule(config.schedule)
    y_train = _labels(train, "fine-tuning", strat.label)
    n = len(train)
    if n == 0:
        raise DataError("the training set is empty")
    if val is not None and len(val) == 0:
        val = None
    y_val = _labels(val, "validation", strat.label) if val is not None else None
    if config.patience is not None and val is None:
        raise FinetuneError(
            "patience (early stopping) needs a validation split; without one (few-label mode) "
            "train a fixed step budget, or choose it with a search (k-fold within the labels)"
        )
    label_names = (
        tuple(label_names)
        if label_names is not None
        else numbered_label_names(y_train.cpu().numpy(), None if y_val is None else y_val.cpu().numpy(), where="labels")
    )
    for split, labels in (("training", y_train), ("validation", y_val)):
        if labels is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(label_names)):
            raise DataError(f"{split} labels out of range 0..{len(label_names) - 1} ({len(label_names)} label names)")
    budget = plan_budget(n=n, config=config, strategy_lr=strat.default_lr, bucket=bucket, strategy_clip=strat.dp_clip)

    # A multi-task source trains one of its heads (config.head, default its first); the others are dropped.
    chosen = select_head(model, card=card, head=config.head)
    model, card = chosen.model, chosen.card
    work = copy.deepcopy(model)
    head_reset = config.reinit_head or needs_head_reset(work, label_names=label_names, card=card)
    if head_reset:
        work.reset_head(len(label_names), generator=torch.Generator().manual_seed(config.seed))
    if config.privacy is not None:
        work = make_compatible(work)
    work.to(setup.device)
    work.train()
    x, y = to_device(train.x, setup), to_device(y_train, setup)
    standardized = head_reset and config.privacy is None and strat.probe_on_standardized_features
    if standardized:
        standardize_head(work, x)
    phases = strat.plan(work, lr=budget.lr, steps=budget.steps, head_reset=head_reset)
    for phase in phases:
        if not phase.trainable():
            raise StrategyError(
                f"{strat.label}: phase {phase.name!r} trains no parameters; pick a block that has "
                f"some (see the card's blocks) or another strategy"
            )
    names = {id(p): name for name, p in work.named_parameters()}

    xv = yv = None
    if val is not None and y_val is not None:
        xv, yv = to_device(val.x, setup), to_device(y_val, setup)

    run: PrivateRun | None = None
    accounted: AccountedRun | None = None
    if config.privacy is not None:
        accounted = AccountedRun.start(
            config.privacy,
            budget=budget,
            n=n,
            seed=config.seed,
            device=setup.device,
            ledger=ledger,
            dataset_id=dataset_id,
            note=f"finetune {strat.label}",
            noise_multiplier=noise_multiplier,
        )
        run, dp_plan = accounted.run, accounted.plan
        log.info(
            "DP-SGD: noise multiplier %.3f, sample rate %.4f, %d steps, delta %.2e",
            dp_plan.noise_multiplier,
            dp_plan.sample_rate,
            dp_plan.steps,
            dp_plan.delta,
        )

    momentum = strat.momentum if isinstance(strat, AutoRGN) else 0.0
    loop = _Loop(
        work=work,
        setup=setup,
        x=x,
        y=y,
        xv=xv,
        yv=yv,
        budget=budget,
        sched=sched,
        weight_decay=config.weight_decay,
        patience=config.patience,
        run=run,
        seed=config.seed,
        names=names,
        rgn_momentum=momentum,
        on_progress=on_progress,
    )
    train_started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Opacus' per-sample hooks on the first trainable layer trigger this torch notice on every
            # backward when the input needs no gradient; it is expected and harmless here.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for phase in phases:
                loop.run_phase(phase)
    finally:
        for p in work.parameters():
            p.requires_grad_(True)
    train_seconds = time.perf_counter() - train_started
    if loop.steps_applied == 0:
        raise FinetuneError(
            f"{strat.label} applied no optimizer step, so the result would be the source model "
            f"unchanged; raise the step budget"
        )

    if loop.best_state is not None:
        work.load_state_dict(loop.best_state)
    if not all(torch.isfinite(t).all() for t in work.state_dict().values() if t.is_floating_point()):
        _explain_divergence(model, x, lr=budget.lr, strategy=strat.label)
    fold_head(work)
    work.cpu().eval()

    report = None
    history: list[tuple[float, float, int]] = []
    if accounted is not None:
        history = accounted.run.history()
        report = accounted.finish(ledger=ledger, dataset_id=dataset_id)

    val_metrics = None
    if val is not None and y_val is not None:
        val_metrics = evaluate(work, val.x, y_val, label_names=label_names)
    hyper = {
        "lr": f"{budget.lr:g}",
        "steps": str(budget.steps),
        "batch_size": str(budget.batch_size),
        "eval_every": str(budget.eval_every),
        "schedule": config.schedule,
        "weight_decay": f"{config.weight_decay:g}",
        "head_reset": str(head_reset).lower(),
        "seed": str(config.seed),
        **strat.hyperparameters(),
    }
    if standardized:
        hyper["head_features"] = "standardized"
    if config.patience is not None:
        hyper["patience"] = str(config.patience)
    if chosen.head is not None:
        hyper["head"] = chosen.head
    return FinetuneResult(
        model=work,
        strategy=strat.label,
        hyperparameters=hyper,
        label_names=label_names,
        head_reset=head_reset,
        history=loop.history,
        best_step=loop.best_step,
        groups=loop.groups,
        rgn_scales=loop.rgn_scales,
        privacy=report,
        dp_history=history,
        val_metrics=val_metrics,
        train_examples=n,
        budget=budget,
        steps_applied=loop.steps_applied,
        device_kind=setup.kind,
        wall_seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        examples_seen=loop.examples_seen,
    )


class _Loop:
    """State shared across the phases of one run (best checkpoint, history, RNG, batch stream)."""

    def __init__(
        self,
        *,
        work: XferModel,
        setup: DeviceSetup,
        x: torch.Tensor,
        y: torch.Tensor,
        xv: torch.Tensor | None,
        yv: torch.Tensor | None,
        budget: Budget,
        sched: Callable[[int, int], float],
        weight_decay: float,
        patience: int | None,
        run: PrivateRun | None,
        seed: int,
        names: dict[int, str],
        rgn_momentum: float,
        on_progress: Callable[[RoundRecord], None] | None,
    ) -> None:
        self.work, self.setup, self.x, self.y, self.xv, self.yv = work, setup, x, y, xv, yv
        self.budget, self.sched, self.weight_decay, self.patience = budget, sched, weight_decay, patience
        self.run, self.names, self.rgn_momentum, self.on_progress = run, names, rgn_momentum, on_progress
        # Shuffling and Poisson sampling draw from their own CPU generator: repeatable on any device.
        self.generator = torch.Generator().manual_seed(seed)
        self.criterion = nn.CrossEntropyLoss()
        self.history: list[RoundRecord] = []
        self.groups: list[GroupRecord] = []
        self.rgn_scales: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_loss = math.inf
        self.best_step = 0
        self.step = 0
        self.steps_applied = 0
        self.examples_seen = 0
        self._order: torch.Tensor | None = None
        self._pos = 0

    def _optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        if phase.rgn:
            merged = [(g.name, list(g.params), g.lr_scale) for g in phase.groups]
        else:
            # Blocks that share an LR share one optimizer group: fewer groups, less per-step overhead.
            by_scale: dict[float, tuple[list[str], list[nn.Parameter]]] = {}
            for g in phase.groups:
                group_names, params = by_scale.setdefault(g.lr_scale, ([], []))
                group_names.append(g.name)
                params.extend(g.params)
            merged = [("+".join(group_names), params, scale) for scale, (group_names, params) in by_scale.items()]
        groups = [
            {"params": params, "lr": phase.lr * scale, "base_lr": phase.lr * scale, "name": name}
            for name, params, scale in merged
        ]
        return torch.optim.AdamW(groups, lr=phase.lr, weight_decay=self.weight_decay)

    def _next_batch(self) -> torch.Tensor:
        n = len(self.y)
        if self.run is not None:
            return self.run.poisson_batch(self.generator)
        # Without DP: consecutive slices of reshuffled passes over the data (the last slice of a pass may be
        # shorter); a batch size above n gives full-batch steps.
        if self._order is None or self._pos >= n:
            self._order = torch.randperm(n, generator=self.generator)
            if self.setup.kind != "cpu":
                self._order = self._order.to(self.setup.device, non_blocking=True)  # one copy per pass
            self._pos = 0
        batch = self._order[self._pos : self._pos + self.budget.batch_size]
        self._pos += self.budget.batch_size
        return batch

    def run_phase(self, phase: Phase) -> None:
        trainable = phase.trainable()
        for p in self.work.parameters():
            p.requires_grad_(id(p) in trainable)
        optimizer = self._optimizer(phase)
        opt: Any  # under DP an Opacus DPOptimizer (pre_step, original_optimizer)
        net, opt, criterion = self.work, optimizer, self.criterion
        if self.run is not None:
            net, opt, criterion = self.run.wrap(self.work, optimizer, self.criterion)
        dp = self.run is not None
        amp = not dp  # per-sample gradient norms for clipping stay in full precision
        groups = opt.param_groups
        rgn_params = [p for g in groups for p in g["params"]] if phase.rgn else []
        rgn_avg: list[torch.Tensor] | None = None
        stale = 0
        loss_sum = torch.zeros((), device=self.setup.device)
        seen = 0
        round_start = True
        try:
            for step in range(phase.steps):
                factor = self.sched(step, phase.steps)
                idx = self._next_batch()
                empty = dp and idx.numel() == 0
                if empty:
                    # An empty Poisson batch must still be a (noise-only) step for the accounting to
                    # hold: one example with zero loss weight contributes a zero gradient.
                    idx = torch.zeros(1, dtype=torch.long)
                if idx.device != self.x.device:
                    idx = idx.to(self.x.device, non_blocking=True)
                xb, yb = self.x[idx], self.y[idx]
                with autocast(self.setup, enabled=amp):
                    loss = criterion(net(xb), yb)
                if empty:
                    loss = loss * 0.0
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if phase.rgn:
                    # Clip + noise (+ accounting) first: the RGN sees only privatised gradients, and the
                    # step that measured it is the step that applies it.
                    if dp and not opt.pre_step():
                        continue
                    rgn_avg = self._update_rgn(phase, groups, rgn_params, rgn_avg, step, record=round_start)
                    round_start = False
                for g in groups:
                    g["lr"] = g["base_lr"] * factor
                if phase.rgn and dp:
                    opt.original_optimizer.step()
                else:
                    opt.step()
                self.step += 1
                self.steps_applied += 1
                if not empty:
                    size = len(idx)
                    loss_sum.add_(loss.detach(), alpha=size)  # stays on the device: no per-step sync
                    seen += size
                last = step == phase.steps - 1
                if self.step % self.budget.eval_every == 0 or last:
                    improved = self._evaluate(phase, loss_sum, seen)
                    self.examples_seen += seen
                    loss_sum, seen, round_start = torch.zeros((), device=self.setup.device), 0, True
                    stale = 0 if improved else stale + 1
                    if self.xv is not None and self.patience is not None and stale >= self.patience and not last:
                        log.info("early stop in phase %s after step %d", phase.name, self.step)
                        break
        finally:
            if self.run is not None:
                self.run.unwrap(net)
            final_lr = {id(p): g["base_lr"] for g in groups for p in g["params"]}
            for g in phase.groups:
                self.groups.append(
                    GroupRecord(
                        phase.name, g.name, tuple(self.names[id(p)] for p in g.params), final_lr[id(g.params[0])]
                    )
                )

    @torch.no_grad()
    def _update_rgn(
        self,
        phase: Phase,
        groups: list[dict],
        params: list[nn.Parameter],
        avg: list[torch.Tensor] | None,
        step: int,
        *,
        record: bool,
    ) -> list[torch.Tensor]:
        beta = self.rgn_momentum
        grads = [
            p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32) for p in params
        ]
        avg = (
            [g.clone() for g in grads]
            if avg is None
            else [a.mul_(beta).add_(g, alpha=1 - beta) for a, g in zip(avg, grads)]
        )
        correction = 1.0 - beta ** (step + 1)
        scales = rgn_lr_scales(relative_gradient_norms(params, [a / correction for a in avg]))
        # One tensor per group (AutoRGN.plan), so group order matches the RGN list.
        for g, scale in zip(groups, scales):
            g["base_lr"] = phase.lr * scale
        if record:
            self.rgn_scales.append({g["name"]: s for g, s in zip(groups, scales)})
        return avg

    @torch.no_grad()
    def _evaluate(self, phase: Phase, loss_sum: torch.Tensor, seen: int) -> bool:
        """Records a round; keeps the checkpoint if it is the best so far. True when it improved."""
        train_loss = float(loss_sum) / max(seen, 1)
        val_loss = val_acc = None
        if self.xv is not None and self.yv is not None:
            self.work.eval()
            logits = torch.cat([self.work(self.xv[i : i + 1024]).float() for i in range(0, len(self.xv), 1024)])
            val_loss = float(nn.functional.cross_entropy(logits, self.yv))
            val_acc = float((logits.argmax(1) == self.yv).float().mean())
            self.work.train()
        # Without a validation split the last step is kept (train loss is no guide to generalisation);
        # NaN never counts as an improvement.
        improved = self.xv is None or (val_loss is not None and val_loss < self.best_loss)
        if improved:
            self.best_loss = val_loss if val_loss is not None else self.best_loss
            self.best_step = self.step
            self.best_state = {k: v.detach().clone() for k, v in self.work.state_dict().items()}
        record = RoundRecord(phase.name, self.step, train_loss, val_loss, val_acc)
        self.history.append(record)
        log.debug("step %d (%s): %s", self.step, phase.name, record)
        if self.on_progress is not None:
            self.on_progress(record)
        return improved


__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "GroupRecord",
    "PrivacyConfig",
    "RoundRecord",
    "finetune",
    "needs_head_reset",
]
