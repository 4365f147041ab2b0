"""The source-free training loop: adapt a model to unlabelled data with TENT, SHOT, AaD or NRC.

`adapt_source_free` is `trainer.finetune`'s counterpart for the strategies
of `sfda_strategies`: the same frozen config, step budget
(`budget.plan_budget`, a function of the size bucket), optimizer (AdamW),
schedules, device handling and result type, but a loss that reads no label.
Labels are removed from the training and validation splits before anything
else happens, so nothing downstream can use them.

The checkpoint is chosen label-free: every `eval_every` steps the model's
predictions on the *unlabelled* validation split are scored by every
criterion of `sfda_criteria`, and the checkpoint with the best
`config.criterion` is kept (without a validation split, the last step). A
checkpoint is never the source model itself: a run that applied no step is
an error, as everywhere in the engine.

DP: only a loss that is a mean of per-example terms can be clipped per
example. TENT's entropy is; it runs under Opacus DP-SGD with the same
Poisson sampling, noise plan and ledger as supervised runs. SHOT, AaD and NRC
couple examples (a batch-level diversity term, centroids, a bank of every
example's features), so `--dp-epsilon` is refused with the reason.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from xfer.client.finetune.budget import Budget, default_batch_size, passes_to_steps, plan_budget, size_bucket
from xfer.client.finetune.config import FinetuneConfig
from xfer.client.finetune.data import TensorData
from xfer.client.finetune.devices import autocast, resolve_device, seed_everything, to_device
from xfer.client.finetune.errors import (
    DataError,
    DPUnsupportedError,
    FinetuneError,
    PrivacyError,
    SearchError,
    StrategyError,
)
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.metrics import predict_logits
from xfer.client.finetune.privacy import AccountedRun, PrivateRun, make_compatible
from xfer.client.finetune.schedules import get_schedule
from xfer.client.finetune.sfda_criteria import score_all
from xfer.client.finetune.sfda_strategies import SOURCE_FREE, Objective, SourceFreeStrategy
from xfer.client.finetune.strategies import Phase, get_strategy
from xfer.client.finetune.trainer import FinetuneResult, GroupRecord, RoundRecord
from xfer.models.base import XferModel
from xfer.models.card import ModelCard

log = logging.getLogger(__name__)

#: Called after each evaluation with the record and the model (in eval mode; do not modify it). Used by
#: benchmarks to measure how a criterion tracks accuracy; the engine itself never scores labels.
EvaluateHook = Callable[[RoundRecord, XferModel], None]


def source_free_config(config: FinetuneConfig, strategy: SourceFreeStrategy, *, bucket: int) -> FinetuneConfig:
    """`config` with the strategy's default budget filled in when the caller gave none.

    A strategy with `default_passes` (TENT: one pass, each example seen once)
    gets that many passes over the size bucket, at most `reset_every` steps,
    so a default run never needs an RDumb reset; under DP at least the
    engine's DP step floor applies through `plan_budget`'s defaults instead.
    """
    if (
        config.steps is not None
        or config.epochs is not None
        or strategy.default_passes is None
        or config.privacy is not None
    ):
        return config
    batch = config.batch_size or default_batch_size(bucket, dp=False)
    steps = passes_to_steps(strategy.default_passes, bucket=bucket, batch_size=batch)
    if strategy.reset_every is not None:
        steps = min(steps, strategy.reset_every)
    return config.replace(steps=steps)


def check_source_free(strategy: SourceFreeStrategy, config: FinetuneConfig) -> None:
    """Raises before any data is touched when `config` asks for something the strategy cannot do."""
    if config.privacy is not None and not strategy.per_example:
        raise DPUnsupportedError(
            f"--dp-epsilon: {strategy.label} cannot train under DP-SGD: {strategy.dp_refusal}. Run it without "
            f"--dp-epsilon, or use tent, whose entropy loss is per-example and runs under DP"
        )
    if config.privacy is not None and config.privacy.ghost_clipping:
        raise PrivacyError(
            f"--ghost-clipping needs a loss of (output, label); {strategy.label}'s loss has no label. "
            f"Drop --ghost-clipping"
        )
    if config.reinit_head:
        raise StrategyError(
            f"{strategy.label} adapts without labels, so it keeps the source's head and classes; "
            f"drop --reinit-head (a new label set needs labels: use a supervised strategy)"
        )


def _without_labels(data: TensorData | None) -> TensorData | None:
    if data is None or len(data) == 0:
        return None
    return data.without_labels() if data.y is not None else data


def _check_closed_set(
    model: XferModel, *, label_names: Sequence[str] | None, card: ModelCard | None, strategy: str
) -> tuple[str, ...]:
    """The label names the adapted model predicts: the source's own (closed-set adaptation)."""
    source = (
        tuple(card.label_names)
        if card is not None and card.label_names
        else tuple(str(i) for i in range(model.num_classes))
    )
    if label_names is None:
        return source
    names = tuple(label_names)
    if len(names) != model.num_classes or (card is not None and card.label_names and set(names) != set(source)):
        raise DataError(
            f"{strategy} adapts without labels, so the target must share the source's classes "
            f"({len(source)}: {', '.join(source[:10])}{', ...' if len(source) > 10 else ''}); this "
            f"target has {len(names)} ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}). "
            f"A new label set needs labels: use a supervised strategy such as lp-ft"
        )
    return source


