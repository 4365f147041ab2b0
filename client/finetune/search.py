"""Hyperparameter search on the client's own labelled data: strategy × learning rate.

Without DP: stratified k-fold cross-validation over the whole grid. Each
cell trains on k-1 folds with the budget of the full training set (same
size bucket, same steps) and is scored on the held-out fold; the best mean
wins, is retrained on all training data (with the validation split, if
there is one, for the checkpoint) and evaluated once on the test split,
which the search never touches. In few-label mode (no validation split)
the folds come out of the few labels themselves.

With DP: private selection with a random number of trials (Papernot &
Steinke, ICLR 2022; arithmetic in `selection.py`). Each training example is
assigned once, independently of the others, to a training part (1 − 1/folds)
or a held-out part (1/folds). K ~ D(η, γ) trials are drawn independently of
the data; each picks a grid cell uniformly at random, trains with DP-SGD on
the training part (σ solved so that the whole selection — not each trial —
meets the target ε) and counts its correct held-out predictions plus
Gaussian noise. Only the best trial is released: its model is the result,
retraining on all data would cost a second run's ε. No noise-free statistic
of the training data leaves the search (the per-trial noisy scores stay in
the local table; the report carries none of them).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable, Sequence

import numpy as np

from xfer.client.dp_delta import resolve_delta
from xfer.client.finetune.budget import plan_budget, size_bucket
from xfer.client.finetune.config import FinetuneConfig, SearchConfig
from xfer.client.finetune.data import TensorData
from xfer.client.finetune.errors import DataError, DivergedError, PrivacyError, SearchError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate, predict_logits
from xfer.client.finetune.selection import SelectionPlan, plan_selection, sample_trials
from xfer.client.finetune.strategies import get_strategy
from xfer.client.finetune.trainer import FinetuneResult, finetune
from xfer.client.targets import numbered_label_names
from xfer.models.base import XferModel
from xfer.models.card import ModelCard

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
    """One grid cell (or, under DP, one trial) and its held-out scores."""

    strategy: str
    lr: float
    scores: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Mean held-out accuracy over the folds (a DP trial: its noisy accuracy)."""
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        """Sample standard deviation over the folds (0 for one fold)."""
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0


@dataclasses.dataclass
class SearchResult:
    """What a search found. `final` is the model to use; `test_metrics` its one look at the test split."""

    rows: list[CVRow]
    best: CVRow
    folds: list[Fold]
    final: FinetuneResult
    test_metrics: Metrics | None
    #: ε of the whole search at `delta` (None without DP).
    epsilon_total: float | None
    delta: float | None
    #: DP only: the noise plan and the number of trials drawn. K stays local: the selection's guarantee
    #: holds for a K nobody knows (the best of a known k runs costs about k runs).
    selection: SelectionPlan | None = None
    trials: int = 0
    #: The grid searched, (strategy, lr) per cell.
    grid: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    @property
    def private(self) -> bool:
        """Whether this was a private (DP) selection."""
        return self.selection is not None

    def table(self) -> str:
        """The CV (or trial) table as text, best first."""
        label = "noisy acc" if self.private else "mean acc"
        lines = [f"{'strategy':<20} {'lr':>9} {label:>9} {'std':>7}  folds"]
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
    return [Fold(train=np.nonzero(assignment != k)[0], val=np.nonzero(assignment == k)[0]) for k in range(folds)]


def _grid(search: SearchConfig) -> list[tuple[str, float]]:
    cells = []
    for name in search.strategies:
        strat = get_strategy(name)
        for lr in search.lrs if search.lrs else [strat.default_lr * m for m in LR_MULTIPLIERS]:
            cells.append((strat.label, float(lr)))
    return cells


