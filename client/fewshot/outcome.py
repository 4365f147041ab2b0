"""What an episodic evaluation reports: accuracies and their intervals, nothing about the data's size.

A report carries, per head and shot count, the mean query accuracy and its
95 % interval (rounded to 3 decimals), the settings, and the labelled pool's
size only as its power-of-two bucket. The means are averages over
episodes × ways × queries predictions — counts the config fixes — so they
say nothing finer about the pool's size than its bucket.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from xfer.client.domain import DeviceKind, Run, RunPrivacy, pow2_at_least
from xfer.client.fewshot.evaluate import EpisodeReport
from xfer.client.finetune.report import round_seconds

STRATEGY = "fewshot"
DECIMALS = 3


@dataclasses.dataclass(frozen=True)
class EpisodePaths:
    """Files the evaluation wrote locally."""

    metrics: Path


@dataclasses.dataclass(frozen=True, eq=False)
class FewShotOutcome:
    """An episodic evaluation of one pulled model on the client's labelled data."""

    report: EpisodeReport
    dataset_id: str
    #: A multi-task source's head the model was evaluated with (its features are the same for every head).
    head: str | None = None
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    paths: EpisodePaths | None = None

    @property
    def size_bucket(self) -> int:
        """The labelled pool's size rounded up to a power of two: the only size the report carries."""
        return pow2_at_least(self.report.pool_examples)

    def metrics(self) -> dict[str, float]:
        """`fewshot/<head>/<ways>way<shots>shot` and its `/ci95`, rounded."""
        out: dict[str, float] = {}
        for s in self.report.scores:
            out[f"fewshot/{s.head}/{s.setting}"] = round(s.mean, DECIMALS)
            out[f"fewshot/{s.head}/{s.setting}/ci95"] = round(s.ci95, DECIMALS)
        return out

    def hyperparameters(self) -> dict[str, str]:
        """The evaluation's settings."""
        c = self.report.config
        out = {
            "episodes": str(c.episodes),
            "ways": str(c.ways),
            "shots": ",".join(map(str, c.shots)),
            "queries": str(c.queries),
            "heads": ",".join(c.heads),
            "seed": str(c.seed),
        }
        if self.finetune_steps is not None:
            out["finetune_steps"] = str(self.finetune_steps)
            out["finetune_lr"] = f"{self.finetune_lr:g}"
        if self.head is not None:
            out["head"] = self.head
        return out

    def to_run(self, *, run_id: str, model_version: str) -> Run:
        """The `Run` to report: scores and settings only."""
        return Run(
            run_id=run_id,
            model_version=model_version,
            strategy=STRATEGY,
            metrics=self.metrics(),
            hyperparameters=self.hyperparameters(),
            privacy=RunPrivacy(),
            train_examples_pow2=self.size_bucket,
            device_kind=DeviceKind.CPU,
            wall_seconds=round_seconds(self.report.seconds),
        )

    def report_fields(self) -> dict[str, Any]:
        """The report as JSON (what `to_run` sends, without run id and model version)."""
        fields = self.to_run(run_id="", model_version="").to_dict()
        for key in ("run_id", "model_version", "name", "create_time"):
            fields.pop(key, None)
        return fields

    def local_metrics(self) -> dict[str, Any]:
        """Exact numbers for metrics.json (never sent)."""
        return {
            "kind": "episodes",
            "pool_examples": self.report.pool_examples,
            "pool_classes": self.report.pool_classes,
            "seconds": self.report.seconds,
            "settings": self.hyperparameters(),
            "scores": [
                {
                    "head": s.head,
                    "ways": s.ways,
                    "shots": s.shots,
                    "queries": s.queries,
                    "episodes": s.episodes,
                    "mean": s.mean,
                    "ci95": s.ci95,
                }
                for s in self.report.scores
            ],
        }

    def summary(self) -> str:
        """The table of means ± 95 % intervals."""
        c = self.report.config
        head = f" (head {self.head})" if self.head else ""
        return (
            f"{c.episodes} episodes per setting, {c.queries} queries per class, on {self.report.pool_examples} "
            f"labelled examples of {self.report.pool_classes} classes{head} "
            f"({self.report.seconds:.1f}s); mean query accuracy ± 95% interval:\n{self.report.table()}"
        )
