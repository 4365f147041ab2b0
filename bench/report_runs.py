"""Units of work of the transfer report and the processes that execute them.

A `RunSpec` is one adaptation run (pull, fine-tune, score on test, report);
a `SearchSpec` is one k-fold search; a `SourceSpec` trains or imports one
source model; a `FeatureSpec` computes a source's frozen features of a
target pool once, which every `ProbeSpec` (a logistic-regression probe on
them) reads. They are plain frozen dataclasses, so equal specs from
different sections run once (`Runner` memoises by value). Each worker
process is an edge client: its own `Client` (client token) over the shared
cache, into which the main process pulled every source model first.

Every call into the fine-tuning engine (`finetune`, `search`) is in
`_train` and `_search_call`, so a change of the engine's API is one edit.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from report_setup import IMPORT, SOURCES, TARGETS, epochs_for

log = logging.getLogger(__name__)

PRETRAINED = "pretrained"
DATA_CACHE = 4
RANDOM = "random"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Train (or import) one source model into `out_dir` (operator side)."""

    source: str
    arch: str
    epochs: int
    lr: float
    seed: int
    out_dir: str
    max_examples: int = 15_000
    image_size: int = 64  # imported models only

    def describe(self) -> str:
        """One line for progress output."""
        src = SOURCES[self.source]
        if src.kind == IMPORT:
            return f"import source {src.model_id} ({src.weights} at {self.image_size}x{self.image_size})"
        return f"train source {src.model_id} ({self.arch}, {self.epochs} epochs on {self.max_examples:,} images)"


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Compute the frozen features of a target's whole pool with its (pulled) source model, once."""

    target: str
    out_path: str

    def describe(self) -> str:
        """One line for progress output."""
        return f"features of {TARGETS[self.target].data} by {SOURCES[TARGETS[self.target].source].model_id}"


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """A linear probe (logistic regression) on frozen features of one seed's few-label training split."""

    target: str
    seed: int
    per_class: int | None
    features: FeatureSpec

    def describe(self) -> str:
        """One line for progress output."""
        pc = "all" if self.per_class is None else f"{self.per_class}/class"
        return f"{self.target} {pc} frozen-feature probe seed={self.seed}"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One adaptation run. `lr` is always explicit (the strategy default is resolved by `run_spec`)."""

    target: str
    strategy: str
    seed: int
    per_class: int | None
    lr: float
    steps: int
    batch_size: int
    init: str = PRETRAINED
    epsilon: float | None = None
    max_grad_norm: float = 1.0

    def describe(self) -> str:
        """One line for progress output."""
        pc = "all" if self.per_class is None else f"{self.per_class}/class"
        dp = "" if self.epsilon is None else f" ε={self.epsilon:g}"
        return (
            f"{self.target} {pc} {self.init} {self.strategy} lr={self.lr:g} bs={self.batch_size}{dp} seed={self.seed}"
        )

    def run_id(self) -> str:
        """A deterministic run id: a retried report of the same run is stored once."""
        return "report-" + hashlib.sha256(repr(self).encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """One cross-validated search of strategy x LR on a target's training split."""

    target: str
    seed: int
    per_class: int | None
    strategies: tuple[str, ...]
    folds: int
    steps: int
    batch_size: int

    def describe(self) -> str:
        """One line for progress output."""
        return (
            f"search {self.target} over {len(self.strategies)} strategies x 3 LRs, {self.folds} folds, seed={self.seed}"
        )

    def run_id(self) -> str:
        """A deterministic run id: a retried report of the same run is stored once."""
        return "report-search-" + hashlib.sha256(repr(self).encode()).hexdigest()[:24]


Spec = SourceSpec | FeatureSpec | ProbeSpec | RunSpec | SearchSpec


def run_spec(
    *,
    target: str,
    strategy: str,
    seed: int,
    per_class: int | None,
    steps: int,
    batch_size: int,
    lr: float | None = None,
    init: str = PRETRAINED,
    epsilon: float | None = None,
    max_grad_norm: float = 1.0,
) -> RunSpec:
    """A RunSpec with `lr=None` resolved to the strategy's default, so equal runs compare equal."""
    from xfer.client.finetune import get_strategy

    lr = float(lr) if lr is not None else float(get_strategy(strategy).default_lr)
    return RunSpec(
        target=target,
        strategy=strategy,
        seed=seed,
        per_class=per_class,
        lr=lr,
        steps=steps,
        batch_size=batch_size,
        init=init,
        epsilon=epsilon,
        max_grad_norm=max_grad_norm,
    )