def search(
    model: XferModel,
    *,
    train: TensorData,
    val: TensorData | None = None,
    test: TensorData | None = None,
    config: FinetuneConfig | None = None,
    card: ModelCard | None = None,
    label_names: Sequence[str] | None = None,
    ledger: PrivacyLedger | None = None,
    dataset_id: str | None = None,
    on_row: Callable[[CVRow], None] | None = None,
) -> SearchResult:
    """Chooses strategy × LR on `train` as `config.search` says, then evaluates the winner once on `test`.

    Without `config.privacy`: k-fold cross-validation and a retrain on all of
    `train`. With it: private selection; the whole search meets the target
    (ε, δ), is charged to the ledger up front and refused if it does not fit
    `config.privacy.budget`.
    """
    if config is None or config.search is None:
        raise SearchError("search() needs config=FinetuneConfig(search=SearchConfig(...))")
    if train.y is None:
        from xfer.client.finetune.sfda_strategies import SOURCE_FREE

        raise DataError(
            f"cross-validating {', '.join(config.search.strategies)} needs labelled training data, and "
            f"these examples have none; search over source-free strategies instead "
            f"(--search --strategy {','.join(SOURCE_FREE[1:])}: chosen by a label-free criterion)"
        )
    label_names = (
        tuple(label_names) if label_names is not None else numbered_label_names(train.y.numpy(), where="train")
    )
    grid = _grid(config.search)
    if config.privacy is None:
        result = _cross_validate(
            model, train=train, val=val, config=config, grid=grid, card=card, label_names=label_names, on_row=on_row
        )
    else:
        result = _private_select(
            model,
            train=train,
            config=config,
            grid=grid,
            card=card,
            label_names=label_names,
            ledger=ledger,
            dataset_id=dataset_id,
            on_row=on_row,
        )
    result.grid = grid
    if test is not None and len(test) and test.y is not None:
        result.test_metrics = evaluate(result.final.model, test.x, test.y, label_names=label_names)
    return result


def _cross_validate(
    model: XferModel,
    *,
    train: TensorData,
    val: TensorData | None,
    config: FinetuneConfig,
    grid: list[tuple[str, float]],
    card: ModelCard | None,
    label_names: tuple[str, ...],
    on_row: Callable[[CVRow], None] | None,
) -> SearchResult:
    assert config.search is not None and train.y is not None
    folds = kfold(train.y.numpy(), folds=config.search.folds, seed=config.seed)
    bucket = size_bucket(len(train))
    # Fold runs have no validation split; the final run keeps early stopping if it has one.
    fold_config = config.replace(patience=None, search=None)
    rows: list[CVRow] = []
    for strategy, lr in grid:
        scores = []
        for k, fold in enumerate(folds):
            try:
                run = finetune(
                    model,
                    train=train.subset(fold.train),
                    val=None,
                    card=card,
                    label_names=label_names,
                    config=fold_config.replace(strategy=strategy, lr=lr, seed=config.seed + k),
                    bucket=bucket,
                )
            except DivergedError:
                scores.append(0.0)  # a learning rate too high for this data loses, it does not end the search
                continue
            held_out = train.subset(fold.val)
            scores.append(evaluate(run.model, held_out.x, held_out.y, label_names=label_names).accuracy)
        row = CVRow(strategy, lr, tuple(scores))
        rows.append(row)
        log.info("cv %s lr=%g: %.4f ± %.4f", row.strategy, lr, row.mean, row.std)
        if on_row is not None:
            on_row(row)
    best = max(rows, key=lambda r: r.mean)
    final_config = config.replace(strategy=best.strategy, lr=best.lr, search=None)
    if val is None:
        final_config = final_config.replace(patience=None)
    final = finetune(model, train=train, val=val, config=final_config, card=card, label_names=label_names)
    return SearchResult(rows, best, folds, final, None, None, None)


def holdout_assignment(n: int, *, fraction: float, seed: int) -> np.ndarray:
    """True for held-out rows: each row independently with probability `fraction`.

    Independent per-example draws (not a stratified split) are what the
    add/remove-one argument needs: adding or removing one example changes no
    other example's part.
    """
    return np.random.default_rng([seed, 0x5E1EC7]).random(n) < fraction


