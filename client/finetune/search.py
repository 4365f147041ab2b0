"""Hyperparameter search by k-fold cross-validation on the client's training set.

The grid is strategy × learning rate. Each cell trains on k-1 folds for the
full epoch budget and is scored by accuracy on the held-out fold; the best
mean wins, is retrained on all training data (with the validation split for
early stopping) and evaluated once on the test split, which the search never
touches.

Under DP every fold's training is a mechanism run on (part of) the private
training set, so the search costs privacy too. Its total is the composition
of every run's accountant history (all folds plus the final retrain) in the
run's accountant at the final δ — computed before anything trains, charged
to the ledger up front, and refused if it does not fit the budget.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable, Sequence

import numpy as np

from xfer.client.finetune.data import TensorData
from xfer.client.finetune.errors import SearchError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate
from xfer.client.finetune.privacy import PrivacyConfig, default_delta, epsilon_of, plan_dp
from xfer.client.finetune.strategies import get_strategy
from xfer.client.finetune.trainer import FinetuneResult, finetune
from xfer.models.base import XferModel

log = logging.getLogger(__name__)

#: Default LR grid, as multiples of each strategy's default LR.
LR_MULTIPLIERS = (0.3, 1.0, 3.0)


@dataclasses.dataclass(frozen=True)
class Fold:
    """Positions (into the training set) of one fold's training and held-out rows."""

    train: np.ndarray
    val: np.ndarray


@dataclasses.dataclass(frozen=True)
class CVRow:
    strategy: str
    lr: float
    scores: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Mean held-out accuracy over the folds."""
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        """Sample standard deviation over the folds (0 for one fold)."""
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0


@dataclasses.dataclass
class SearchResult:
    rows: list[CVRow]
    best: CVRow
    folds: list[Fold]
    final: FinetuneResult
    test_metrics: Metrics | None
    #: Composed ε of every run of the search (None without DP).
    epsilon_total: float | None
    delta: float | None

    def table(self) -> str:
        """The CV table as text, best first."""
        lines = [f"{'strategy':<20} {'lr':>9} {'mean acc':>9} {'std':>7}  folds"]
        for row in sorted(self.rows, key=lambda r: -r.mean):
            mark = " *" if row is self.best else ""
            folds = " ".join(f"{s:.3f}" for s in row.scores)
            lines.append(f"{row.strategy:<20} {row.lr:>9.2g} {row.mean:>9.4f} {row.std:>7.4f}  {folds}{mark}")
        return "\n".join(lines)


def kfold(y: np.ndarray, *, folds: int, seed: int) -> list[Fold]:
    """Stratified k-fold split of positions 0..n-1: every position is held out exactly once."""
    y = np.asarray(y)
    if folds < 2 or folds > len(y):
        raise SearchError(f"--folds must be between 2 and the training-set size ({len(y)}), got {folds}")
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(y), dtype=np.int64)
    offset = 0
    for label in np.unique(y):
        rows = rng.permutation(np.nonzero(y == label)[0])
        # Continue the round-robin across classes so fold sizes stay balanced.
        assignment[rows] = (np.arange(len(rows)) + offset) % folds
        offset += len(rows)
    out = []
    for k in range(folds):
        out.append(Fold(train=np.nonzero(assignment != k)[0], val=np.nonzero(assignment == k)[0]))
    return out


def search(
    model: XferModel,
    *,
    train: TensorData,
    val: TensorData | None = None,
    test: TensorData | None = None,
    strategies: Sequence[str],
    lrs: Sequence[float] | None = None,
    folds: int = 3,
    label_names: Sequence[str],
    privacy: PrivacyConfig | None = None,
    ledger: PrivacyLedger | None = None,
    dataset_id: str | None = None,
    privacy_budget: float | None = None,
    seed: int = 0,
    on_row: Callable[[CVRow], None] | None = None,
    **train_kwargs,
) -> SearchResult:
    """Cross-validates strategy × LR on `train`, retrains the winner, evaluates once on `test`.

    `lrs=None` tries each strategy's default LR × (0.3, 1, 3). `train_kwargs`
    go to every `finetune` call (epochs, batch_size, card, device, ...).
    """
    if not strategies:
        raise SearchError("the search needs at least one strategy")
    label_names = tuple(label_names)
    fold_list = kfold(train.y.numpy(), folds=folds, seed=seed)
    grid = []
    for name in strategies:
        strat = get_strategy(name)
        for lr in (lrs if lrs else [strat.default_lr * m for m in LR_MULTIPLIERS]):
            grid.append((strat, float(lr)))

    epochs = int(train_kwargs.get("epochs", 10))
    batch_size = int(train_kwargs.get("batch_size", 64))
    epsilon_total = delta = None
    entry = None
    if privacy is not None:
        # One δ for every run, so the composed accountant speaks about a single (ε, δ).
        delta = privacy.delta if privacy.delta is not None else default_delta(len(train))
        privacy = dataclasses.replace(privacy, delta=delta)
        planned = []
        for strat, lr in grid:
            run_epochs = sum(p.epochs for p in strat.plan(model, lr=lr, epochs=epochs, head_reset=True))
            for fold in fold_list:
                planned += plan_dp(privacy, n=len(fold.train), batch_size=batch_size, epochs=run_epochs).history
        best_epochs = max(sum(p.epochs for p in s.plan(model, lr=lr, epochs=epochs, head_reset=True))
                          for s, lr in grid)
        planned += plan_dp(privacy, n=len(train), batch_size=batch_size, epochs=best_epochs).history
        epsilon_total = epsilon_of(planned, delta=delta, accountant=privacy.accountant)
        log.info("DP search: %d runs compose to epsilon=%.3g at delta=%.2e", len(grid) * folds + 1,
                 epsilon_total, delta)
        if ledger is not None:
            if not dataset_id:
                raise SearchError("a privacy ledger needs the dataset_id to charge")
            entry = ledger.charge(dataset_id, epsilon=epsilon_total, delta=delta,
                                  budget=privacy_budget,
                                  note=f"search {len(grid)} configs x {folds} folds + final")

    rows: list[CVRow] = []
    actual: list[tuple[float, float, int]] = []
    for strat, lr in grid:
        scores = []
        for k, fold in enumerate(fold_list):
            result = finetune(model, train=train.subset(fold.train), val=None, strategy=strat, lr=lr,
                              label_names=label_names, privacy=privacy, seed=seed + k, **train_kwargs)
            held_out = train.subset(fold.val)
            scores.append(evaluate(result.model, held_out.x, held_out.y, label_names=label_names).accuracy)
            actual += result.dp_history
        row = CVRow(strat.label, lr, tuple(scores))
        rows.append(row)
        log.info("cv %s lr=%g: %.4f ± %.4f", row.strategy, lr, row.mean, row.std)
        if on_row is not None:
            on_row(row)
    best = max(rows, key=lambda r: r.mean)
    final = finetune(model, train=train, val=val, strategy=best.strategy, lr=best.lr, label_names=label_names,
                     privacy=privacy, seed=seed, **train_kwargs)
    actual += final.dp_history
    if privacy is not None:
        epsilon_total = epsilon_of(actual, delta=delta, accountant=privacy.accountant)
        if ledger is not None and entry is not None:
            ledger.settle(dataset_id, entry.entry_id, epsilon=epsilon_total, delta=delta)
    test_metrics = None
    if test is not None and len(test):
        test_metrics = evaluate(final.model, test.x, test.y, label_names=label_names)
    return SearchResult(rows, best, fold_list, final, test_metrics, epsilon_total, delta)
