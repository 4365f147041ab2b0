"""What `xfer rank` may report: scores and settings, the size only as its power-of-two bucket."""

from __future__ import annotations

import pytest

from xfer.client.rank.command import candidates_from
from xfer.client.rank.errors import RankError
from xfer.client.rank.outcome import Candidate, RankOutcome
from xfer.client.rank.scores import SourceScore, ranking, score_features


def _outcome(by: str = "logme", examples: int = 300) -> RankOutcome:
    scores = {
        "a": SourceScore(logme=-0.61234, knn_accuracy=0.9012, examples=examples, feature_dim=32, k=5),
        "b": SourceScore(logme=-0.41234, knn_accuracy=0.7712, examples=examples, feature_dim=16, k=5),
        "c": SourceScore(logme=-0.91234, knn_accuracy=0.8512, examples=examples, feature_dim=64, k=5),
    }
    return RankOutcome(
        candidates=tuple(
            Candidate(ref=r, model_version=f"models/{r}/versions/1", score=s, seconds=1.234) for r, s in scores.items()
        ),
        by=by,
        data="x.npz",
        seed=0,
    )


def test_ranking_by_either_criterion():
    by_logme, by_knn = _outcome("logme"), _outcome("knn")
    assert [c.ref for c in by_logme.order] == ["b", "a", "c"]
    assert [c.ref for c in by_knn.order] == ["a", "c", "b"]
    assert by_logme.rows()[0] == [1, "b", -0.4123, 0.7712, 3, 16]  # b is 3rd by k-NN
    assert "1. b" in by_logme.summary()
    tied = {"x": SourceScore(0.0, 0.5, 10, 2, 3), "y": SourceScore(0.0, 0.5, 10, 2, 3)}
    assert ranking(tied, by="knn") == ["x", "y"]  # ties keep the given order
    with pytest.raises(RankError, match="valid: logme, knn"):
        tied["x"].value("auc")


def test_reports_carry_scores_and_the_size_bucket_only():
    runs = {r.run_id: r for r in _outcome().to_runs(run_id="rk")}
    assert set(runs) == {"rk-1", "rk-2", "rk-3"}
    best = runs["rk-1"]
    assert best.model_version == "models/b/versions/1" and best.strategy == "rank"
    assert set(best.metrics) == {"rank/logme", "rank/knn_accuracy"}
    assert best.metrics["rank/logme"] == -0.412
    assert best.train_examples_pow2 == 512 and not best.privacy.dp
    # 300 examples: the bucket (256, 512] holds sizes from 257, so the accuracy is on a 1/256 grid at most.
    grid = float(best.hyperparameters["metric_grid"].split("/")[1])
    assert grid <= 257 and (best.metrics["rank/knn_accuracy"] * grid) == pytest.approx(round(0.7712 * grid))
    assert best.hyperparameters["place"] == "1" and best.hyperparameters["candidates"] == "3"
    assert not any("300" in v for v in best.hyperparameters.values())
    # Every size in one bucket gives the same report apart from the scores.
    other = {r.run_id: r for r in _outcome(examples=400).to_runs(run_id="rk")}["rk-1"]
    assert other.train_examples_pow2 == best.train_examples_pow2 and other.hyperparameters == best.hyperparameters


def test_score_features_and_candidates_say_what_is_wrong():
    import numpy as np

    with pytest.raises(RankError, match="two classes"):
        score_features(np.ones((4, 2)), np.zeros(4, dtype=int))
    with pytest.raises(RankError, match="NaN"):
        score_features(np.full((4, 2), np.nan), np.array([0, 1, 0, 1]))
    assert candidates_from(" a, b@stable ,a,,c:2") == ["a", "b@stable", "c:2"]
    with pytest.raises(RankError, match="at least one"):
        candidates_from(" , ")
    with pytest.raises(RankError, match="at most 32"):
        candidates_from(",".join(f"m{i}" for i in range(33)))