def adapt_source_free(
    model: XferModel,
    *,
    train: TensorData,
    val: TensorData | None = None,
    config: FinetuneConfig,
    card: ModelCard | None = None,
    label_names: Sequence[str] | None = None,
    ledger: PrivacyLedger | None = None,
    dataset_id: str | None = None,
    on_progress: Callable[[RoundRecord], None] | None = None,
    on_evaluate: EvaluateHook | None = None,
    bucket: int | None = None,
) -> FinetuneResult:
    """Adapts a copy of `model` to unlabelled `train` with a source-free strategy (`config.strategy`).

    Labels of `train` and `val`, if any, are dropped first. With `val`, the
    checkpoint with the best label-free `config.criterion` on it is kept
    (`patience` stops after that many evaluations without improvement);
    without, the last step. Under `config.privacy` (TENT only) training is
    DP-SGD exactly as in `trainer.finetune`, charged to `ledger` under
    `dataset_id`. `bucket` plans the budget for that size bucket instead of
    the training set's own.
    """
    started = time.perf_counter()
    strat = get_strategy(config.strategy)
    if not isinstance(strat, SourceFreeStrategy):
        raise FinetuneError(
            f"{strat.label} is a supervised strategy; source-free strategies are {', '.join(SOURCE_FREE)}"
        )
    if config.search is not None:
        raise SearchError("a label-free search is `sfda_selection.select_source_free` (or `adapt`)")
    check_source_free(strat, config)
    setup = resolve_device(config.device)
    seed_everything(config.seed)
    sched = get_schedule(config.schedule)
    train_u = _without_labels(train)
    if train_u is None:
        raise DataError("the training set is empty")
    val_u = _without_labels(val)
    if config.patience is not None and val_u is None:
        raise FinetuneError("patience (early stopping) needs an unlabelled validation split to score")
    names = _check_closed_set(model, label_names=label_names, card=card, strategy=strat.label)
    n = len(train_u)
    bucket = bucket or size_bucket(n)
    config = source_free_config(config, strat, bucket=bucket)
    budget = plan_budget(n=n, config=config, strategy_lr=strat.default_lr, bucket=bucket, strategy_clip=strat.dp_clip)

    work = copy.deepcopy(model)
    if config.privacy is not None:
        work = make_compatible(work)
    work.to(setup.device)
    work.train()
    phases = strat.plan(work, lr=budget.lr, steps=budget.steps, head_reset=False)
    for phase in phases:
        if not phase.trainable():
            raise StrategyError(f"{strat.label}: phase {phase.name!r} trains no parameters")
    param_names = {id(p): name for name, p in work.named_parameters()}
    x = to_device(train_u.x, setup)
    xv = to_device(val_u.x, setup) if val_u is not None else None
    objective = strat.objective(model=work, x=x, num_classes=work.num_classes, seed=config.seed)

    accounted = None
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
        )
    run = accounted.run if accounted is not None else None

    loop = _Loop(
        work=work,
        setup=setup,
        x=x,
        xv=xv,
        budget=budget,
        sched=sched,
        config=config,
        run=run,
        objective=objective,
        reset_every=strat.reset_every,
        names=param_names,
        on_progress=on_progress,
        on_evaluate=on_evaluate,
    )
    source_scores = loop.score() if xv is not None else None
    train_started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            objective.start(work)
            for phase in phases:
                loop.run_phase(phase)
    finally:
        for p in work.parameters():
            p.requires_grad_(True)
    train_seconds = time.perf_counter() - train_started
    if loop.steps_applied == 0:
        raise FinetuneError(f"{strat.label} applied no optimizer step; raise the step budget")
    if xv is not None and loop.best_state is None:
        raise FinetuneError(
            f"{strat.label} diverged: the {config.criterion} criterion was never finite on the "
            f"validation split; lower --lr"
        )
    if xv is None and not math.isfinite(loop.last_loss):
        raise FinetuneError(f"{strat.label} diverged (the training loss is {loop.last_loss}); lower --lr")
    if loop.best_state is not None:
        work.load_state_dict(loop.best_state)
    work.cpu().eval()

    report = None
    history: list[tuple[float, float, int]] = []
    if accounted is not None:
        history = accounted.run.history()
        report = accounted.finish(ledger=ledger, dataset_id=dataset_id)

    hyper = {
        "lr": f"{budget.lr:g}",
        "steps": str(budget.steps),
        "batch_size": str(budget.batch_size),
        "eval_every": str(budget.eval_every),
        "schedule": config.schedule,
        "weight_decay": f"{config.weight_decay:g}",
        "head_reset": "false",
        "seed": str(config.seed),
        "labels": "none",
        **strat.hyperparameters(),
    }
    if xv is not None:
        hyper["criterion"] = config.criterion
        hyper["checkpoint_step"] = str(loop.best_step)
    if config.patience is not None:
        hyper["patience"] = str(config.patience)
    label_free = {
        "criterion": config.criterion if xv is not None else None,
        "source": source_scores,
        "best": loop.best_scores,
        "checkpoint_step": loop.best_step,
        "resets": loop.resets,
        **objective.diagnostics(),
    }
    return FinetuneResult(
        model=work,
        strategy=strat.label,
        hyperparameters=hyper,
        label_names=names,
        head_reset=False,
        history=loop.history,
        best_step=loop.best_step,
        groups=loop.groups,
        rgn_scales=[],
        privacy=report,
        dp_history=history,
        val_metrics=None,
        train_examples=n,
        budget=budget,
        steps_applied=loop.steps_applied,
        device_kind=setup.kind,
        wall_seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        examples_seen=loop.examples_seen,
        label_free=label_free,
    )


