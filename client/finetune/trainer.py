"""The training loop that executes a strategy's plan, with or without DP.

Built for throughput on small models: the whole data set lives on the
device as tensors and batches are gathered by index (no per-example
collation), the running loss stays on the device (one host sync per epoch,
not per step), and the LR schedule is a cheap per-group multiply.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from xfer.client.finetune.data import TensorData
from xfer.client.finetune.devices import (
    DeviceSetup,
    autocast,
    resolve_device,
    seed_everything,
    to_device,
)
from xfer.client.finetune.errors import DataError, FinetuneError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate
from xfer.client.finetune.privacy import (
    DPPlan,
    PrivacyConfig,
    PrivacyReport,
    PrivateRun,
    make_compatible,
    plan_dp,
    steps_per_epoch,
)
from xfer.client.finetune.schedules import get_schedule
from xfer.client.finetune.strategies import (
    AutoRGN,
    Phase,
    Strategy,
    get_strategy,
    relative_gradient_norms,
    rgn_lr_scales,
)
from xfer.models.base import XferModel
from xfer.models.card import ModelCard

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    phase: str
    epoch: int  # global, from 1
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None


@dataclasses.dataclass(frozen=True)
class GroupRecord:
    """An optimizer parameter group as trained: its base LR (before the schedule)."""

    phase: str
    name: str
    params: tuple[str, ...]
    lr: float


@dataclasses.dataclass
class FinetuneResult:
    """Everything a fine-tuning run produced. `model` is the best checkpoint, on the CPU, in eval mode."""

    model: XferModel
    strategy: str
    hyperparameters: dict[str, str]
    label_names: tuple[str, ...]
    head_reset: bool
    history: list[EpochRecord]
    best_epoch: int
    groups: list[GroupRecord]
    #: Auto-RGN only: per epoch, parameter name -> LR scale (RGN / max RGN).
    rgn_scales: list[dict[str, float]]
    privacy: PrivacyReport | None
    #: The DP accountant history [(noise_multiplier, sample_rate, steps)]; empty without DP.
    dp_history: list[tuple[float, float, int]]
    val_metrics: Metrics | None
    train_examples: int
    device_kind: str
    wall_seconds: float
    train_seconds: float
    examples_seen: int


def needs_head_reset(model: XferModel, *, label_names: Sequence[str], card: ModelCard | None) -> bool:
    """True when the target's label count, or (known) label set/order, differs from the source's."""
    if len(label_names) != model.num_classes:
        return True
    return bool(card is not None and card.label_names and tuple(card.label_names) != tuple(label_names))


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def finetune(
    model: XferModel,
    *,
    train: TensorData,
    val: TensorData | None = None,
    strategy: str | Strategy = "lp-ft",
    label_names: Sequence[str] | None = None,
    card: ModelCard | None = None,
    privacy: PrivacyConfig | None = None,
    lr: float | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    patience: int | None = None,
    reinit_head: bool = False,
    device: str | DeviceSetup = "auto",
    seed: int = 0,
    ledger: PrivacyLedger | None = None,
    dataset_id: str | None = None,
    privacy_budget: float | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FinetuneResult:
    """Adapts a copy of `model` to `train` with a named strategy, optionally under DP-SGD.

    `model` itself is left untouched. The head is re-initialised when the
    target's labels (`label_names`, default 0..max(y)) differ from the
    card's, or when `reinit_head`. With `val`, training keeps the checkpoint
    of lowest validation loss and stops after `patience` epochs (per phase)
    without improvement. With `privacy`, training is DP-SGD with the noise
    solved for the target ε over the whole plan; with a `ledger` the target ε
    is charged to `dataset_id` before training (refused past
    `privacy_budget`) and settled to the ε actually spent afterwards.
    """
    started = time.perf_counter()
    if epochs < 1 or batch_size < 1:
        raise FinetuneError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    setup = device if isinstance(device, DeviceSetup) else resolve_device(device)
    seed_everything(seed)
    strat = get_strategy(strategy)
    lr = float(lr) if lr is not None else strat.default_lr
    sched = get_schedule(schedule)
    n = len(train)
    if label_names is None:
        top = int(train.y.max()) if val is None else max(int(train.y.max()), int(val.y.max()))
        label_names = tuple(str(i) for i in range(top + 1))
    label_names = tuple(label_names)
    for split, data in (("training", train), ("validation", val)):
        if data is not None and len(data) and (int(data.y.min()) < 0 or int(data.y.max()) >= len(label_names)):
            raise DataError(f"{split} labels out of range 0..{len(label_names) - 1} ({len(label_names)} label names)")

    work = copy.deepcopy(model)
    head_reset = reinit_head or needs_head_reset(work, label_names=label_names, card=card)
    if head_reset:
        work.reset_head(len(label_names), generator=torch.Generator().manual_seed(seed))
    if privacy is not None:
        work = make_compatible(work)
    work.to(setup.device)
    work.train()
    phases = strat.plan(work, lr=lr, epochs=epochs, head_reset=head_reset)
    names = _param_names(work)

    x, y = to_device(train.x, setup), to_device(train.y, setup)
    xv = yv = None
    if val is not None and len(val):
        xv, yv = to_device(val.x, setup), to_device(val.y, setup)

    run: PrivateRun | None = None
    dp_plan: DPPlan | None = None
    entry = None
    if privacy is not None:
        dp_plan = plan_dp(privacy, n=n, batch_size=batch_size, epochs=sum(p.epochs for p in phases))
        run = PrivateRun(dp_plan, n=n, batch_size=batch_size, seed=seed, device=setup.device)
        if ledger is not None:
            if not dataset_id:
                raise FinetuneError("a privacy ledger needs the dataset_id to charge")
            # Reserved up front and kept in full if training fails midway: part of it may be spent.
            entry = ledger.charge(dataset_id, epsilon=dp_plan.target_epsilon, delta=dp_plan.delta,
                                  budget=privacy_budget, note=f"finetune {strat.label}")
        log.info("DP-SGD: noise multiplier %.3f, sample rate %.4f, %d steps, delta %.2e", dp_plan.noise_multiplier,
                 dp_plan.sample_rate, dp_plan.steps, dp_plan.delta)

    loop = _Loop(work=work, setup=setup, x=x, y=y, xv=xv, yv=yv, batch_size=batch_size, sched=sched,
                 weight_decay=weight_decay, patience=patience, run=run, seed=seed, names=names,
                 probe_batches=strat.probe_batches if isinstance(strat, AutoRGN) else 0, on_epoch=on_epoch)
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

    if loop.best_state is not None:
        work.load_state_dict(loop.best_state)
    work.cpu().eval()

    report = None
    history: list[tuple[float, float, int]] = []
    if run is not None and dp_plan is not None:
        history = run.history()
        spent = run.epsilon_spent()
        report = PrivacyReport(spent, dp_plan.delta, dp_plan.noise_multiplier, dp_plan.max_grad_norm,
                               dp_plan.sample_rate, run.steps_taken, dp_plan.accountant, dp_plan.target_epsilon,
                               dp_plan.ghost_clipping)
        if ledger is not None and entry is not None:
            ledger.settle(dataset_id, entry.entry_id, epsilon=spent, delta=dp_plan.delta)

    val_metrics = None
    if val is not None and len(val):
        val_metrics = evaluate(work, val.x, val.y, label_names=label_names)
    hyper = {"lr": f"{lr:g}", "epochs": str(epochs), "batch_size": str(batch_size), "schedule": schedule,
             "weight_decay": f"{weight_decay:g}", "head_reset": str(head_reset).lower(), "seed": str(seed),
             **strat.hyperparameters()}
    if patience is not None:
        hyper["patience"] = str(patience)
    return FinetuneResult(
        model=work, strategy=strat.label, hyperparameters=hyper, label_names=label_names, head_reset=head_reset,
        history=loop.history, best_epoch=loop.best_epoch, groups=loop.groups, rgn_scales=loop.rgn_scales,
        privacy=report, dp_history=history, val_metrics=val_metrics, train_examples=n, device_kind=setup.kind,
        wall_seconds=time.perf_counter() - started, train_seconds=train_seconds, examples_seen=loop.examples_seen,
    )


class _Loop:
    """State shared across the phases of one run (best checkpoint, history, RNG)."""

    def __init__(self, *, work: XferModel, setup: DeviceSetup, x: torch.Tensor, y: torch.Tensor,
                 xv: torch.Tensor | None, yv: torch.Tensor | None, batch_size: int, sched, weight_decay: float,
                 patience: int | None, run: PrivateRun | None, seed: int, names: dict[int, str],
                 probe_batches: int, on_epoch) -> None:
        self.work, self.setup, self.x, self.y, self.xv, self.yv = work, setup, x, y, xv, yv
        self.batch_size, self.sched, self.weight_decay, self.patience = batch_size, sched, weight_decay, patience
        self.run, self.names, self.probe_batches, self.on_epoch = run, names, probe_batches, on_epoch
        # Shuffling and Poisson sampling draw from their own CPU generator: repeatable on any device.
        self.generator = torch.Generator().manual_seed(seed)
        self.criterion = nn.CrossEntropyLoss()
        self.history: list[EpochRecord] = []
        self.groups: list[GroupRecord] = []
        self.rgn_scales: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_loss = math.inf
        self.best_epoch = 0
        self.epoch = 0
        self.examples_seen = 0

    def _optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        if phase.rgn:
            merged = [(g.name, list(g.params), g.lr_scale) for g in phase.groups]
        else:
            # Blocks that share an LR share one optimizer group: fewer groups, less per-step overhead.
            by_scale: dict[float, tuple[list[str], list[nn.Parameter]]] = {}
            for g in phase.groups:
                names, params = by_scale.setdefault(g.lr_scale, ([], []))
                names.append(g.name)
                params.extend(g.params)
            merged = [("+".join(names), params, scale) for scale, (names, params) in by_scale.items()]
        groups = [{"params": params, "lr": phase.lr * scale, "base_lr": phase.lr * scale, "name": name}
                  for name, params, scale in merged]
        return torch.optim.AdamW(groups, lr=phase.lr, weight_decay=self.weight_decay)

    def _batches(self, n: int) -> list[torch.Tensor]:
        if self.run is not None:
            return [self.run.poisson_batch(self.generator) for _ in range(steps_per_epoch(n, self.batch_size))]
        order = torch.randperm(n, generator=self.generator)
        if self.setup.kind != "cpu":
            order = order.to(self.setup.device, non_blocking=True)  # one copy per epoch, not one per step
        return list(order.split(self.batch_size))

    def run_phase(self, phase: Phase) -> None:
        trainable = phase.trainable()
        for p in self.work.parameters():
            p.requires_grad_(id(p) in trainable)
        optimizer = self._optimizer(phase)
        net, opt, criterion = self.work, optimizer, self.criterion
        if self.run is not None:
            net, opt, criterion = self.run.wrap(self.work, optimizer, self.criterion)
        n = len(self.y)
        per_epoch = steps_per_epoch(n, self.batch_size)
        total = per_epoch * phase.epochs
        step = 0
        stale = 0
        amp = self.run is None  # per-sample gradient norms for clipping stay in full precision
        dp = self.run is not None
        groups = opt.param_groups
        try:
            for _ in range(phase.epochs):
                self.epoch += 1
                net.train()
                loss_sum = torch.zeros((), device=self.setup.device)
                seen = 0
                rgn_sum: list[float] | None = None
                rgn_count = 0
                for i, idx in enumerate(self._batches(n)):
                    factor = self.sched(step, total)
                    step += 1
                    for g in groups:
                        g["lr"] = g["base_lr"] * factor
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
                    if phase.rgn and i < self.probe_batches:
                        if dp:
                            opt.pre_step()  # clip + noise (+ accounting): RGN sees only privatised gradients
                        rgn = relative_gradient_norms([p for g in groups for p in g["params"]])
                        rgn_sum = rgn if rgn_sum is None else [a + b for a, b in zip(rgn_sum, rgn)]
                        rgn_count += 1
                        if i == min(self.probe_batches, per_epoch) - 1:
                            self._apply_rgn(phase, groups, [r / rgn_count for r in rgn_sum])
                        opt.zero_grad(set_to_none=True)
                        continue
                    opt.step()
                    if not empty:
                        size = len(idx)
                        loss_sum.add_(loss.detach(), alpha=size)  # stays on the device: no per-step sync
                        seen += size
                self.examples_seen += seen
                stop = self._end_epoch(phase, loss_sum, seen)
                stale = 0 if self.best_epoch == self.epoch else stale + 1
                if stop and self.patience is not None and stale >= self.patience:
                    log.info("early stop in phase %s after epoch %d", phase.name, self.epoch)
                    break
        finally:
            if self.run is not None:
                self.run.unwrap(net)
            names = self.names
            final_lr = {id(p): g["base_lr"] for g in groups for p in g["params"]}
            for g in phase.groups:
                self.groups.append(GroupRecord(phase.name, g.name, tuple(names[id(p)] for p in g.params),
                                               final_lr[id(g.params[0])]))

    def _apply_rgn(self, phase: Phase, groups: list[dict], rgn: list[float]) -> None:
        # One tensor per group (AutoRGN.plan), so group order matches the RGN list.
        scales = rgn_lr_scales(rgn)
        for g, scale in zip(groups, scales):
            g["base_lr"] = phase.lr * scale
        self.rgn_scales.append({g["name"]: s for g, s in zip(groups, scales)})

    @torch.no_grad()
    def _end_epoch(self, phase: Phase, loss_sum: torch.Tensor, seen: int) -> bool:
        train_loss = float(loss_sum) / max(seen, 1)
        val_loss = val_acc = None
        if self.xv is not None:
            self.work.eval()
            logits = torch.cat([self.work(self.xv[i:i + 1024]).float() for i in range(0, len(self.xv), 1024)])
            val_loss = float(nn.functional.cross_entropy(logits, self.yv))
            val_acc = float((logits.argmax(1) == self.yv).float().mean())
            self.work.train()
            monitored = val_loss
        else:
            monitored = train_loss
        # Without a validation set the last epoch is kept (train loss is no guide to generalisation).
        if self.xv is None or monitored < self.best_loss:
            self.best_loss = monitored
            self.best_epoch = self.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.work.state_dict().items()}
        record = EpochRecord(phase.name, self.epoch, train_loss, val_loss, val_acc)
        self.history.append(record)
        log.debug("epoch %d (%s): %s", self.epoch, phase.name, record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        return self.xv is not None