@dataclasses.dataclass(frozen=True)
class SourceOutcome:
    spec: SourceSpec
    test_accuracy: float | None  # held-out source accuracy (None for imported weights)
    seconds: float
    cpu_seconds: float


@dataclasses.dataclass(frozen=True)
class FeatureOutcome:
    spec: FeatureSpec
    examples: int
    dim: int
    seconds: float
    cpu_seconds: float


@dataclasses.dataclass(frozen=True)
class ProbeOutcome:
    spec: ProbeSpec
    accuracy: float
    train_examples: int
    seconds: float
    cpu_seconds: float


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    spec: RunSpec
    accuracy: float
    macro_f1: float
    train_examples: int
    epochs: int
    epsilon_spent: float | None
    #: surgical:auto only: block -> mean Auto-RGN LR scale (over tensors and epochs).
    rgn_blocks: dict[str, float] | None
    model_version: str | None  # None when not reported (random initialisation)
    seconds: float
    cpu_seconds: float
    #: bytes this run's worker pulled over the wire to load the source (0: found in the shared cache)
    transferred_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    spec: SearchSpec
    picked_strategy: str
    picked_lr: float
    cv_accuracy: float
    test_accuracy: float
    #: every grid cell: (strategy, lr, mean CV accuracy)
    grid: tuple[tuple[str, float, float], ...]
    model_version: str
    seconds: float
    cpu_seconds: float
    transferred_bytes: int = 0


Outcome = SourceOutcome | FeatureOutcome | ProbeOutcome | RunOutcome | SearchOutcome


# -- worker side -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What each worker needs to act as an edge client (None: no server, e.g. only source training)."""

    target: str | None
    client_token: str | None
    cache_dir: str | None
    repo_root: str


class _Worker:
    """Per-process state: one SDK client, pulled models and loaded targets, both cached."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._client = None
        self._flat_card = None
        self._models: dict[str, object] = {}
        # Bounded: a target at the ImageNet model's 64x64 RGB is tens of MB per seed.
        self._data: collections.OrderedDict[tuple, object] = collections.OrderedDict()
        self.transferred_bytes = 0

    @property
    def client(self):
        if self._client is None:
            from report_service import client

            self._client = client(
                self.config.target, token=self.config.client_token, cache_dir=Path(self.config.cache_dir)
            )
        return self._client

    def model(self, source: str):
        """The source's LoadedModel, pulled with `Client.load_torch` (a cache hit after the first pull)."""
        ref = f"{SOURCES[source].model_id}@stable"
        if ref not in self._models:
            # An explicit pull first, to count what came over the wire (0 when the shared cache has it).
            self.transferred_bytes += self.client.pull(ref, "safetensors").transferred_bytes
            self._models[ref] = self.client.load_torch(ref)
        return self._models[ref]

    def data(self, target: str, *, per_class: int | None, seed: int, card):
        """The target's splits for this seed, fitted to `card` (the few most recent kept per process)."""
        from xfer.client.finetune import load_target

        key = (target, per_class, seed, card.architecture, tuple(card.input_shape))
        if key not in self._data:
            self._data[key] = load_target(TARGETS[target].spec(per_class), card=card, seed=seed)
            while len(self._data) > DATA_CACHE:
                self._data.popitem(last=False)
        self._data.move_to_end(key)
        return self._data[key]

    def splits(self, target: str, *, per_class: int | None, seed: int):
        """The same splits (indices and labels) without fitting the images to a big model: a flat 784 card.

        Which rows land in which split depends only on the labels and the seed, never on the card.
        """
        if self._flat_card is None:
            from xfer.models import card_for_model, create_model

            self._flat_card = card_for_model(create_model("mlp", in_features=784, hidden=[8]))
        return self.data(target, per_class=per_class, seed=seed, card=self._flat_card)


_WORKER: _Worker | None = None


def init_worker(config: WorkerConfig) -> None:
    """Process-pool initializer: one thread per process (the pool is the parallelism), quiet logs."""
    global _WORKER
    if config.repo_root not in sys.path:
        sys.path.insert(0, config.repo_root)
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    _WORKER = _Worker(config)


def execute(spec: Spec) -> Outcome:
    """Runs one spec in this process (after `init_worker`)."""
    if isinstance(spec, SourceSpec):
        return _make_source(spec)
    if isinstance(spec, FeatureSpec):
        return _features(spec)
    if isinstance(spec, ProbeSpec):
        return _probe(spec)
    if isinstance(spec, RunSpec):
        return _adapt(spec)
    return _search(spec)


