"""Label-free selection and the source-free path through `adapt`: choices without labels, reports without n."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from finetune_helpers import cfg

from xfer.client.finetune import FinetuneConfig, PrivacyConfig, SearchConfig, adapt
from xfer.client.finetune.config import LABEL_FREE_CRITERIA
from xfer.client.finetune.data import TargetData, TensorData, load_target
from xfer.client.finetune.errors import DataError, PrivacyError, SearchError
from xfer.client.finetune.report import REPORTABLE_LABEL_FREE, fraction_grid
from xfer.client.finetune.sfda_criteria import (
    SND_MAX_EXAMPLES,
    get_criterion,
    information_maximization_score,
    list_criteria,
    negative_entropy,
    soft_neighbourhood_density,
)
from xfer.client.finetune.sfda_selection import (
    LabelFreeSearch,
    select_source_free,
    source_free_training_data,
    spearman,
)

GRID = SearchConfig(strategies=("tent", "shot"), lrs=(1e-4, 1e-3))


@pytest.fixture(scope="module")
def unlabelled(session_card) -> TargetData:
    return load_target("digits:shift=blur,severity=5,unlabeled", card=session_card, seed=0)


def test_criteria_registry_matches_the_torch_free_names():
    assert tuple(list_criteria()) == LABEL_FREE_CRITERIA
    with pytest.raises(SearchError, match="valid: im, snd, entropy"):
        get_criterion("accuracy")
    with pytest.raises(SearchError):
        FinetuneConfig(criterion="accuracy")


def test_criteria_prefer_confident_diverse_predictions():
    k = 4
    confident = torch.eye(k).repeat(8, 1) * 20
    uncertain = torch.zeros(32, k)
    collapsed = torch.zeros(32, k)
    collapsed[:, 0] = 20
    im = information_maximization_score
    assert im(confident) > im(uncertain) and im(confident) > im(collapsed)
    assert im(confident) == pytest.approx(math.log(k), abs=1e-3)
    assert negative_entropy(confident) > negative_entropy(uncertain)
    # Entropy alone cannot tell collapse from a good solution; IM can.
    assert negative_entropy(collapsed) == pytest.approx(negative_entropy(confident), abs=1e-6)
    # SND is how dense each prediction's neighbourhood is: four tight clusters of eight give log 7 (the seven
    # cluster mates share the mass), and a collapse onto one class is denser still, log 31: SND alone can
    # prefer a collapse, which is why IM is the default criterion.
    assert soft_neighbourhood_density(confident) == pytest.approx(math.log(7), abs=1e-3)
    assert soft_neighbourhood_density(collapsed) == pytest.approx(math.log(31), abs=1e-3)


def test_snd_reads_a_fixed_subset_of_a_large_split():
    logits = torch.randn(SND_MAX_EXAMPLES + 100, 3, generator=torch.Generator().manual_seed(0))
    assert soft_neighbourhood_density(logits) == soft_neighbourhood_density(logits.clone())


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)


def _relabelled(data: TensorData, labels: torch.Tensor | None) -> TensorData:
    return TensorData(data.x, labels, data.index)


def test_selection_never_sees_labels(model, card, session_card):
    """The same choice, rows and model whatever labels come with the data — true, permuted, or none at all.

    If any label reached a choice (the LR, the checkpoint), permuting them would change it.
    """
    labelled = load_target("digits:shift=blur,severity=5", card=session_card, seed=0)
    g = torch.Generator().manual_seed(1)
    variants = {
        "true": (labelled.train, labelled.val),
        "permuted": (
            _relabelled(labelled.train, labelled.train.y[torch.randperm(len(labelled.train), generator=g)]),
            _relabelled(labelled.val, labelled.val.y[torch.randperm(len(labelled.val), generator=g)]),
        ),
        "none": (labelled.train.without_labels(), labelled.val.without_labels()),
    }
    found = {}
    for name, (train, val) in variants.items():
        found[name] = select_source_free(
            model,
            train=train,
            val=val,
            test=labelled.test,
            card=card,
            label_names=labelled.label_names,
            config=cfg(
                strategy="shot",
                steps=6,
                batch_size=32,
                eval_every=2,
                search=SearchConfig(strategies=("shot",), lrs=(1e-4, 3e-3)),
            ),
        )
    rows = {name: [(r.strategy, r.lr, r.value, r.step) for r in f.rows] for name, f in found.items()}
    assert rows["true"] == rows["permuted"] == rows["none"]
    picked = {name: (f.best.lr, f.best.step) for name, f in found.items()}
    assert len(set(picked.values())) == 1
    for name in ("permuted", "none"):
        for p, q in zip(found["true"].final.model.parameters(), found[name].final.model.parameters()):
            assert torch.equal(p, q)
    # The test split (labelled) is scored once, after the choice.
    assert found["true"].test_metrics is not None and found["true"].test_metrics.examples == len(labelled.test)


def test_selection_picks_the_best_criterion_over_lr_and_steps(model, card, unlabelled):
    found = select_source_free(
        model,
        train=unlabelled.train,
        val=unlabelled.val,
        test=unlabelled.test,
        card=card,
        label_names=unlabelled.label_names,
        config=cfg(steps=6, batch_size=32, eval_every=3, search=GRID),
    )
    assert [(r.strategy, r.lr) for r in found.rows] == [(s, lr) for s in ("tent", "shot") for lr in (1e-4, 1e-3)]
    assert found.best.value == max(r.value for r in found.rows)
    assert found.final.hyperparameters["lr"] == f"{found.best.lr:g}"
    assert found.final.best_step == found.best.step and found.final.strategy == found.best.strategy
    assert "im" in found.table() and "*" in found.table()


def test_selection_refuses_dp_mixed_grids_and_missing_validation(model, card, unlabelled):
    with pytest.raises(PrivacyError, match="add up over the grid"):
        select_source_free(
            model,
            train=unlabelled.train,
            val=unlabelled.val,
            card=card,
            config=cfg(steps=2, search=GRID, privacy=PrivacyConfig(epsilon=1.0)),
        )
    with pytest.raises(SearchError, match="validation split"):
        select_source_free(model, train=unlabelled.train, val=None, card=card, config=cfg(steps=2, search=GRID))
    target = dataclasses.replace(unlabelled)
    with pytest.raises(SearchError, match="cannot mix"):
        adapt(model, target=target, card=card, config=cfg(steps=2, search=SearchConfig(strategies=("shot", "lp-ft"))))


def test_supervised_search_on_unlabelled_data_names_the_source_free_strategies(model, card, unlabelled):
    with pytest.raises(DataError, match="--search --strategy shot,aad,nrc"):
        adapt(model, target=unlabelled, card=card, config=cfg(steps=2, search=SearchConfig()))


def test_adapt_reports_what_it_can_without_labels(model, card, unlabelled, tmp_path):
    outcome = adapt(
        model,
        target=unlabelled,
        card=card,
        out_dir=tmp_path / "out",
        config=cfg(strategy="shot", steps=6, batch_size=32),
    )
    run = outcome.to_run(run_id="sfda-1", model_version="digits-convnet:1")
    n = len(unlabelled.train)
    assert run.train_examples_pow2 == 1 << (n - 1).bit_length()
    assert run.strategy == "shot" and run.hyperparameters["labels"] == "none"
    assert run.hyperparameters["criterion"] == "im" and "checkpoint_step" in run.hyperparameters
    # The test split has labels (the spec hid only train and val): accuracy is reported on its grid.
    assert {"accuracy", "macro_f1", "loss", "ece"} <= set(run.metrics)
    free = {k for k in run.metrics if k.startswith("label_free/")}
    assert free == {f"label_free/{name}" for name in REPORTABLE_LABEL_FREE}  # never SND (it grows with log n)
    grid = fraction_grid(run.train_examples_pow2)
    for key in free:
        assert run.metrics[key] / grid == round(run.metrics[key] / grid)
    assert "cv/accuracy" not in run.metrics and not run.privacy.dp
    local = (tmp_path / "out" / "metrics.json").read_text()
    assert '"label_free"' in local and '"snd"' in local  # exact values stay on the machine


def test_adapt_without_any_labels_reports_no_accuracy(model, card, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "images.npz", x=x)
    target = load_target(str(tmp_path / "images.npz"), card=card, seed=0)
    assert target.test is None and target.train.y is None
    outcome = adapt(model, target=target, card=card, config=cfg(strategy="tent", steps=3))
    run = outcome.to_run(run_id="sfda-2", model_version="digits-convnet:1")
    assert set(run.metrics) == {f"label_free/{name}" for name in REPORTABLE_LABEL_FREE}
    assert "metric_grid" not in run.hyperparameters
    assert "no labelled test split" in outcome.summary() and "label-free im" in outcome.summary()


def test_label_free_search_through_adapt(model, card, unlabelled):
    outcome = adapt(
        model,
        target=unlabelled,
        card=card,
        config=cfg(steps=4, batch_size=32, search=SearchConfig(strategies=("shot",), lrs=(1e-4, 1e-3))),
    )
    assert isinstance(outcome.search, LabelFreeSearch)
    hyper = outcome.hyperparameters()
    assert hyper["search"] == "label-free" and hyper["search_criterion"] == "im"
    assert hyper["search_grid"] == "shot@0.0001;shot@0.001"
    assert "cv/accuracy" not in outcome.metrics()


def test_few_label_targets_adapt_on_all_their_images(session_card):
    few = load_target("digits:shift=blur,per_class=5", card=session_card, seed=0)
    data = source_free_training_data(few)
    assert data.y is None and len(data) == len(few.train) + len(few.unlabeled)