class _Loop:
    """State shared across the phases of one source-free run."""

    def __init__(
        self,
        *,
        work: XferModel,
        setup,
        x: torch.Tensor,
        xv: torch.Tensor | None,
        budget: Budget,
        sched: Callable[[int, int], float],
        config: FinetuneConfig,
        run: PrivateRun | None,
        objective: Objective,
        reset_every: int | None,
        names: dict[int, str],
        on_progress: Callable[[RoundRecord], None] | None,
        on_evaluate: EvaluateHook | None,
    ) -> None:
        self.work, self.setup, self.x, self.xv, self.budget, self.sched = work, setup, x, xv, budget, sched
        self.config, self.run, self.objective, self.reset_every, self.names = config, run, objective, reset_every, names
        self.on_progress, self.on_evaluate = on_progress, on_evaluate
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[RoundRecord] = []
        self.groups: list[GroupRecord] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_value = -math.inf
        self.best_scores: dict[str, float] | None = None
        self.best_step = 0
        self.step = 0
        self.steps_applied = 0
        self.examples_seen = 0
        self.resets = 0
        self.last_loss = math.nan
        self._order: torch.Tensor | None = None
        self._pos = 0

    def score(self) -> dict[str, float]:
        """Every label-free criterion of the current model on the unlabelled validation split."""
        assert self.xv is not None
        return score_all(predict_logits(self.work, self.xv))

    def _next_batch(self) -> tuple[torch.Tensor, bool]:
        """The next batch's rows, and whether it starts a new pass over the training data."""
        n = len(self.x)
        if self.run is not None:
            # Poisson sampling has no passes; a "pass" is the steps that cover the bucket once on average.
            return self.run.poisson_batch(self.generator), self.step % self.budget.steps_per_pass == 0
        new_pass = self._order is None or self._pos >= n
        if new_pass:
            self._order = torch.randperm(n, generator=self.generator)
            if self.setup.kind != "cpu":
                self._order = self._order.to(self.setup.device, non_blocking=True)
            self._pos = 0
        assert self._order is not None
        batch = self._order[self._pos : self._pos + self.budget.batch_size]
        self._pos += self.budget.batch_size
        return batch, new_pass

    def run_phase(self, phase: Phase) -> None:
        trainable = phase.trainable()
        for p in self.work.parameters():
            p.requires_grad_(id(p) in trainable)
        params = [p for g in phase.groups for p in g.params]
        initial = [p.detach().clone() for p in params] if self.reset_every else []
        groups = [
            {"params": list(g.params), "lr": phase.lr * g.lr_scale, "base_lr": phase.lr * g.lr_scale, "name": g.name}
            for g in phase.groups
        ]
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=phase.lr, weight_decay=self.config.weight_decay)
        net: nn.Module = self.work
        opt = optimizer
        if self.run is not None:
            net, opt, _ = self.run.wrap(self.work, optimizer, nn.CrossEntropyLoss())
        dp = self.run is not None
        total = self.budget.steps
        loss_sum = torch.zeros((), device=self.setup.device)
        seen = 0
        stale = 0
        try:
            for step in range(phase.steps):
                if self.reset_every and self.step > 0 and self.step % self.reset_every == 0:
                    self._reset(params, initial, optimizer)
                factor = self.sched(step, phase.steps)
                idx, new_pass = self._next_batch()
                if new_pass:
                    self.objective.on_pass(self.work)
                empty = dp and idx.numel() == 0
                if empty:
                    idx = torch.zeros(1, dtype=torch.long)  # a noise-only step keeps the accounting exact
                if idx.device != self.x.device:
                    idx = idx.to(self.x.device, non_blocking=True)
                with autocast(self.setup, enabled=not dp):
                    loss = self.objective.loss(net, self.work, self.x[idx], idx, progress=self.step / total)
                if empty:
                    loss = loss * 0.0
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * factor
                opt.step()
                self.step += 1
                self.steps_applied += 1
                if not empty:
                    loss_sum.add_(loss.detach().float(), alpha=len(idx))
                    seen += len(idx)
                last = step == phase.steps - 1
                if self.step % self.budget.eval_every == 0 or last:
                    improved = self._evaluate(phase, loss_sum, seen)
                    self.examples_seen += seen
                    loss_sum, seen = torch.zeros((), device=self.setup.device), 0
                    stale = 0 if improved else stale + 1
                    if (
                        self.xv is not None
                        and self.config.patience is not None
                        and stale >= self.config.patience
                        and not last
                    ):
                        log.info("early stop in phase %s after step %d", phase.name, self.step)
                        break
        finally:
            if self.run is not None:
                self.run.unwrap(net)
            for g in phase.groups:
                self.groups.append(
                    GroupRecord(phase.name, g.name, tuple(self.names[id(p)] for p in g.params), phase.lr * g.lr_scale)
                )

    @torch.no_grad()
    def _reset(self, params: list[nn.Parameter], initial: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """RDumb: back to the source weights and a fresh optimizer state."""
        for p, p0 in zip(params, initial, strict=True):
            p.copy_(p0)
        optimizer.state.clear()
        self.resets += 1
        log.info("reset to the source weights after %d steps (reset_every=%d)", self.step, self.reset_every)

    @torch.no_grad()
    def _evaluate(self, phase: Phase, loss_sum: torch.Tensor, seen: int) -> bool:
        """Records a round; keeps the checkpoint if its criterion is the best so far (NaN never is)."""
        train_loss = float(loss_sum) / max(seen, 1)
        self.last_loss = train_loss if seen else self.last_loss
        scores = self.score() if self.xv is not None else None
        if scores is None:
            improved = True  # no validation split: the last step is kept
        else:
            value = scores[self.config.criterion]
            improved = math.isfinite(value) and value > self.best_value
            if improved:
                self.best_value = value
        if improved:
            self.best_step = self.step
            self.best_scores = scores
            self.best_state = {k: v.detach().clone() for k, v in self.work.state_dict().items()}
        record = RoundRecord(phase.name, self.step, train_loss, None, None, label_free=scores)
        self.history.append(record)
        if self.on_progress is not None:
            self.on_progress(record)
        if self.on_evaluate is not None:
            was_training = self.work.training
            self.work.eval()
            self.on_evaluate(record, self.work)
            self.work.train(was_training)
        return improved


__all__ = ["EvaluateHook", "adapt_source_free", "check_source_free", "source_free_config"]
