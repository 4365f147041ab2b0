"""A local privacy ledger: ε spent per data set, refusing runs past a budget.

The ledger is one JSON file in the cache dir. Every read-modify-write holds
an exclusive lock on a side file (`filelock`, so concurrent `xfer finetune`
processes serialise on any OS), and the new content is written to a temp
file, fsynced and moved into place with `os.replace`, so readers never see
a torn file. Torch-free: the ONNX head fit uses the same ledger.

Across runs, ε adds up (basic sequential composition; δ adds up too): a
conservative bound that holds whatever the runs were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from xfer.client.finetune.errors import PrivacyBudgetExceededError
from xfer.models.files import write_json_atomic

log = logging.getLogger(__name__)

LEDGER_NAME = "privacy_ledger.json"


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    entry_id: str
    epsilon: float
    delta: float
    time: float
    note: str


@dataclasses.dataclass(frozen=True)
class BudgetStatus:
    dataset_id: str
    budget: float | None
    spent: float
    delta_spent: float

    @property
    def remaining(self) -> float | None:
        """ε left under the budget (None: no budget recorded)."""
        return None if self.budget is None else max(0.0, self.budget - self.spent)


class PrivacyLedger:
    """ε spent per data-set id, persisted in `path`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def in_cache(cls, cache_dir: str | os.PathLike) -> PrivacyLedger:
        """The ledger kept in a cache dir."""
        return cls(Path(cache_dir) / LEDGER_NAME)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_name(self.path.name + ".lock")):
            state = self._read()
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                write_json_atomic(self.path, state)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                state = json.load(f)
        except FileNotFoundError:
            return {"version": 1, "datasets": {}}
        if not isinstance(state, dict) or "datasets" not in state:
            raise ValueError(f"{self.path} is not a privacy ledger; move it away to start a new one")
        return state

    @staticmethod
    def _status(state: dict[str, Any], dataset_id: str, budget: float | None) -> BudgetStatus:
        record = state["datasets"].get(dataset_id, {})
        entries = record.get("entries", [])
        if budget is None:
            budget = record.get("budget")
        return BudgetStatus(dataset_id, budget, sum(e["epsilon"] for e in entries), sum(e["delta"] for e in entries))

    def status(self, dataset_id: str, *, budget: float | None = None) -> BudgetStatus:
        """Spent and remaining ε for a data set (`budget` overrides the recorded one)."""
        with self._locked() as state:
            return self._status(state, dataset_id, budget)

    def charge(
        self, dataset_id: str, *, epsilon: float, delta: float, budget: float | None = None, note: str = ""
    ) -> LedgerEntry:
        """Records ε spent on `dataset_id`, or raises if it would pass the budget.

        `budget`, when given, becomes the data set's recorded budget; otherwise
        the recorded one applies (none recorded: no limit, spending still logged).
        Check and record happen under one lock, so two concurrent runs cannot
        both squeeze under the budget.
        """
        with self._locked() as state:
            status = self._status(state, dataset_id, budget)
            if status.budget is not None and status.spent + epsilon > status.budget + 1e-9:
                raise PrivacyBudgetExceededError(
                    f"privacy budget exceeded for data set {dataset_id!r}: this needs epsilon={epsilon:.3g} but "
                    f"only {status.remaining:.3g} of {status.budget:.3g} is left ({status.spent:.3g} spent). "
                    f"Lower --dp-epsilon, skip --search, or use fresh data."
                )
            record = state["datasets"].setdefault(dataset_id, {"entries": []})
            if budget is not None:
                record["budget"] = budget
            entry = LedgerEntry(uuid.uuid4().hex, float(epsilon), float(delta), time.time(), note)
            record["entries"].append(dataclasses.asdict(entry))
            log.info("ledger: charged epsilon=%.4g to %s", epsilon, dataset_id)
            return entry

    def settle(self, dataset_id: str, entry_id: str, *, epsilon: float, delta: float) -> None:
        """Replaces a reserved charge by what was actually spent (never more than reserved)."""
        with self._locked() as state:
            for e in state["datasets"].get(dataset_id, {}).get("entries", []):
                if e["entry_id"] == entry_id:
                    e["epsilon"] = min(e["epsilon"], float(epsilon))
                    e["delta"] = min(e["delta"], float(delta))
                    return
            raise KeyError(f"no ledger entry {entry_id} for {dataset_id!r}")

    def entries(self, dataset_id: str) -> list[LedgerEntry]:
        """Every charge recorded for a data set, oldest first."""
        with self._locked() as state:
            return [LedgerEntry(**e) for e in state["datasets"].get(dataset_id, {}).get("entries", [])]
