"""k-fold cross-validation: disjoint folds, no test leakage, winner retrained, DP cost accounted."""

from __future__ import annotations

import numpy as np
import pytest

from xfer.client.finetune.errors import PrivacyBudgetExceededError, SearchError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.privacy import PrivacyConfig, epsilon_of
from xfer.client.finetune.search import kfold, search


def test_kfold_partitions_the_training_set():
    y = np.repeat(np.arange(3), 10)
    folds = kfold(y, folds=4, seed=0)
    held_out = np.concatenate([f.val for f in folds])
    assert sorted(held_out.tolist()) == list(range(30))  # each position held out exactly once
    for f in folds:
        assert not set(f.train.tolist()) & set(f.val.tolist())
        assert sorted(np.concatenate([f.train, f.val]).tolist()) == list(range(30))
    with pytest.raises(SearchError, match="--folds"):
        kfold(y, folds=1, seed=0)


def test_search_never_touches_test_data(model, card, small_blur, monkeypatch):
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
    result = search(model, train=small_blur.train, val=small_blur.val, test=small_blur.test,
                    strategies=["linear-probe", "full"], lrs=[1e-3, 1e-2], folds=3, label_names=small_blur.label_names,
                    card=card, epochs=1, batch_size=32, device="cpu")
    # Every fold run, plus the final run (few-label mode: no validation split, so the final run sees only train).
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


def test_default_lr_grid(model, card, small_blur):
    result = search(model, train=small_blur.train, strategies=["linear-probe"], folds=2,
                    label_names=small_blur.label_names, card=card, epochs=1, batch_size=64, device="cpu")
    assert [r.lr for r in result.rows] == pytest.approx([3e-3, 1e-2, 3e-2])


def test_dp_search_is_charged_by_composition_or_refused(tmp_path, model, card, small_blur):
    ledger = PrivacyLedger.in_cache(tmp_path)
    privacy = PrivacyConfig(epsilon=1.0, accountant="rdp")
    with pytest.raises(PrivacyBudgetExceededError, match="privacy budget exceeded"):
        search(model, train=small_blur.train, strategies=["linear-probe"], lrs=[1e-2], folds=2,
               label_names=small_blur.label_names, card=card, epochs=1, batch_size=64, device="cpu",
               privacy=privacy, ledger=ledger, dataset_id="d", privacy_budget=1.5)
    assert ledger.status("d").spent == 0  # refused before anything trained

    result = search(model, train=small_blur.train, strategies=["linear-probe"], lrs=[1e-2], folds=2,
                    label_names=small_blur.label_names, card=card, epochs=1, batch_size=64, device="cpu",
                    privacy=privacy, ledger=ledger, dataset_id="d", privacy_budget=10.0)
    # Three runs (two folds + final) of ε≈1 each compose to more than one run, less than their sum.
    assert 1.0 < result.epsilon_total < 3.0
    assert ledger.status("d").spent == pytest.approx(result.epsilon_total)
    # The total is the accountant's composition of every run's history.
    histories = [h for h in result.final.dp_history]
    assert result.epsilon_total > epsilon_of(histories, delta=result.delta, accountant="rdp")
