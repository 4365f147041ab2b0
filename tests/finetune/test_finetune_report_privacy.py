"""A report must not narrow the training-set size below its power-of-two bucket (issue: δ, σ, exact fractions).

`consistent_sizes` is the operator's attack: knowing the engine and the config a report states, it
enumerates every training-set size n that could have produced every field of the report. A real
report must leave the whole bucket; the same report with its exact (unrounded) accuracy must not,
which shows the enumeration has teeth.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import pytest
from finetune_helpers import cfg

from xfer.client.domain import Run, pow2_at_least
from xfer.client.finetune.budget import plan_budget
from xfer.client.finetune.config import FinetuneConfig, PrivacyConfig, SearchConfig
from xfer.client.finetune.data import load_target
from xfer.client.finetune.pipeline import adapt
from xfer.client.finetune.privacy import default_delta, epsilon_of, plan_dp
from xfer.client.finetune.report import (
    MIN_HELD_OUT_PER_TRAIN,
    fraction_grid,
    held_out_grid,
    quantize,
    training_fraction_grid,
)
from xfer.client.finetune.strategies import get_strategy


def held_out_sizes(n: int) -> range:
    """Every test-split size a 60/20/20 stratified split can give next to n training examples."""
    return range(max(1, math.floor(n * MIN_HELD_OUT_PER_TRAIN)), n + 1)


def split_model(n: int) -> range:
    """The best-informed operator: knows the test split is n/3 (balanced classes, 60/20/20)."""
    return range(round(n / 3), round(n / 3) + 1)


def fraction_fits(value: float, *, denominator: int, grid: float | None) -> bool:
    """Whether some c/denominator is `value` (grid None: exactly) or rounds to it on `grid`."""
    if grid is None:
        return round(value * denominator) / denominator == value
    low, high = math.floor((value - grid) * denominator), math.ceil((value + grid) * denominator)
    return any(quantize(c / denominator, grid) == value for c in range(max(0, low), min(denominator, high) + 1))


def consistent_sizes(
    run: Run,
    *,
    config: FinetuneConfig,
    candidates: range,
    held_out: Callable[[int], Iterable[int]] = held_out_sizes,
    exact: bool = False,
) -> set[int]:
    """Every n for which each field of `run` is what the engine would have reported.

    `held_out(n)`: the test-split sizes the operator thinks possible next to n; `exact`: the report's
    accuracy is read as an exact fraction (as the first release sent it).
    """
    h = run.hyperparameters
    strategy = get_strategy(config.strategy)
    out = set()
    privacy_fits: dict[object, bool] = {}  # per budget: the DP fields depend on nothing else
    for n in candidates:
        if pow2_at_least(n) != run.train_examples_pow2:
            continue
        budget = plan_budget(
            n=n,
            config=config.replace(lr=float(h["lr"])),
            strategy_lr=strategy.default_lr,
            strategy_clip=strategy.dp_clip,
        )
        if (h["steps"], h["batch_size"], h["eval_every"]) != (
            str(budget.steps),
            str(budget.batch_size),
            str(budget.eval_every),
        ):
            continue
        if run.privacy.dp:
            if budget not in privacy_fits:
                privacy_fits[budget] = _privacy_fits(run, config=config, budget=budget)
            if not privacy_fits[budget]:
                continue
        grid = None if exact else 1 / int(h["metric_grid"].split("/")[1])
        tied = exact or grid == fraction_grid(run.train_examples_pow2)  # else: a few-label test split
        if tied and not any(fraction_fits(run.metrics["accuracy"], denominator=m, grid=grid) for m in held_out(n)):
            continue
        if "cv/accuracy" in run.metrics and not fraction_fits(
            run.metrics["cv/accuracy"], denominator=n, grid=training_fraction_grid(run.train_examples_pow2)
        ):
            continue
        out.add(n)
    return out


def _privacy_fits(run: Run, *, config: FinetuneConfig, budget) -> bool:
    assert config.privacy is not None
    if (
        run.privacy.delta != default_delta(budget.bucket)
        or run.hyperparameters["dp_sample_rate"] != f"{budget.sample_rate:g}"
    ):
        return False
    plan = plan_dp(config.privacy, budget=budget)
    if plan.noise_multiplier != run.privacy.noise_multiplier:
        return False
    # Early stopping ends a run at an evaluation: ε spent must match one of those step counts.
    taken = range(budget.eval_every, budget.steps + budget.eval_every, budget.eval_every)
    return any(
        math.isclose(
            epsilon_of(
                [(plan.noise_multiplier, plan.sample_rate, min(t, budget.steps))],
                delta=plan.delta,
                accountant=plan.accountant,
            ),
            run.privacy.epsilon_spent,
            rel_tol=1e-9,
        )
        for t in taken
    )


def bucket_of(run: Run) -> set[int]:
    top = run.train_examples_pow2
    return set(range(top // 2 + 1, top + 1))


@pytest.fixture(scope="module")
def dp_report(session_card):
    from finetune_helpers import tiny_model

    target = load_target("digits:classes=5-9", card=session_card, seed=0)  # all labels: a validation split
    config = cfg(
        strategy="linear-probe", steps=6, eval_every=2, patience=1, privacy=PrivacyConfig(epsilon=3.0, accountant="rdp")
    )  # the σ the privacy tests solve too
    outcome = adapt(tiny_model(), target=target, config=config, card=session_card)
    return outcome, outcome.to_run(run_id="r", model_version="m"), config


def test_a_dp_report_leaves_the_whole_bucket(dp_report):
    outcome, run, config = dp_report
    n = outcome.result.train_examples
    assert run.train_examples_pow2 == 512 and n != 512
    found = consistent_sizes(run, config=config, candidates=range(1, 2049))
    assert found == bucket_of(run)
    # Even an operator who knew the exact test-split size for every n learns nothing from the accuracy:
    # every held-out size any n of the bucket can have rounds to the reported value.
    grid = held_out_grid(run.train_examples_pow2, outcome.test_metrics.examples)
    for m in range(math.floor((run.train_examples_pow2 // 2 + 1) * MIN_HELD_OUT_PER_TRAIN), 513):
        assert fraction_fits(run.metrics["accuracy"], denominator=m, grid=grid)


def test_even_an_operator_who_models_the_split_learns_nothing(dp_report):
    outcome, run, config = dp_report
    assert consistent_sizes(run, config=config, candidates=range(1, 2049), held_out=split_model) == bucket_of(run)


def test_the_enumeration_has_teeth(dp_report):
    """The first release's exact fractions (the issue's 52/92) pin n down; rounded to the grid they do not."""
    outcome, run, config = dp_report
    exact = dataclasses.replace(run, metrics={**run.metrics, "accuracy": 52 / 92})
    found = consistent_sizes(exact, config=config, candidates=range(1, 2049), held_out=split_model, exact=True)
    assert 276 in found and len(found) < 0.1 * len(bucket_of(run))
    grid = 1 / int(run.hyperparameters["metric_grid"].split("/")[1])
    rounded = dataclasses.replace(run, metrics={**run.metrics, "accuracy": quantize(52 / 92, grid)})
    assert consistent_sizes(rounded, config=config, candidates=range(1, 2049), held_out=split_model) == bucket_of(run)
    # The first release's δ = 1/n^1.1 (for n > 35,000) named n outright; δ is now the bucket's.
    assert len({min(1e-5, 1 / n**1.1) for n in range(32769, 65537)}) > 30000
    assert len({default_delta(pow2_at_least(n)) for n in range(32769, 65537)}) == 1


def test_a_search_report_leaves_the_whole_bucket(session_card):
    from finetune_helpers import tiny_model

    target = load_target("digits:shift=blur,per_class=9", card=session_card, seed=1)
    target = dataclasses.replace(target, val=None)  # few-label mode
    config = cfg(steps=3, search=SearchConfig(strategies=("linear-probe",), lrs=(1e-2,), folds=3))
    outcome = adapt(tiny_model(), target=target, config=config, card=session_card)
    run = outcome.to_run(run_id="r", model_version="m")
    assert run.train_examples_pow2 == 128 and "cv/accuracy" in run.metrics
    # Few-label mode: the test split (about 180) is more than twice the bucket (64 < 90 < 128), so
    # its own bucket sets the grid and says nothing about n.
    assert run.hyperparameters["metric_grid"] == "1/128"
    found = consistent_sizes(run, config=config.replace(strategy="linear-probe"), candidates=range(1, 513))
    assert found == bucket_of(run)


def test_grids():
    assert fraction_grid(512) == 1 / 32  # the smallest n is 257, its smallest test split 51
    assert training_fraction_grid(512) == 1 / 256
    assert held_out_grid(64, 180) == 1 / 128 and held_out_grid(512, 180) == 1 / 32
    assert quantize(52 / 92, 1 / 32) == 18 / 32


def test_a_private_search_report_carries_no_training_statistic(session_card):
    from finetune_helpers import tiny_model

    target = load_target("digits:shift=blur,per_class=10", card=session_card, seed=0)
    config = cfg(
        steps=2,
        privacy=PrivacyConfig(epsilon=4.0, accountant="rdp"),
        search=SearchConfig(strategies=("linear-probe",), lrs=(1e-2, 3e-2), trials=2),
    )
    outcome = adapt(tiny_model(), target=target, config=config, card=session_card)
    run = outcome.to_run(run_id="r", model_version="m")
    assert outcome.search is not None and outcome.search.private
    assert "cv/accuracy" not in run.metrics  # the trials' scores are noisy, and stay local anyway
    # Neither the number of trials drawn nor which one won (its seed), nor the time they took.
    assert "search_trials" not in run.hyperparameters and run.hyperparameters["seed"] == "0"
    assert run.wall_seconds == 0.0
    assert run.hyperparameters["search_grid"] == "linear-probe@0.01;linear-probe@0.03"
    assert (
        run.privacy.epsilon_spent == pytest.approx(outcome.search.selection.epsilon)
        and run.privacy.epsilon_spent <= 4.0 + 1e-9
    )
