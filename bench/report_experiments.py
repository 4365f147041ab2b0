"""The report's experiments. Each is a pair: `plan(settings) -> specs` and `rows(settings, runner) -> rows`.

Planning first lets the runner execute every section's runs in one process
pool (longest first, shared runs once); the row functions only read
outcomes and aggregate them over seeds into `Stat`s. Nothing here renders.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence

from report_runs import PRETRAINED, RANDOM, FeatureSpec, ProbeSpec, Runner, RunSpec, SearchOutcome, SearchSpec, run_spec
from report_setup import IMPORT, SOURCES, TARGETS, Settings

ALL_BLOCKS = "all blocks (full)"
AUTO = "surgical:auto"


@dataclasses.dataclass(frozen=True)
class Stat:
    """A metric over seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (0 with one seed)."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n)

    def fmt(self) -> str:
        """'0.912 ± 0.013'."""
        return f"{self.mean:.3f} ± {self.std:.3f}"


def stat(values: Sequence[float]) -> Stat:
    """A Stat of `values` (floats)."""
    return Stat(tuple(float(v) for v in values))


# -- rows ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InitRow:
    """Section 1: one source, target and label count."""

    target: str
    per_class: int | None
    train_examples: int
    probe: Stat  # logistic regression on the pretrained source's frozen features
    pretrained: Stat | None  # fine-tuned (`full`) from the source; None where not run
    random: Stat | None  # the same architecture trained from random initialisation; None where not run


@dataclasses.dataclass(frozen=True)
class SurgicalRow:
    target: str
    tuned: str  # a block name, ALL_BLOCKS or AUTO
    accuracy: Stat


@dataclasses.dataclass(frozen=True)
class RGNRow:
    target: str
    block: str
    scale: Stat  # mean Auto-RGN LR scale of the block's tensors


@dataclasses.dataclass(frozen=True)
class StrategyRow:
    target: str
    strategy: str
    accuracy: Stat


@dataclasses.dataclass(frozen=True)
class PrivacyRow:
    arm: str  # "pretrained + linear-probe"
    init: str
    strategy: str
    epsilon: float | None
    accuracy: Stat
    epsilon_spent: Stat | None


@dataclasses.dataclass(frozen=True)
class SearchRow:
    target: str
    picks: tuple[str, ...]  # "strategy@lr" per seed
    cv_pick: Stat  # test accuracy of what CV picked
    hindsight: str  # the fixed grid cell with the best mean test accuracy
    hindsight_accuracy: Stat
    default_accuracy: Stat  # lp-ft (xfer finetune's default) at its default LR, when in the grid
    default_strategy: str


@dataclasses.dataclass
class Results:
    """Every section's rows plus what the runs were reported against."""

    init: list[InitRow]
    surgical: list[SurgicalRow]
    rgn: list[RGNRow]
    strategies: list[StrategyRow]
    privacy: list[PrivacyRow]
    search: list[SearchRow]
    blocks: dict[str, list[str]]  # target -> block names of its source model, input to output


# -- 1. pretrained vs random -----------------------------------------------------------------


def _imported(target: str) -> bool:
    return SOURCES[TARGETS[target].source].kind == IMPORT


def _finetuned(s: Settings, target: str, per_class: int | None) -> bool:
    """Whether section 1 fine-tunes (and trains from scratch) at this label count: the ImageNet model only at some."""
    return not _imported(target) or per_class in s.imagenet_finetune_labels


def _init_spec(s: Settings, *, target: str, per_class: int | None, init: str, seed: int) -> RunSpec:
    lr = s.random_lr if init == RANDOM else None
    steps = s.imagenet_steps if _imported(target) else s.steps
    return run_spec(
        target=target,
        strategy="full",
        seed=seed,
        per_class=per_class,
        steps=steps,
        batch_size=s.batch_size,
        lr=lr,
        init=init,
    )


def feature_spec(target: str, *, work_dir: str) -> FeatureSpec:
    """The frozen-feature pass of `target`'s pool (one file per target)."""
    return FeatureSpec(target=target, out_path=f"{work_dir}/features-{target}.npy")


def _probe_spec(s: Settings, *, target: str, per_class: int | None, seed: int, work_dir: str) -> ProbeSpec:
    return ProbeSpec(target=target, seed=seed, per_class=per_class, features=feature_spec(target, work_dir=work_dir))


def plan_features(s: Settings, *, work_dir: str) -> list[FeatureSpec]:
    """Section 1's feature passes (run before the probes that read them)."""
    return [feature_spec(t, work_dir=work_dir) for t in s.init_targets]


