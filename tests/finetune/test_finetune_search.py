"""Search: k-fold CV without DP (no test leakage, folds from the few labels), private selection under DP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from finetune_helpers import cfg

from xfer.client.finetune.config import PrivacyConfig, SearchConfig
from xfer.client.finetune.errors import DivergedError, PrivacyBudgetExceededError, SearchError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.search import holdout_assignment, kfold, search
from xfer.client.finetune.selection import (
    ORDERS,
    plan_selection,
    repeat_and_select_rdp,
    sample_trials,
    tnb_gamma,
    tnb_mean,
    tnb_pmf,
)


def test_kfold_partitions_the_training_set():
    y = np.repeat(np.arange(3), 10)
    folds = kfold(y, folds=4, seed=0)
    held_out = np.concatenate([f.val for f in folds])
    assert sorted(held_out.tolist()) == list(range(30))  # each position held out exactly once
    for f in folds:
        assert not set(f.train.tolist()) & set(f.val.tolist())
        assert sorted(np.concatenate([f.train, f.val]).tolist()) == list(range(30))
    with pytest.raises(SearchError, match="--folds"):
        kfold(y, folds=31, seed=0)


def test_search_never_touches_test_or_validation_data_of_the_folds(model, card, small_blur, monkeypatch):
    import xfer.client.finetune.search as search_mod

    seen_train: list[set[int]] = []
    real = search_mod.finetune

    def spy(model, *, train, val=None, **kw):
        seen_train.append(set(train.index.tolist()))
        if val is not None:
            seen_train.append(set(val.index.tolist()))
        return real(model, train=train, val=val, **kw)

    monkeypatch.setattr(search_mod, "finetune", spy)
    test_index = set(small_blur.test.index.tolist())
    config = cfg(
        steps=4, batch_size=32, search=SearchConfig(strategies=("linear-probe", "full"), lrs=(1e-3, 1e-2), folds=3)
    )
    result = search(
        model,
        train=small_blur.train,
        val=small_blur.val,
        test=small_blur.test,
        config=config,
        card=card,
        label_names=small_blur.label_names,
    )
    # Every fold run, plus the final run (and its validation split, unless few-label mode has none).
    assert len(seen_train) == 2 * 2 * 3 + 1 + (small_blur.val is not None)
    for used in seen_train:
        assert not used & test_index
    train_index = small_blur.train.index.numpy()
    for fold in result.folds:
        fold_train, fold_val = set(train_index[fold.train]), set(train_index[fold.val])
        assert not fold_train & fold_val
        assert not (fold_train | fold_val) & test_index
    assert len(result.rows) == 4 and all(len(r.scores) == 3 for r in result.rows)
    assert result.best == max(result.rows, key=lambda r: r.mean)
    assert result.final.strategy == result.best.strategy
    assert result.final.hyperparameters["lr"] == f"{result.best.lr:g}"
    assert result.test_metrics is not None and result.test_metrics.examples == len(small_blur.test)
    assert "mean acc" in result.table() and "*" in result.table()


def test_few_label_search_folds_come_out_of_the_labels(model, card, session_card):
    from xfer.client.finetune.data import load_target

    few = load_target("digits:shift=blur,per_class=3", card=session_card, seed=0)
    config = cfg(steps=3, search=SearchConfig(strategies=("linear-probe",), lrs=(1e-2,), folds=3))
    result = search(
        model, train=few.train, val=None, test=few.test, config=config, card=card, label_names=few.label_names
    )
    assert {len(f.val) for f in result.folds} == {10}  # 30 labels, 3 folds
    assert result.final.val_metrics is None and result.final.train_examples == 30
    # Fold runs use the budget of the whole training set (same bucket, same steps).
    assert result.final.hyperparameters["steps"] == "3"


def test_default_lr_grid(model, card, small_blur):
    result = search(
        model,
        train=small_blur.train,
        card=card,
        label_names=small_blur.label_names,
        config=cfg(steps=2, batch_size=64, search=SearchConfig(strategies=("linear-probe",), folds=2)),
    )
    assert [r.lr for r in result.rows] == pytest.approx([3e-3, 1e-2, 3e-2])


def test_a_learning_rate_that_diverges_loses_the_search_instead_of_ending_it(model, card, small_blur):
    result = search(
        model,
        train=small_blur.train,
        card=card,
        label_names=small_blur.label_names,
        config=cfg(steps=6, search=SearchConfig(strategies=("full",), lrs=(1e30, 1e-3), folds=2)),
    )
    assert [r.mean for r in result.rows][0] == 0.0 and result.best.lr == 1e-3


def test_a_private_search_whose_every_trial_diverges_says_so(model, card, small_blur):
    config = cfg(
        steps=6,
        privacy=PrivacyConfig(epsilon=3.0, accountant="rdp"),
        search=SearchConfig(strategies=("full",), lrs=(1e30,), trials=2),
    )
    with pytest.raises(DivergedError, match="every one of the private search's [0-9]+ trials diverged"):
        search(model, train=small_blur.train, config=config, card=card, label_names=small_blur.label_names)


def test_truncated_negative_binomial():
    for shape in (0.0, 0.5, 1.0, 2.0):
        for mean in (2.0, 6.0):
            gamma = tnb_gamma(mean, shape)
            assert tnb_mean(gamma, shape) == pytest.approx(mean, rel=1e-6)
            p = tnb_pmf(4000, gamma=gamma, shape=shape)
            assert p.sum() == pytest.approx(1.0) and float(np.dot(np.arange(1, 4001), p)) == pytest.approx(
                mean, rel=1e-3
            )
    assert tnb_gamma(4.0, 1.0) == pytest.approx(0.25)  # geometric: E[K] = 1/γ
    rng = np.random.default_rng(0)
    draws = [sample_trials(rng, mean=5.0, shape=0.0) for _ in range(4000)]
    assert min(draws) >= 1 and abs(np.mean(draws) - 5.0) < 0.4


def test_repeat_and_select_is_theorem_2():
    """ε'(λ) = ε(λ) + (1+η)·min_λ̂[(1−1/λ̂)ε(λ̂) + log(1/γ)/λ̂] + log E[K]/(λ−1), then monotone in λ."""
    orders = np.asarray(ORDERS)
    rdp = 0.05 * orders  # a Gaussian mechanism's curve
    mean, shape = 6.0, 0.5
    gamma = tnb_gamma(mean, shape)
    out = repeat_and_select_rdp(rdp, mean=mean, shape=shape)
    best = min((1 - 1 / lh) * 0.05 * lh + math.log(1 / gamma) / lh for lh in orders)
    direct = rdp + (1 + shape) * best + math.log(mean) / (orders - 1)
    assert np.all(out <= direct + 1e-12) and np.all(np.diff(out) >= -1e-12)
    assert out[-1] == pytest.approx(direct[-1])
    assert np.all(out > rdp)  # selection is never free


