"""What `xfer rank` found, and what it may report: one run per candidate with its scores only.

A candidate's report carries LogME (3 decimals) and the leave-one-out k-NN
accuracy on the grid of the training set's size bucket (`report.py`: the
accuracy is a fraction c/n of the training examples, so it is rounded to
2^-k with 2^k at most the smallest n in the bucket), the settings, the
candidate's place in the ranking, and the training-set size only as its
power-of-two bucket. No features, labels or per-class numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from xfer.client.domain import DeviceKind, Run, RunPrivacy, pow2_at_least
from xfer.client.finetune.report import quantize, round_seconds, training_fraction_grid
from xfer.client.rank.scores import SourceScore, ranking

STRATEGY = "rank"
DECIMALS = 3


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate source: its reference, resolved version name, scores and how long scoring took."""

    ref: str
    model_version: str
    score: SourceScore
    seconds: float
    #: Bytes of its ONNX artifact pulled over the wire (0 when the cache had it).
    transferred_bytes: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class RankOutcome:
    """Every candidate's scores and the ranking by `by`."""

    candidates: tuple[Candidate, ...]
    by: str
    data: str
    seed: int

    @property
    def order(self) -> list[Candidate]:
        """Candidates, best first."""
        by_ref = {c.ref: c for c in self.candidates}
        return [by_ref[r] for r in ranking({c.ref: c.score for c in self.candidates}, by=self.by)]

    def positions(self, criterion: str | None = None) -> dict[str, int]:
        """ref -> 1-based place when ranked by `criterion` (default: the outcome's own)."""
        order = ranking({c.ref: c.score for c in self.candidates}, by=criterion or self.by)
        return {ref: i + 1 for i, ref in enumerate(order)}

    def to_runs(self, *, run_id: str) -> list[Run]:
        """One report per candidate, best first (run ids `<run_id>-<place>`): scores and settings only."""
        place = self.positions()
        runs = []
        for c in self.order:
            bucket = pow2_at_least(c.score.examples)
            metrics = {
                "rank/logme": round(c.score.logme, DECIMALS),
                "rank/knn_accuracy": quantize(c.score.knn_accuracy, training_fraction_grid(bucket)),
            }
            hyper = {
                "by": self.by,
                "k": str(c.score.k),
                "candidates": str(len(self.candidates)),
                "place": str(place[c.ref]),
                "seed": str(self.seed),
                "metric_grid": f"1/{round(1 / training_fraction_grid(bucket))}",
            }
            runs.append(
                Run(
                    run_id=f"{run_id}-{place[c.ref]}",
                    model_version=c.model_version,
                    strategy=STRATEGY,
                    metrics=metrics,
                    hyperparameters=hyper,
                    privacy=RunPrivacy(),
                    train_examples_pow2=bucket,
                    device_kind=DeviceKind.CPU,
                    wall_seconds=round_seconds(c.seconds),
                )
            )
        return runs

    def report_fields(self) -> list[dict[str, Any]]:
        """Every report as JSON (without run ids)."""
        out = []
        for run in self.to_runs(run_id="x"):
            fields = run.to_dict()
            for key in ("run_id", "name", "create_time"):
                fields.pop(key, None)
            out.append(fields)
        return out

    def rows(self) -> list[list[Any]]:
        """Table rows, best first: place, ref, LogME, k-NN accuracy, place by the other criterion."""
        other = "knn" if self.by == "logme" else "logme"
        other_place = self.positions(other)
        return [
            [
                i + 1,
                c.ref,
                round(c.score.logme, 4),
                round(c.score.knn_accuracy, 4),
                other_place[c.ref],
                c.score.feature_dim,
            ]
            for i, c in enumerate(self.order)
        ]

    def summary(self) -> str:
        """One line per candidate, best first."""
        other = "k-NN" if self.by == "logme" else "LogME"
        lines = [
            f"ranked {len(self.candidates)} candidates by {self.by} on {self.candidates[0].score.examples} "
            f"labelled training examples of {self.data}:"
        ]
        for place, ref, lm, knn, other_place, dim in self.rows():
            lines.append(
                f"  {place}. {ref}: LogME {lm:.4f}, k-NN accuracy {knn:.4f} ({other} places it "
                f"{other_place}; {dim} features)"
            )
        return "\n".join(lines)