def plan_init(s: Settings, *, work_dir: str) -> list[RunSpec | ProbeSpec]:
    """Section 1: probe, fine-tuning from the source, and training from random init, per target and label count."""
    specs: list[RunSpec | ProbeSpec] = []
    for t in s.init_targets:
        for pc in s.few_labels:
            for seed in s.seeds:
                specs.append(_probe_spec(s, target=t, per_class=pc, seed=seed, work_dir=work_dir))
                if _finetuned(s, t, pc):
                    specs += [
                        _init_spec(s, target=t, per_class=pc, init=init, seed=seed) for init in (PRETRAINED, RANDOM)
                    ]
    return specs


def rows_init(s: Settings, runner: Runner, *, work_dir: str) -> list[InitRow]:
    """Section 1's rows."""
    rows = []
    for t in s.init_targets:
        for pc in s.few_labels:
            probes = [runner[_probe_spec(s, target=t, per_class=pc, seed=seed, work_dir=work_dir)] for seed in s.seeds]
            pre = rnd = None
            if _finetuned(s, t, pc):
                pre = stat(
                    runner[_init_spec(s, target=t, per_class=pc, init=PRETRAINED, seed=seed)].accuracy
                    for seed in s.seeds
                )
                rnd = stat(
                    runner[_init_spec(s, target=t, per_class=pc, init=RANDOM, seed=seed)].accuracy for seed in s.seeds
                )
            rows.append(InitRow(t, pc, probes[0].train_examples, stat(o.accuracy for o in probes), pre, rnd))
    return rows


# -- 2. surgical fine-tuning -----------------------------------------------------------------


def _surgical_strategies(blocks: Sequence[str]) -> list[tuple[str, str]]:
    """(row label, strategy) for each single block, all blocks, and Auto-RGN."""
    return [(b, f"surgical:{b}") for b in blocks] + [(ALL_BLOCKS, "full"), (AUTO, "surgical:auto")]


def _adapt_spec(s: Settings, *, target: str, strategy: str, seed: int, lr: float | None = None) -> RunSpec:
    return run_spec(
        target=target,
        strategy=strategy,
        seed=seed,
        per_class=s.adapt_per_class,
        steps=s.steps,
        batch_size=s.batch_size,
        lr=lr,
    )


def plan_surgical(s: Settings, *, blocks: dict[str, list[str]]) -> list[RunSpec]:
    """Section 2: each single block, all blocks and Auto-RGN per shift."""
    return [
        _adapt_spec(s, target=t, strategy=strategy, seed=seed)
        for t in s.surgical_targets
        for _, strategy in _surgical_strategies(blocks[t])
        for seed in s.seeds
    ]


def rows_surgical(
    s: Settings, runner: Runner, *, blocks: dict[str, list[str]]
) -> tuple[list[SurgicalRow], list[RGNRow]]:
    """Section 2's accuracy rows and Auto-RGN block-weight rows."""
    rows, rgn = [], []
    for t in s.surgical_targets:
        for label, strategy in _surgical_strategies(blocks[t]):
            outcomes = [runner[_adapt_spec(s, target=t, strategy=strategy, seed=seed)] for seed in s.seeds]
            rows.append(SurgicalRow(t, label, stat(o.accuracy for o in outcomes)))
            if strategy == "surgical:auto":
                for block in blocks[t]:
                    rgn.append(RGNRow(t, block, stat((o.rgn_blocks or {}).get(block, 0.0) for o in outcomes)))
    return rows, rgn


# -- 3. strategies ---------------------------------------------------------------------------


def plan_strategies(s: Settings) -> list[RunSpec]:
    """Section 3: every strategy at its default LR on every target."""
    return [
        _adapt_spec(s, target=t, strategy=strategy, seed=seed)
        for t in s.strategy_targets
        for strategy in s.strategies
        for seed in s.seeds
    ]


def rows_strategies(s: Settings, runner: Runner) -> list[StrategyRow]:
    """Section 3's rows."""
    return [
        StrategyRow(
            t,
            strategy,
            stat(runner[_adapt_spec(s, target=t, strategy=strategy, seed=seed)].accuracy for seed in s.seeds),
        )
        for t in s.strategy_targets
        for strategy in s.strategies
    ]


# -- 4. privacy ------------------------------------------------------------------------------


def _privacy_spec(s: Settings, *, init: str, strategy: str, epsilon: float | None, seed: int) -> RunSpec:
    return run_spec(
        target=s.privacy_target,
        strategy=strategy,
        seed=seed,
        per_class=s.privacy_per_class,
        steps=s.privacy_steps,
        batch_size=s.privacy_batch_size,
        lr=s.random_lr if init == RANDOM else None,
        init=init,
        epsilon=epsilon,
        max_grad_norm=s.max_grad_norm,
    )


