"""Episodic N-way K-shot evaluation: intervals, heads, paired draws, what is reported."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xfer.client.fewshot.config import EpisodeConfig
from xfer.client.fewshot.errors import FewShotError
from xfer.client.fewshot.evaluate import ci95, evaluate_episodes
from xfer.client.fewshot.heads import logreg_logits, prototype_logits
from xfer.client.fewshot.outcome import FewShotOutcome


def _clusters(seed: int = 0, *, classes: int = 8, per_class: int = 30, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 12))
    y = np.repeat(np.arange(classes), per_class)
    return centres[y] + spread * rng.normal(size=(len(y), 12)), y


def test_ci95_is_the_normal_interval_of_the_mean():
    values = np.array([0.2, 0.4, 0.6, 0.8])
    assert ci95(values) == pytest.approx(1.96 * np.std(values, ddof=1) / 2)
    assert ci95(np.array([0.5])) == 0.0


def test_prototype_head_is_the_nearest_centred_class_mean():
    rng = np.random.default_rng(0)
    support, support_y = rng.normal(size=(10, 6)), np.repeat(np.arange(5), 2)
    query = rng.normal(size=(7, 6))
    unit = support / np.linalg.norm(support, axis=1, keepdims=True)
    means = np.stack([unit[support_y == c].mean(0) for c in range(5)])
    centre = unit.mean(0)
    q = query / np.linalg.norm(query, axis=1, keepdims=True) - centre
    m = means - centre
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T
    assert (prototype_logits(support, support_y, query, 5).argmax(1) == cos.argmax(1)).all()
    assert logreg_logits(support, support_y, query, 5).shape == (7, 5)


def test_separable_features_score_near_one_and_noise_near_chance_with_honest_intervals():
    x, y = _clusters()
    config = EpisodeConfig(episodes=60, ways=5, shots=(1, 5), queries=5, seed=3)
    good = evaluate_episodes(x, y, config=config)
    assert good.score("prototype", 5).mean > 0.95 and good.score("logreg", 1).mean > 0.85
    noise = evaluate_episodes(np.random.default_rng(1).normal(size=x.shape), y, config=config)
    for head in ("prototype", "logreg"):
        s = noise.score(head, 5)
        assert s.episodes == 60 and abs(s.mean - 0.2) < 3 * s.ci95 + 0.02  # chance is 1/5
        assert s.ci95 == pytest.approx(1.96 * s.accuracies.std(ddof=1) / math.sqrt(60))
    assert "5-way 1-shot" in good.table() and good.pool_examples == len(y) and good.pool_classes == 8


def test_heads_score_the_same_episodes_and_a_seed_repeats_them():
    x, y = _clusters(spread=1.5)
    config = EpisodeConfig(episodes=30, ways=4, shots=(1,), queries=3, seed=0)
    calls: list[tuple[int, ...]] = []

    def spy(episode):
        calls.append(tuple(episode.query))
        return prototype_logits(x[episode.support], episode.support_y, x[episode.query], 4)

    report = evaluate_episodes(
        x,
        y,
        config=EpisodeConfig(episodes=30, ways=4, shots=(1,), queries=3, seed=0, heads=("prototype", "finetune")),
        episode_heads={"finetune": spy},
    )
    # The spy computed the prototype head itself on the episodes it was given: same draws, same accuracies.
    assert (report.score("finetune", 1).accuracies == report.score("prototype", 1).accuracies).all()
    again = evaluate_episodes(x, y, config=config)
    assert (again.score("prototype", 1).accuracies == report.score("prototype", 1).accuracies).all()
    assert len(calls) == 30


def test_bad_settings_and_data_say_what_to_change():
    x, y = _clusters(classes=3)
    with pytest.raises(FewShotError, match="lower --ways"):
        evaluate_episodes(x, y, config=EpisodeConfig(episodes=2, ways=5, shots=(1,), queries=2))
    with pytest.raises(FewShotError, match="unknown episode head"):
        EpisodeConfig(heads=("knn",))
    with pytest.raises(FewShotError, match="repeat"):
        EpisodeConfig(shots=(1, 1))
    with pytest.raises(FewShotError, match="evaluate_model_episodes"):
        evaluate_episodes(x, y, config=EpisodeConfig(episodes=2, ways=2, shots=(1,), queries=2, heads=("finetune",)))
    with pytest.raises(FewShotError, match="NaN"):
        bad = x.copy()
        bad[:] = np.nan
        evaluate_episodes(bad, y, config=EpisodeConfig(episodes=2, ways=2, shots=(1,), queries=2, heads=("logreg",)))


def test_the_report_carries_means_intervals_settings_and_the_size_bucket_only():
    x, y = _clusters(per_class=25)  # 200 examples
    report = evaluate_episodes(x, y, config=EpisodeConfig(episodes=20, ways=5, shots=(1, 5), queries=4))
    run = FewShotOutcome(report=report, dataset_id="d").to_run(run_id="r", model_version="models/m/versions/1")
    assert run.train_examples_pow2 == 256 and run.strategy == "fewshot" and not run.privacy.dp
    assert set(run.metrics) == {
        f"fewshot/{h}/5way{k}shot{s}" for h in ("prototype", "logreg") for k in (1, 5) for s in ("", "/ci95")
    }
    assert all(round(v, 3) == v for v in run.metrics.values())
    assert "200" not in str(run.hyperparameters)