def _make_source(spec: SourceSpec) -> SourceOutcome:
    cpu, started = time.process_time(), time.perf_counter()
    source = SOURCES[spec.source]
    if source.kind == IMPORT:
        from xfer.models.importer import import_weights

        import_weights(source.weights, out_dir=spec.out_dir, image_size=spec.image_size)
        return SourceOutcome(spec, None, time.perf_counter() - started, time.process_time() - cpu)
    from xfer.models.train import train_source_model

    result = train_source_model(
        out_dir=spec.out_dir,
        arch=spec.arch,
        data=source.data,
        classes=source.classes,
        epochs=spec.epochs,
        lr=spec.lr,
        seed=spec.seed,
        max_examples=spec.max_examples,
        description=f"{spec.arch} trained on {source.description} (xfer transfer report)",
    )
    return SourceOutcome(spec, result.test_accuracy, result.seconds, time.process_time() - cpu)


def _pool_features(model, data) -> tuple:
    """Features of every example of a TargetData (train, val, test), by row of the pool."""
    import numpy as np
    import torch

    parts = [p for p in (data.train, data.val, data.test, data.unlabeled) if p is not None]
    index = torch.cat([p.index for p in parts]).numpy()
    model.eval()
    out = []
    with torch.no_grad():
        for part in parts:
            for i in range(0, len(part), 256):
                out.append(model.forward_features(part.x[i : i + 256]))
    return index, torch.cat(out).numpy().astype(np.float32)


def _features(spec: FeatureSpec) -> FeatureOutcome:
    import numpy as np

    from xfer.client.finetune import load_target

    started, cpu = time.perf_counter(), time.process_time()
    target = TARGETS[spec.target]
    loaded = _WORKER.model(target.source)
    data = load_target(target.data, card=loaded.card, seed=0)
    index, features = _pool_features(loaded.module, data)
    by_row = np.zeros((int(index.max()) + 1, features.shape[1]), dtype=np.float32)
    by_row[index] = features
    np.save(spec.out_path, by_row)
    return FeatureOutcome(spec, len(index), features.shape[1], time.perf_counter() - started, time.process_time() - cpu)


def _probe(spec: ProbeSpec) -> ProbeOutcome:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    started, cpu = time.perf_counter(), time.process_time()
    features = np.load(spec.features.out_path)
    data = _WORKER.splits(spec.target, per_class=spec.per_class, seed=spec.seed)
    train, test = features[data.train.index.numpy()], features[data.test.index.numpy()]
    mean, std = train.mean(0), train.std(0) + 1e-6
    probe = LogisticRegression(C=1.0, max_iter=2000).fit((train - mean) / std, data.train.y.numpy())
    accuracy = float(probe.score((test - mean) / std, data.test.y.numpy()))
    return ProbeOutcome(spec, accuracy, len(data.train), time.perf_counter() - started, time.process_time() - cpu)


def _report(
    *,
    run_id: str,
    version: str,
    strategy: str,
    hyperparameters: dict[str, str],
    metrics: dict[str, float],
    privacy,
    train_examples: int,
    seconds: float,
) -> None:
    from xfer.client.domain import DeviceKind, Run, RunPrivacy, pow2_at_least

    run_privacy = RunPrivacy()
    if privacy is not None:
        run_privacy = RunPrivacy(
            dp=True,
            epsilon_spent=privacy.epsilon_spent,
            delta=privacy.delta,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
        )
    _WORKER.client.report(
        Run(
            run_id=run_id,
            model_version=version,
            strategy=strategy,
            metrics={k: float(v) for k, v in metrics.items()},
            hyperparameters={k: str(v)[:256] for k, v in list(hyperparameters.items())[:32]},
            privacy=run_privacy,
            train_examples_pow2=pow2_at_least(train_examples),
            device_kind=DeviceKind.CPU,
            wall_seconds=seconds,
        )
    )


def cell_metric(target: str, *, per_class: int | None, epsilon: float | None, lr: float | None = None) -> str:
    """Metric name that groups a run's accuracy by target and regime on the server's leaderboard.

    `lr` is given only for a non-default learning rate (the search's hindsight grid), so the leaderboard of
    a target's default-LR runs is exactly section 3's table.
    """
    pc = "all" if per_class is None else f"pc{per_class}"
    dp = "" if epsilon is None else f"/eps{epsilon:g}"
    tag = "" if lr is None else f"/lr{lr:g}"
    return f"acc/{target}/{pc}{dp}{tag}"


def search_metric(target: str, *, per_class: int | None) -> str:
    """Metric name of a search's test accuracy on the server's leaderboard."""
    pc = "all" if per_class is None else f"pc{per_class}"
    return f"search/{target}/{pc}"