def plan_privacy(s: Settings) -> list[RunSpec]:
    """Section 4: each (initialisation, strategy) arm at each target ε and without DP."""
    return [
        _privacy_spec(s, init=init, strategy=strategy, epsilon=eps, seed=seed)
        for init, strategy in s.privacy_arms
        for eps in s.epsilons
        for seed in s.seeds
    ]


def rows_privacy(s: Settings, runner: Runner) -> list[PrivacyRow]:
    """Section 4's rows."""
    rows = []
    for init, strategy in s.privacy_arms:
        for eps in s.epsilons:
            outs = [runner[_privacy_spec(s, init=init, strategy=strategy, epsilon=eps, seed=seed)] for seed in s.seeds]
            spent = stat(o.epsilon_spent for o in outs) if eps is not None else None
            rows.append(PrivacyRow(f"{init} + {strategy}", init, strategy, eps, stat(o.accuracy for o in outs), spent))
    return rows


# -- 5. search -------------------------------------------------------------------------------


def _grid(s: Settings) -> list[tuple[str, float]]:
    from xfer.client.finetune import get_strategy
    from xfer.client.finetune.search import LR_MULTIPLIERS

    return [(name, get_strategy(name).default_lr * m) for name in s.search_strategies for m in LR_MULTIPLIERS]


def _search_spec(s: Settings, *, target: str, seed: int) -> SearchSpec:
    return SearchSpec(
        target=target,
        seed=seed,
        per_class=s.adapt_per_class,
        strategies=tuple(s.search_strategies),
        folds=s.folds,
        steps=s.steps,
        batch_size=s.batch_size,
    )


def plan_search(s: Settings) -> list[RunSpec | SearchSpec]:
    """Section 5: one k-fold search per target and seed, plus every fixed cell of its grid."""
    specs: list[RunSpec | SearchSpec] = []
    for t in s.search_targets:
        for seed in s.seeds:
            specs.append(_search_spec(s, target=t, seed=seed))
            # Every fixed cell of the same grid, trained on the whole training split: the hindsight baseline.
            specs += [_adapt_spec(s, target=t, strategy=name, seed=seed, lr=lr) for name, lr in _grid(s)]
    return specs


def rows_search(s: Settings, runner: Runner) -> list[SearchRow]:
    """Section 5's rows: CV's pick vs the best fixed cell in hindsight and the CLI default."""
    from xfer.client.finetune import get_strategy

    rows = []
    for t in s.search_targets:
        found: list[SearchOutcome] = [runner[_search_spec(s, target=t, seed=seed)] for seed in s.seeds]
        cells = {
            (name, lr): stat(
                runner[_adapt_spec(s, target=t, strategy=name, seed=seed, lr=lr)].accuracy for seed in s.seeds
            )
            for name, lr in _grid(s)
        }
        (best_name, best_lr), best = max(cells.items(), key=lambda kv: kv[1].mean)
        default = "lp-ft" if "lp-ft" in s.search_strategies else s.search_strategies[-1]
        default_cell = cells[(default, get_strategy(default).default_lr)]
        rows.append(
            SearchRow(
                t,
                tuple(f"{o.picked_strategy}@{o.picked_lr:g}" for o in found),
                stat(o.test_accuracy for o in found),
                f"{best_name}@{best_lr:g}",
                best,
                default_cell,
                default,
            )
        )
    return rows


def run_experiments(
    settings: Settings,
    runner: Runner,
    *,
    blocks: dict[str, list[str]],
    config,
    work_dir: str,
    progress: Callable[[str], None],
) -> Results:
    """Plans every section, runs all their specs in one pool (feature passes first), and builds the rows."""
    runner.run_all(plan_features(settings, work_dir=work_dir), config=config, label="frozen-feature passes")
    specs = (
        plan_init(settings, work_dir=work_dir)
        + plan_surgical(settings, blocks=blocks)
        + plan_strategies(settings)
        + plan_privacy(settings)
        + plan_search(settings)
    )
    unique = len(set(specs))
    progress(f"planned {len(specs)} runs ({unique} distinct) across 5 sections")
    runner.run_all(specs, config=config, label="adaptation runs")
    surgical, rgn = rows_surgical(settings, runner, blocks=blocks)
    return Results(
        init=rows_init(settings, runner, work_dir=work_dir),
        surgical=surgical,
        rgn=rgn,
        strategies=rows_strategies(settings, runner),
        privacy=rows_privacy(settings, runner),
        search=rows_search(settings, runner),
        blocks=blocks,
    )
