"""Label-free model selection for the source-free strategies, and their entry point from `adapt`.

With no labels there is nothing to cross-validate. `select_source_free`
trains every cell of the strategy × learning-rate grid on the unlabelled
training split, lets each run keep its best checkpoint by the label-free
criterion on the unlabelled validation split (`sfda.adapt_source_free`), and
picks the cell whose checkpoint scores best: learning rate and number of
steps chosen together, from predictions alone. Labels are stripped before
any run starts, so neither the training nor the validation labels can reach
a choice; the test split is scored once, after the choice.

Under DP the search is refused: every grid cell would train on the same
private data, so ε would add up over the grid.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from collections.abc import Callable, Sequence

import torch

from xfer.client.finetune.config import FinetuneConfig
from xfer.client.finetune.data import TargetData, TensorData
from xfer.client.finetune.errors import PrivacyError, SearchError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.metrics import Metrics, evaluate
from xfer.client.finetune.search import LR_MULTIPLIERS
from xfer.client.finetune.sfda import adapt_source_free
from xfer.client.finetune.sfda_strategies import SOURCE_FREE, is_source_free
from xfer.client.finetune.strategies import get_strategy
from xfer.client.finetune.trainer import FinetuneResult, RoundRecord
from xfer.models.base import XferModel
from xfer.models.card import ModelCard

log = logging.getLogger(__name__)

#: Called after each evaluation of each grid cell with (strategy, lr, record, model in eval mode): how
#: benchmarks measure how the criterion tracks accuracy. The selection itself never sees a label.
CandidateHook = Callable[[str, float, RoundRecord, XferModel], None]


@dataclasses.dataclass(frozen=True)
class LabelFreeRow:
    """One grid cell: its best checkpoint's criterion value (higher is better) and step."""

    strategy: str
    lr: float
    value: float
    step: int
    scores: tuple[float, ...]  # (value,): the shape `CVRow` printers expect

    @property
    def mean(self) -> float:
        """The cell's score (its best checkpoint's criterion value)."""
        return self.value


@dataclasses.dataclass
class LabelFreeSearch:
    """What a label-free search found. `final` is the chosen cell's run; `test_metrics` its one test score."""

    rows: list[LabelFreeRow]
    best: LabelFreeRow
    final: FinetuneResult
    test_metrics: Metrics | None
    criterion: str
    grid: list[tuple[str, float]]
    #: Compatibility with `search.SearchResult` for the code that shows either.
    epsilon_total: float | None = None
    delta: float | None = None
    selection: None = None
    trials: int = 0
    folds: list = dataclasses.field(default_factory=list)
    label_free: bool = True

    @property
    def private(self) -> bool:
        """A label-free search never runs under DP."""
        return False

    def table(self) -> str:
        """The grid as text, best first."""
        lines = [f"{'strategy':<12} {'lr':>9} {self.criterion:>10} {'step':>6}"]
        for row in sorted(self.rows, key=lambda r: -r.value if math.isfinite(r.value) else math.inf):
            mark = " *" if row is self.best else ""
            lines.append(f"{row.strategy:<12} {row.lr:>9.2g} {row.value:>10.4f} {row.step:>6}{mark}")
        return "\n".join(lines)


def uses_source_free(config: FinetuneConfig) -> bool:
    """Whether `config` adapts with source-free strategies (all of them, or raises on a mix)."""
    names = list(config.search.strategies) if config.search is not None else [config.strategy]
    kinds = {is_source_free(name) for name in names}
    if len(kinds) > 1:
        raise SearchError(
            f"a search cannot mix source-free ({', '.join(SOURCE_FREE)}) and supervised strategies: "
            f"the first are chosen by a label-free criterion, the second by cross-validation"
        )
    return kinds.pop()


def _grid(config: FinetuneConfig) -> list[tuple[str, float]]:
    assert config.search is not None
    cells = []
    for name in config.search.strategies:
        strat = get_strategy(name)
        for lr in config.search.lrs if config.search.lrs else [strat.default_lr * m for m in LR_MULTIPLIERS]:
            cells.append((strat.label, float(lr)))
    return cells