def _train(model, *, data, spec: RunSpec, card):
    """The one call into the trainer: `spec`'s strategy, LR, step budget and privacy on `data.train`.

    No validation data (few-label mode has none, and the report keeps the last checkpoint everywhere).
    Returns the result and the passes over the data its steps made (for the render).
    """
    from xfer.client.finetune import FinetuneConfig, PrivacyConfig, finetune

    privacy = None
    if spec.epsilon is not None:
        privacy = PrivacyConfig(epsilon=spec.epsilon, max_grad_norm=spec.max_grad_norm)
    config = FinetuneConfig(
        strategy=spec.strategy,
        lr=spec.lr,
        steps=spec.steps,
        batch_size=spec.batch_size,
        privacy=privacy,
        device="cpu",
        seed=spec.seed,
    )
    result = finetune(model, train=data.train, val=None, config=config, label_names=data.label_names, card=card)
    return result, epochs_for(len(data.train), batch_size=spec.batch_size, steps=spec.steps)


def _search_call(model, *, data, spec: SearchSpec, card):
    """The one call into the search: k-fold CV over strategy x LR on the few labels, winner scored on test."""
    from xfer.client.finetune import FinetuneConfig
    from xfer.client.finetune.config import SearchConfig
    from xfer.client.finetune.search import search

    config = FinetuneConfig(
        steps=spec.steps,
        batch_size=spec.batch_size,
        device="cpu",
        seed=spec.seed,
        search=SearchConfig(strategies=tuple(spec.strategies), folds=spec.folds),
    )
    return search(
        model, train=data.train, val=None, test=data.test, config=config, label_names=data.label_names, card=card
    )


def _adapt(spec: RunSpec) -> RunOutcome:
    import torch

    from xfer.client.finetune import evaluate, get_strategy
    from xfer.models.weights import model_from_card

    started, cpu, before = time.perf_counter(), time.process_time(), _WORKER.transferred_bytes
    loaded = _WORKER.model(TARGETS[spec.target].source)
    data = _WORKER.data(spec.target, per_class=spec.per_class, seed=spec.seed, card=loaded.card)
    if spec.init == RANDOM:
        torch.manual_seed(spec.seed)
        model = model_from_card(loaded.card)
    else:
        model = loaded.module
    result, epochs = _train(model, data=data, spec=spec, card=loaded.card)
    test = evaluate(result.model, data.test.x, data.test.y, label_names=data.label_names)
    rgn_blocks = None
    if result.rgn_scales:
        owner = loaded.module.block_of_parameter()
        sums: dict[str, list[float]] = {}
        for epoch in result.rgn_scales:
            for name, scale in epoch.items():
                sums.setdefault(owner.get(name, name), []).append(scale)
        rgn_blocks = {block: sum(v) / len(v) for block, v in sums.items()}
    seconds = time.perf_counter() - started
    version = None
    if spec.init == PRETRAINED:
        version = loaded.model_version.name
        default_lr = get_strategy(spec.strategy).default_lr
        lr_tag = None if math.isclose(spec.lr, default_lr) else spec.lr
        cell = cell_metric(spec.target, per_class=spec.per_class, epsilon=spec.epsilon, lr=lr_tag)
        metrics = {**test.scalars(), cell: test.accuracy}
        _report(
            run_id=spec.run_id(),
            version=version,
            strategy=result.strategy,
            hyperparameters={
                **result.hyperparameters,
                "target": TARGETS[spec.target].data,
                "per_class": str(spec.per_class or "all"),
            },
            metrics=metrics,
            privacy=result.privacy,
            train_examples=len(data.train),
            seconds=seconds,
        )
    return RunOutcome(
        spec=spec,
        accuracy=test.accuracy,
        macro_f1=test.macro_f1,
        train_examples=len(data.train),
        epochs=epochs,
        epsilon_spent=result.privacy.epsilon_spent if result.privacy else None,
        rgn_blocks=rgn_blocks,
        model_version=version,
        seconds=seconds,
        cpu_seconds=time.process_time() - cpu,
        transferred_bytes=_WORKER.transferred_bytes - before,
    )