def test_selection_noise_meets_the_target_and_costs_more_than_one_run():
    from xfer.client.finetune.privacy import _noise_multiplier

    plan = plan_selection(epsilon=2.0, delta=1e-5, sample_rate=0.25, steps=40, mean=4.0, shape=0.0)
    assert 1.9 < plan.epsilon <= 2.0 + 1e-9
    assert plan.trial_epsilon < plan.epsilon
    assert plan.noise_multiplier > _noise_multiplier(2.0, 1e-5, 0.25, 40, "rdp")
    # The held-out count's noise never costs more than the training it rides along with.
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=0.25, noise_multiplier=plan.noise_multiplier, steps=40, orders=list(ORDERS))
    assert all(o / (2 * plan.score_noise**2) <= r * (1 + 1e-9) for o, r in zip(ORDERS, rdp))


def test_holdout_assignment_is_per_example():
    a = holdout_assignment(1000, fraction=1 / 3, seed=0)
    b = holdout_assignment(1001, fraction=1 / 3, seed=0)
    assert np.array_equal(a, b[:1000])  # adding an example leaves every other example's part alone
    assert 0.28 < a.mean() < 0.39


def test_private_search_is_charged_as_a_whole_or_refused(tmp_path, model, card, small_blur):
    ledger = PrivacyLedger.in_cache(tmp_path)
    config = cfg(
        steps=4,
        batch_size=32,
        privacy=PrivacyConfig(epsilon=3.0, accountant="rdp", budget=2.0),
        search=SearchConfig(strategies=("linear-probe",), lrs=(1e-2, 3e-2), trials=2),
    )
    with pytest.raises(PrivacyBudgetExceededError, match="privacy budget exceeded"):
        search(
            model,
            train=small_blur.train,
            test=small_blur.test,
            config=config,
            card=card,
            label_names=small_blur.label_names,
            ledger=ledger,
            dataset_id="d",
        )
    assert ledger.status("d").spent == 0  # refused before anything trained

    config = config.replace(privacy=PrivacyConfig(epsilon=3.0, accountant="rdp", budget=10.0))
    result = search(
        model,
        train=small_blur.train,
        test=small_blur.test,
        config=config,
        card=card,
        label_names=small_blur.label_names,
        ledger=ledger,
        dataset_id="d",
    )
    assert result.private and result.epsilon_total == pytest.approx(result.selection.epsilon)
    assert result.epsilon_total <= 3.0 + 1e-9
    assert ledger.status("d").spent == pytest.approx(result.epsilon_total)
    # The winner's model is the trial's own, trained with the selection's noise on the training part only.
    assert result.final.privacy.noise_multiplier == pytest.approx(result.selection.noise_multiplier)
    assert result.final.train_examples < len(small_blur.train)
    assert len(result.rows) == result.trials >= 1 and result.best in result.rows
    assert result.test_metrics is not None