def select_source_free(
    model: XferModel,
    *,
    train: TensorData,
    val: TensorData | None,
    test: TensorData | None = None,
    config: FinetuneConfig,
    card: ModelCard | None = None,
    label_names: Sequence[str] | None = None,
    on_row: Callable[[LabelFreeRow], None] | None = None,
    on_candidate: CandidateHook | None = None,
) -> LabelFreeSearch:
    """Chooses strategy × LR × checkpoint by `config.criterion` on unlabelled `val`; scores the choice on `test`."""
    if config.search is None:
        raise SearchError("select_source_free needs config.search (the grid)")
    if config.privacy is not None:
        raise PrivacyError(
            "a label-free search under DP would train every grid cell on the same private data, so "
            "epsilon would add up over the grid; run tent under --dp-epsilon at one fixed --lr instead"
        )
    if val is None or len(val) == 0:
        raise SearchError(
            "a label-free search scores its candidates on an unlabelled validation split, and there "
            "is none; give more data (a data set without labels splits 80/20 into train and val)"
        )
    # Labels are dropped here, before any run: nothing below can reach them.
    train = train.without_labels()
    val = val.without_labels()
    grid = _grid(config)
    cell_config = config.replace(search=None)
    rows: list[LabelFreeRow] = []
    best_run: FinetuneResult | None = None
    best_row: LabelFreeRow | None = None
    for strategy, lr in grid:
        hook = None
        if on_candidate is not None:

            def hook(record: RoundRecord, net: XferModel, s: str = strategy, r: float = lr) -> None:
                on_candidate(s, r, record, net)

        run = adapt_source_free(
            model,
            train=train,
            val=val,
            card=card,
            label_names=label_names,
            config=cell_config.replace(strategy=strategy, lr=lr),
            on_evaluate=hook,
        )
        best = (run.label_free or {}).get("best") or {}
        value = float(best.get(config.criterion, math.nan))
        row = LabelFreeRow(strategy, lr, value, run.best_step, (value,))
        rows.append(row)
        log.info("label-free %s lr=%g: %s %.4f at step %d", strategy, lr, config.criterion, value, run.best_step)
        if on_row is not None:
            on_row(row)
        if math.isfinite(value) and (best_row is None or value > best_row.value):
            best_row, best_run = row, run
        else:
            del run  # only the chosen cell's model is kept
    if best_run is None or best_row is None:
        raise SearchError(f"no grid cell gave a finite {config.criterion} criterion; lower the learning rates")
    test_metrics = None
    if test is not None and len(test) and test.y is not None:
        test_metrics = evaluate(best_run.model, test.x, test.y, label_names=best_run.label_names)
    return LabelFreeSearch(
        rows=rows, best=best_row, final=best_run, test_metrics=test_metrics, criterion=config.criterion, grid=grid
    )


def source_free_training_data(target: TargetData) -> TensorData:
    """Every training example the client has, without labels: the training split plus, in few-label mode,
    the rest of it that came without labels."""
    parts = [target.train.without_labels()]
    if target.unlabeled is not None and len(target.unlabeled):
        parts.append(target.unlabeled.without_labels())
    if len(parts) == 1:
        return parts[0]
    return TensorData(torch.cat([p.x for p in parts]), None, torch.cat([p.index for p in parts]))


@dataclasses.dataclass
class SourceFreeOutcome:
    """What `adapt` needs from a source-free run or search."""

    result: FinetuneResult
    test_metrics: Metrics | None
    search: LabelFreeSearch | None


def run_source_free(
    model: XferModel,
    *,
    target: TargetData,
    config: FinetuneConfig,
    card: ModelCard | None,
    ledger: PrivacyLedger | None,
    dataset_id: str | None,
    on_progress: Callable[[RoundRecord], None] | None,
    on_row: Callable[[LabelFreeRow], None] | None,
) -> SourceFreeOutcome:
    """`adapt`'s source-free branch: one run, or a label-free search; the test split scored once."""
    train = source_free_training_data(target)
    if config.search is not None:
        found = select_source_free(
            model,
            train=train,
            val=target.val,
            test=target.test,
            config=config,
            card=card,
            label_names=target.label_names,
            on_row=on_row,
        )
        return SourceFreeOutcome(found.final, found.test_metrics, found)
    result = adapt_source_free(
        model,
        train=train,
        val=target.val,
        config=config,
        card=card,
        label_names=target.label_names,
        ledger=ledger,
        dataset_id=dataset_id,
        on_progress=on_progress,
    )
    test_metrics = None
    if target.test is not None and len(target.test) and target.test.y is not None:
        test_metrics = evaluate(result.model, target.test.x, target.test.y, label_names=result.label_names)
    return SourceFreeOutcome(result, test_metrics, None)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs or a constant side."""
    if len(a) != len(b) or len(a) < 3:
        return math.nan

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2.0
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    if len(set(ra)) < 2 or len(set(rb)) < 2:
        return math.nan
    return statistics.correlation(ra, rb)


__all__ = [
    "CandidateHook",
    "LabelFreeRow",
    "LabelFreeSearch",
    "SourceFreeOutcome",
    "run_source_free",
    "select_source_free",
    "source_free_training_data",
    "spearman",
    "uses_source_free",
]