def _search(spec: SearchSpec) -> SearchOutcome:
    started, cpu, before = time.perf_counter(), time.process_time(), _WORKER.transferred_bytes
    loaded = _WORKER.model(TARGETS[spec.target].source)
    data = _WORKER.data(spec.target, per_class=spec.per_class, seed=spec.seed, card=loaded.card)
    found = _search_call(loaded.module, data=data, spec=spec, card=loaded.card)
    seconds = time.perf_counter() - started
    test_accuracy = found.test_metrics.accuracy
    version = loaded.model_version.name
    _report(
        run_id=spec.run_id(),
        version=version,
        strategy=found.final.strategy,
        hyperparameters={
            **found.final.hyperparameters,
            "search_folds": str(spec.folds),
            "search_grid": ";".join(f"{r.strategy}@{r.lr:g}" for r in found.rows)[:256],
            "target": TARGETS[spec.target].data,
            "per_class": str(spec.per_class or "all"),
        },
        metrics={
            **found.test_metrics.scalars(),
            "cv/accuracy": found.best.mean,
            search_metric(spec.target, per_class=spec.per_class): test_accuracy,
        },
        privacy=None,
        train_examples=len(data.train),
        seconds=seconds,
    )
    return SearchOutcome(
        spec=spec,
        picked_strategy=found.best.strategy,
        picked_lr=found.best.lr,
        cv_accuracy=found.best.mean,
        test_accuracy=test_accuracy,
        grid=tuple((r.strategy, r.lr, r.mean) for r in found.rows),
        model_version=version,
        seconds=seconds,
        cpu_seconds=time.process_time() - cpu,
        transferred_bytes=_WORKER.transferred_bytes - before,
    )


# -- main side ---------------------------------------------------------------------------------


def _cost(spec: Spec) -> float:
    """Rough relative cost, to start the longest work first and keep every worker busy to the end."""
    if isinstance(spec, SearchSpec):
        return 30.0 * len(spec.strategies) * spec.folds * spec.steps / 100.0
    if isinstance(spec, SourceSpec):
        return 60.0
    if isinstance(spec, FeatureSpec):
        return 40.0 if SOURCES[TARGETS[spec.target].source].kind == IMPORT else 2.0
    if isinstance(spec, ProbeSpec):
        return 0.5
    cost = spec.steps / 100.0
    if SOURCES[TARGETS[spec.target].source].kind == IMPORT:
        cost *= 30.0  # an EfficientNet step at 64x64 is about thirty convnet steps
    if spec.epsilon is not None:
        cost *= 1.5 if spec.strategy == "linear-probe" else 4.0
    return cost


class Runner:
    """Executes specs on a process pool (or in-process with jobs=1), memoised by spec value."""

    def __init__(self, *, jobs: int, progress: Callable[[str], None]) -> None:
        self.jobs = jobs
        self.progress = progress
        self.results: dict[Spec, Outcome] = {}
        self.busy_seconds = 0.0
        self.cpu_seconds = 0.0

    def run_all(self, specs: Iterable[Spec], *, config: WorkerConfig, label: str) -> None:
        """Runs every spec not run yet; raises on the first failure."""
        todo = sorted({s for s in specs if s not in self.results}, key=_cost, reverse=True)
        if not todo:
            return
        started = time.perf_counter()
        self.progress(f"{label}: {len(todo)} task(s) on {self.jobs} process(es)")
        done = 0

        def record(spec: Spec, outcome: Outcome) -> None:
            nonlocal done
            done += 1
            self.results[spec] = outcome
            self.busy_seconds += outcome.seconds
            self.cpu_seconds += outcome.cpu_seconds
            self.progress(
                f"  [{done}/{len(todo)}] {spec.describe()}: {_summary(outcome)} "
                f"({outcome.seconds:.1f}s, {time.perf_counter() - started:.0f}s elapsed)"
            )

        if self.jobs <= 1:
            init_worker(config)
            for spec in todo:
                record(spec, execute(spec))
            return
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=context, initializer=init_worker, initargs=(config,)
        ) as pool:
            futures = {pool.submit(execute, spec): spec for spec in todo}
            try:
                for future in cf.as_completed(futures):
                    record(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def __getitem__(self, spec: Spec) -> Outcome:
        """The outcome of a spec that has run."""
        return self.results[spec]


def _summary(outcome: Outcome) -> str:
    if isinstance(outcome, SourceOutcome):
        return "imported" if outcome.test_accuracy is None else f"source test accuracy {outcome.test_accuracy:.3f}"
    if isinstance(outcome, FeatureOutcome):
        return f"{outcome.examples} x {outcome.dim} features"
    if isinstance(outcome, ProbeOutcome):
        return f"test accuracy {outcome.accuracy:.3f}"
    if isinstance(outcome, SearchOutcome):
        return f"picked {outcome.picked_strategy}@{outcome.picked_lr:g}, test accuracy {outcome.test_accuracy:.3f}"
    eps = f", ε spent {outcome.epsilon_spent:.2f}" if outcome.epsilon_spent is not None else ""
    return f"test accuracy {outcome.accuracy:.3f}{eps}"


def default_jobs() -> int:
    """Two worker processes where two cores exist (the report's target machine), else one."""
    return max(1, min(2, os.cpu_count() or 1))