def _private_select(
    model: XferModel,
    *,
    train: TensorData,
    config: FinetuneConfig,
    grid: list[tuple[str, float]],
    card: ModelCard | None,
    label_names: tuple[str, ...],
    ledger: PrivacyLedger | None,
    dataset_id: str | None,
    on_row: Callable[[CVRow], None] | None,
) -> SearchResult:
    assert config.search is not None and config.privacy is not None and train.y is not None
    privacy = config.privacy
    bucket = size_bucket(len(train))
    delta = resolve_delta(privacy.delta, bucket=bucket, error=PrivacyError)
    # Every cell trains the same steps at the same rate, so every trial has the same RDP curve.
    budgets = {plan_budget(n=len(train), config=config.replace(strategy=s, lr=lr), strategy_lr=lr) for s, lr in grid}
    shapes = {(b.sample_rate, b.steps) for b in budgets}
    if len(shapes) != 1:
        raise SearchError("a private search needs one step budget and batch size for every grid cell")
    ((sample_rate, steps),) = shapes
    assert sample_rate is not None
    mean_trials = float(config.search.trials if config.search.trials is not None else max(2, len(grid)))
    plan = plan_selection(
        epsilon=privacy.epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        mean=mean_trials,
        shape=config.search.trials_shape,
    )
    entry = None
    if ledger is not None:
        if not dataset_id:
            raise SearchError("a privacy ledger needs the dataset_id to charge")
        entry = ledger.charge(
            dataset_id,
            epsilon=plan.epsilon,
            delta=delta,
            budget=privacy.budget,
            note=f"private search over {len(grid)} configs, {mean_trials:g} trials on average",
        )
    held = holdout_assignment(len(train), fraction=1.0 / config.search.folds, seed=config.seed)
    part, out = train.subset(np.nonzero(~held)[0]), train.subset(np.nonzero(held)[0])
    if len(out) == 0 or len(part) == 0 or part.y is None or out.y is None:
        raise SearchError(
            f"too few labelled examples ({len(train)}) for a private search with a 1/{config.search.folds} "
            f"held-out part; use more data or skip --search"
        )
    rng = np.random.default_rng([config.seed, 0x7E1A15])
    trials = sample_trials(rng, mean=mean_trials, shape=config.search.trials_shape)
    log.info(
        "private search: %d trials (%.3g on average), sigma %.3f, count noise %.3f, epsilon %.3f at delta %.2e",
        trials,
        mean_trials,
        plan.noise_multiplier,
        plan.score_noise,
        plan.epsilon,
        delta,
    )
    trial_config = config.replace(search=None, patience=None)
    rows: list[CVRow] = []
    best_run: FinetuneResult | None = None
    best_row: CVRow | None = None
    best_noisy = -np.inf
    try:
        for t in range(trials):
            strategy, lr = grid[int(rng.integers(len(grid)))]
            try:
                run: FinetuneResult | None = finetune(
                    model,
                    train=part,
                    val=None,
                    card=card,
                    label_names=label_names,
                    bucket=bucket,
                    noise_multiplier=plan.noise_multiplier,
                    config=trial_config.replace(strategy=strategy, lr=lr, seed=config.seed + t),
                )
            except DivergedError:
                run = None  # scored as no correct prediction, through the same noisy comparison
            correct = 0 if run is None else int((predict_logits(run.model, out.x).argmax(1) == out.y).sum())
            noisy = correct + float(rng.normal(0.0, plan.score_noise))
            # Shown locally as an accuracy; only the comparison between trials (same held-out part) matters.
            row = CVRow(strategy, lr, (noisy / len(out),))
            rows.append(row)
            if on_row is not None:
                on_row(row)
            if run is not None and noisy > best_noisy:
                best_noisy, best_run, best_row = noisy, run, row
            else:
                del run  # only the best trial's model is kept
    except BaseException:
        if ledger is not None and entry is not None and dataset_id:
            log.warning("private search interrupted: its full epsilon stays charged")
        raise
    if best_run is None or best_row is None:
        if rows:
            raise DivergedError(
                f"every one of the private search's {len(rows)} trials diverged (NaN or infinite weights); "
                f"search lower learning rates"
            )
        raise PrivacyError("the private search ran no trial")
    if ledger is not None and entry is not None and dataset_id:
        ledger.settle(dataset_id, entry.entry_id, epsilon=plan.epsilon, delta=delta)
    return SearchResult(rows, best_row, [], best_run, None, plan.epsilon, delta, selection=plan, trials=trials)


__all__ = ["CVRow", "Fold", "LR_MULTIPLIERS", "SearchResult", "holdout_assignment", "kfold", "search"]
