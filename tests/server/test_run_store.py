"""RunStore (server/run_store.py) against a real SQLite file, and PostgreSQL where it is installed."""

from __future__ import annotations

import base64
import dataclasses
import json
import statistics
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from xfer.server import pagination, schema
from xfer.server.db import create_engine
from xfer.server.errors import AlreadyExists, InvalidArgument, NotFound
from xfer.server.migrate import upgrade
from xfer.server.pagination import PageTokens
from xfer.server.run_store import RunStore
from xfer.server.runs import RunPrivacy, RunReport

TOKENS = PageTokens(b"k" * 32)

V1 = "models/digits/versions/1"
V2 = "models/digits/versions/2"
V3 = "models/digits/versions/3"
OTHER = "models/other/versions/1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Versions:
    """A stand-in for the registry's resolver: a dict of versions and aliases."""

    def __init__(self) -> None:
        self.known = {V1, V2, V3, OTHER}
        self.aliases = {"models/digits/versions/latest": V2}
        self.barrier: threading.Barrier | None = None

    def __call__(self, name: str) -> str:
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        if name in self.aliases:
            return self.aliases[name]
        if name in self.known:
            return name
        raise NotFound(f"model version {name!r} does not exist")


class Clock:
    """Each call is one second later, so creation order is report order."""

    def __init__(self, step: timedelta = timedelta(seconds=1)) -> None:
        self.moment = T0
        self.step = step

    def __call__(self) -> datetime:
        self.moment += self.step
        return self.moment


@pytest.fixture(scope="module")
def postgres_engine(request):
    """One PostgreSQL database for the module; each test empties the tables (fast)."""
    try:
        server = request.getfixturevalue("postgres_server")
    except pytest.FixtureLookupError:
        pytest.skip("no postgres_server fixture in tests/conftest.py")
    eng = create_engine(server.new_database())
    yield eng
    eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    """Storage behaviour is checked on both dialects the server supports."""
    if request.param == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path / 'metrics.db'}")
        upgrade(eng)
        yield eng
        eng.dispose()
        return
    eng = request.getfixturevalue("postgres_engine")
    upgrade(eng)
    with eng.begin() as conn:
        for table in (schema.run_metrics_table, schema.runs_table):
            conn.execute(table.delete())
    yield eng


@pytest.fixture
def sqlite_engine(tmp_path):
    """For checks that end before storage (validation): one dialect is enough."""
    eng = create_engine(f"sqlite:///{tmp_path / 'metrics.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def versions():
    return Versions()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(engine, versions, clock):
    return RunStore(engine=engine, resolve_version=versions, page_tokens=TOKENS, now=clock)


@pytest.fixture
def sqlite_store(sqlite_engine, versions, clock):
    return RunStore(engine=sqlite_engine, resolve_version=versions, page_tokens=TOKENS, now=clock)


def make_report(run_id: str = "run-1", **overrides) -> RunReport:
    fields = dict(
        run_id=run_id,
        model_version=V1,
        strategy="full",
        metrics={"accuracy": 0.9, "loss": 0.25},
        hyperparameters={"lr": "3e-4", "epochs": "5"},
        privacy=RunPrivacy(),
        train_examples_pow2=1024,
        device_kind="cpu",
        wall_seconds=12.5,
    )
    fields.update(overrides)
    return RunReport(**fields)


DP = RunPrivacy(dp=True, epsilon_spent=3.0, delta=1e-5, noise_multiplier=1.1, max_grad_norm=1.0)


def count_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(schema.runs_table)).scalar()


# ---------------------------------------------------------------------------
# Round trip


def test_report_stores_and_returns_the_run(store):
    report = make_report(privacy=DP, metrics={"accuracy": 0.1 + 0.2, "val/loss": 1e-300})
    outcome = store.report(report)
    assert outcome.duplicate is False
    assert outcome.run.name == "runs/run-1"
    assert outcome.run.report == report
    assert outcome.run.create_time == T0 + timedelta(seconds=1)
    assert outcome.run.create_time.tzinfo is not None
    # What comes back from storage is bit-for-bit what was reported.
    assert store.get("run-1") == outcome.run


def test_alias_is_resolved_when_stored(store):
    outcome = store.report(make_report(model_version="models/digits/versions/latest"))
    assert outcome.run.report.model_version == V2


def test_unknown_model_version_is_not_found(store, engine):
    with pytest.raises(NotFound):
        store.report(make_report(model_version="models/digits/versions/99"))
    assert count_rows(engine) == 0


def test_get_unknown_run_is_not_found(sqlite_store):
    with pytest.raises(NotFound, match="does not exist"):
        sqlite_store.get("nope")


def test_boundary_values_are_accepted(store):
    report = make_report(
        run_id="R" * 128,
        metrics={f"m{i:02d}": float(i) for i in range(64)},
        hyperparameters={f"h{i:02d}": "v" * 256 for i in range(32)},
        train_examples_pow2=2**62,
        wall_seconds=0.0,
        device_kind="mps",
        strategy="surgical:block2",
    )
    assert store.report(report).run.report == report
    assert store.report(make_report("one", train_examples_pow2=1)).duplicate is False


# ---------------------------------------------------------------------------
# Validation: every rule has its own case, and nothing invalid is stored.

INVALID = {
    "metric-nan": (dict(metrics={"accuracy": float("nan")}), r"metric 'accuracy' is nan.*finite"),
    "metric-inf": (dict(metrics={"loss": float("inf")}), r"metric 'loss' is inf.*finite"),
    "metric-neg-inf": (dict(metrics={"loss": float("-inf")}), r"metric 'loss' is -inf"),
    "metrics-10000": (
        dict(metrics={f"m{i}": 1.0 for i in range(10_000)}),
        r"metrics has 10000 entries; at most 64",
    ),
    "metrics-65": (dict(metrics={f"m{i}": 1.0 for i in range(65)}), r"at most 64"),
    "metrics-empty": (dict(metrics={}), r"metrics is empty"),
    "metric-name-upper": (dict(metrics={"Accuracy": 1.0}), r"'Accuracy' is not a valid metric"),
    "metric-name-digit": (dict(metrics={"1acc": 1.0}), r"not a valid metric name"),
    "metric-name-space": (dict(metrics={"val acc": 1.0}), r"not a valid metric name"),
    "metric-name-long": (dict(metrics={"a" * 65: 1.0}), r"not a valid metric name"),
    "metric-name-newline": (dict(metrics={"acc\n": 1.0}), r"not a valid metric name"),
    "metric-value-str": (dict(metrics={"acc": "0.9"}), r"metric 'acc' must be a number"),
    "metric-value-bool": (dict(metrics={"acc": True}), r"metric 'acc' must be a number"),
    "run-id-dotdot": (dict(run_id="../x"), r"run_id '\.\./x' is invalid"),
    "run-id-empty": (dict(run_id=""), r"run_id is required"),
    "run-id-long": (dict(run_id="r" * 129), r"run_id .* is invalid"),
    "run-id-leading-dash": (dict(run_id="-r"), r"run_id .* is invalid"),
    "run-id-slash": (dict(run_id="a/b"), r"run_id .* is invalid"),
    "run-id-newline": (dict(run_id="abc\n"), r"run_id .* is invalid"),
    "version-missing": (dict(model_version=""), r"model_version is required"),
    "version-bare-model": (
        dict(model_version="models/digits"),
        r"model_version: invalid version name 'models/digits'",
    ),
    "version-bad-model-id": (
        dict(model_version="models/Digits/versions/1"),
        r"model_version: invalid model id 'Digits'",
    ),
    "version-leading-zero": (
        dict(model_version="models/digits/versions/01"),
        r"model_version: invalid version number",
    ),
    "strategy-empty": (dict(strategy=""), r"strategy.name is required"),
    "strategy-upper": (dict(strategy="Full"), r"strategy.name 'Full' is invalid"),
    "strategy-space": (dict(strategy="full ft"), r"strategy.name .* is invalid"),
    "strategy-long": (dict(strategy="s" * 129), r"strategy.name .* is invalid"),
    "hparams-33": (
        dict(hyperparameters={f"h{i}": "1" for i in range(33)}),
        r"33 entries; at most 32",
    ),
    "hparam-bad-key": (dict(hyperparameters={"Learning Rate": "1"}), r"hyperparameter name"),
    "hparam-long-value": (
        dict(hyperparameters={"notes": "x" * 257}),
        r"'notes' is 257 characters long; at most 256",
    ),
    "hparam-nul": (dict(hyperparameters={"lr": "1\x00"}), r"control characters"),
    "hparam-not-str": (dict(hyperparameters={"lr": 0.1}), r"must be a string"),
    "dp-epsilon-zero": (
        dict(privacy=dataclasses.replace(DP, epsilon_spent=0.0)),
        r"epsilon_spent is 0.0 but a DP run must report",
    ),
    "dp-epsilon-inf": (
        dict(privacy=dataclasses.replace(DP, epsilon_spent=float("inf"))),
        r"privacy.epsilon_spent is inf; it must be a finite number",
    ),
    "dp-delta-zero": (dict(privacy=dataclasses.replace(DP, delta=0.0)), r"delta is 0.0.*\(0, 1\)"),
    "dp-delta-one": (dict(privacy=dataclasses.replace(DP, delta=1.0)), r"delta is 1.0"),
    "dp-noise-negative": (
        dict(privacy=dataclasses.replace(DP, noise_multiplier=-0.5)),
        r"noise_multiplier is -0.5",
    ),
    "dp-clip-zero": (
        dict(privacy=dataclasses.replace(DP, max_grad_norm=0.0)),
        r"max_grad_norm is 0.0",
    ),
    "no-dp-with-epsilon": (
        dict(privacy=RunPrivacy(dp=False, epsilon_spent=1.0)),
        r"dp is false but privacy.epsilon_spent is set",
    ),
    "size-not-pow2": (dict(train_examples_pow2=1000), r"train_examples_pow2 is 1000.*power of two"),
    "size-3": (dict(train_examples_pow2=3), r"power of two"),
    "size-zero": (dict(train_examples_pow2=0), r"power of two >= 1"),
    "size-negative": (dict(train_examples_pow2=-4), r"power of two"),
    "size-too-big": (dict(train_examples_pow2=2**63), r"power of two"),
    "size-float": (dict(train_examples_pow2=1024.0), r"must be an integer"),
    "device-missing": (dict(device_kind=""), r"device_kind is missing; use one of cpu, cuda, mps"),
    "device-unknown": (dict(device_kind="tpu"), r"device_kind is 'tpu'"),
    "wall-negative": (dict(wall_seconds=-1.0), r"wall_seconds is -1.0"),
    "wall-nan": (dict(wall_seconds=float("nan")), r"wall_seconds is nan"),
}


@pytest.mark.parametrize("overrides,message", INVALID.values(), ids=INVALID.keys())
def test_invalid_report_is_rejected(sqlite_store, sqlite_engine, overrides, message):
    with pytest.raises(InvalidArgument, match=message):
        sqlite_store.report(make_report(**overrides))
    assert count_rows(sqlite_engine) == 0


def test_long_values_are_shortened_in_messages(sqlite_store):
    with pytest.raises(InvalidArgument) as info:
        sqlite_store.report(make_report(run_id="!" * 100_000))
    assert len(str(info.value)) < 400


# ---------------------------------------------------------------------------
# Idempotency


def test_identical_retry_is_stored_once(store, engine):
    first = store.report(make_report())
    again = store.report(make_report())
    assert again.duplicate is True
    assert again.run == first.run
    assert count_rows(engine) == 1
    [row] = store.summarize(metric="accuracy")
    assert row.count == 1


def test_retry_by_alias_or_by_number_is_a_duplicate(store, versions):
    store.report(make_report(model_version="models/digits/versions/latest"))
    assert store.report(make_report(model_version=V2)).duplicate is True
    # The alias has moved on; a retry of the first report is still that report.
    versions.aliases["models/digits/versions/latest"] = V3
    assert store.report(make_report(model_version="models/digits/versions/latest")).duplicate


def test_conflicting_retry_is_already_exists(store):
    store.report(make_report())
    with pytest.raises(AlreadyExists, match=r"run_id 'run-1' is already stored.*\(differs in metrics\)"):
        store.report(make_report(metrics={"accuracy": 0.91, "loss": 0.25}))
    with pytest.raises(AlreadyExists, match=r"model_version"):
        store.report(make_report(model_version=V2))
    assert store.get("run-1").report == make_report()


def test_concurrent_duplicates_are_stored_once(store, engine, versions):
    threads = 6
    # Every report passes the "already stored?" check before any inserts, so
    # the primary key alone has to settle it.
    versions.barrier = threading.Barrier(threads)
    outcomes, errors = [], []

    def report() -> None:
        try:
            outcomes.append(store.report(make_report()))
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    workers = [threading.Thread(target=report) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert errors == []
    assert sorted(o.duplicate for o in outcomes) == [False] + [True] * (threads - 1)
    assert count_rows(engine) == 1
    assert store.summarize(metric="accuracy")[0].count == 1


# ---------------------------------------------------------------------------
# ListRuns


def walk(store, **kwargs) -> list[list[str]]:
    pages, token = [], ""
    while True:
        page = store.list_runs(page_token=token, **kwargs)
        pages.append([run.report.run_id for run in page.runs])
        token = page.next_page_token
        if not token:
            return pages


def test_pagination_walks_every_run_once_newest_first(store):
    ids = [f"run-{i:02d}" for i in range(23)]
    for run_id in ids:
        store.report(make_report(run_id))
    pages = walk(store, page_size=5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    flat = [run_id for page in pages for run_id in page]
    assert flat == ids[::-1]


def test_pagination_with_equal_create_times_uses_run_id(engine, versions):
    store = RunStore(engine=engine, resolve_version=versions, page_tokens=TOKENS, now=lambda: T0)
    ids = ["b", "a", "e", "c", "d", "g", "f"]
    for run_id in ids:
        store.report(make_report(run_id))
    flat = [run_id for page in walk(store, page_size=2) for run_id in page]
    assert flat == sorted(ids, reverse=True)


def test_exact_multiple_of_page_size_has_no_empty_last_page(store):
    for i in range(4):
        store.report(make_report(f"r{i}"))
    assert [len(p) for p in walk(store, page_size=2)] == [2, 2]


def test_runs_reported_while_paging_are_not_repeated(store):
    for i in range(6):
        store.report(make_report(f"old-{i}"))
    first = store.list_runs(page_size=3)
    store.report(make_report("new"))  # newer than every cursor: lands before page one
    second = store.list_runs(page_size=3, page_token=first.next_page_token)
    seen = [r.report.run_id for r in first.runs + second.runs]
    assert seen == ["old-5", "old-4", "old-3", "old-2", "old-1", "old-0"]


def test_page_size_default_and_maximum(store, monkeypatch):
    for i in range(52):
        store.report(make_report(f"r{i:02d}", metrics={"accuracy": 1.0}))
    assert len(store.list_runs().runs) == 50
    assert store.list_runs().next_page_token
    monkeypatch.setattr(pagination, "MAX_PAGE_SIZE", 7)
    assert len(store.list_runs(page_size=1_000_000).runs) == 7


def test_negative_page_size_is_invalid(sqlite_store):
    with pytest.raises(InvalidArgument, match="page_size must not be negative, got -1"):
        sqlite_store.list_runs(page_size=-1)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


UNFILTERED = json.dumps(["runs", "", ""])
BAD_TOKENS = {
    "garbled": "!!!not-base64!!!",
    "not-json": _b64(b"\xff\xfe garbage"),
    "json-list": _b64(b"[1, 2]"),
    "missing-fingerprint": _b64(json.dumps({"k": [1, "a"]}).encode()),
    "other-query": TOKENS.encode(query="models", last=[1, "a"]),
    "short-cursor": TOKENS.encode(query=UNFILTERED, last=[1]),
    "string-time": TOKENS.encode(query=UNFILTERED, last=["1", "a"]),
    "bad-run-id": TOKENS.encode(query=UNFILTERED, last=[1, "'; drop"]),
    # Forged by someone without the key: a well-formed cursor of 10**30, unsigned or signed with another key.
    "unsigned-huge-offset": _b64(json.dumps({"q": "x", "k": [10**30, "a"]}).encode()),
    "other-key": PageTokens(b"x" * 32).encode(query=UNFILTERED, last=[10**30, "a"]),
    "signed-huge-offset": TOKENS.encode(query=UNFILTERED, last=[10**30, "a"]),
    "huge": "A" * 5000,
}


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_forged_page_token_is_invalid(sqlite_store, token):
    sqlite_store.report(make_report())
    with pytest.raises(InvalidArgument, match="invalid page_token"):
        sqlite_store.list_runs(page_token=token)


def test_page_token_is_bound_to_its_filters(store):
    for i in range(3):
        store.report(make_report(f"r{i}"))
    token = store.list_runs(page_size=1, strategy="full").next_page_token
    assert store.list_runs(page_size=1, strategy="full", page_token=token).runs
    with pytest.raises(InvalidArgument, match="invalid page_token.*same other request fields"):
        store.list_runs(page_size=1, page_token=token)


@pytest.fixture
def mixed(store):
    """Runs across models, versions and strategies."""
    reports = [
        make_report("a", model_version=V1, strategy="full"),
        make_report("b", model_version=V2, strategy="surgical:block2"),
        make_report("c", model_version=V2, strategy="full"),
        make_report("d", model_version=OTHER, strategy="full"),
        make_report("e", model_version=V3, strategy="surgical"),
    ]
    for report in reports:
        store.report(report)
    return store


def ids_of(page) -> list[str]:
    return [run.report.run_id for run in page.runs]


def test_filter_by_model_covers_all_its_versions(mixed):
    assert ids_of(mixed.list_runs(model="models/digits")) == ["e", "c", "b", "a"]
    assert ids_of(mixed.list_runs(model="models/other")) == ["d"]
    assert ids_of(mixed.list_runs(model="models/nobody")) == []


def test_filter_by_version_and_alias(mixed):
    assert ids_of(mixed.list_runs(model=V2)) == ["c", "b"]
    assert ids_of(mixed.list_runs(model="models/digits/versions/latest")) == ["c", "b"]
    # A version that no longer (or never) resolves simply matches nothing.
    assert ids_of(mixed.list_runs(model="models/digits/versions/42")) == []


def test_filter_by_strategy_is_exact(mixed):
    assert ids_of(mixed.list_runs(strategy="surgical")) == ["e"]
    assert ids_of(mixed.list_runs(strategy="full", model="models/digits")) == ["c", "a"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(model="digits"), "model filter 'digits' is invalid"),
        (dict(model="models/digits/versions"), "model filter .* is invalid"),
        (dict(model="models/Digits"), "model filter: invalid model id 'Digits'"),
        (dict(model="models/digits/versions/-1"), "model filter: invalid alias '-1'"),
        (dict(strategy="Full"), "strategy 'Full' is invalid"),
    ],
)
def test_malformed_filters_are_invalid(mixed, kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        mixed.list_runs(**kwargs)


# ---------------------------------------------------------------------------
# SummarizeRuns


def seed_leaderboard(store) -> dict[tuple, list[tuple[str, float]]]:
    """Reports runs with random accuracies; returns (version, strategy, dp) -> [(id, acc)]."""
    rng = np.random.default_rng(7)
    groups = {
        (V1, "full", False): 4,
        (V1, "full", True): 3,
        (V1, "linear-probe", False): 5,
        (V2, "full", False): 1,
        (OTHER, "lp-ft", False): 2,
    }
    expected: dict[tuple, list[tuple[str, float]]] = {}
    n = 0
    for (version, strategy, dp), count in groups.items():
        for _ in range(count):
            run_id = f"run-{n:03d}"
            n += 1
            accuracy = float(rng.uniform(0.5, 1.0))
            store.report(
                make_report(
                    run_id,
                    model_version=version,
                    strategy=strategy,
                    privacy=DP if dp else RunPrivacy(),
                    metrics={"accuracy": accuracy, "loss": float(rng.uniform(0.1, 2.0))},
                )
            )
            expected.setdefault((version, strategy, dp), []).append((run_id, accuracy))
    # A run without the metric must not count anywhere.
    store.report(make_report("no-acc", model_version=V1, metrics={"loss": 0.5}))
    return expected


def test_summarize_matches_statistics_computed_directly(store):
    expected = seed_leaderboard(store)
    rows = store.summarize(metric="accuracy")
    assert len(rows) == len(expected)
    for row in rows:
        runs = expected[(row.model_version, row.strategy, row.dp)]
        values = [v for _, v in runs]
        assert row.count == len(values)
        assert row.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
        want_std = statistics.stdev(values) if len(values) > 1 else 0.0
        assert row.std == pytest.approx(want_std, rel=1e-9, abs=1e-12)
        assert row.std == pytest.approx(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
        assert row.best == max(values)
        assert row.best_run_id == max(runs, key=lambda r: r[1])[0]
    means = [row.mean for row in rows]
    assert means == sorted(means, reverse=True)


def test_summarize_minimize(store):
    expected = seed_leaderboard(store)
    rows = store.summarize(metric="accuracy", goal="minimize")
    means = [row.mean for row in rows]
    assert means == sorted(means)
    for row in rows:
        runs = expected[(row.model_version, row.strategy, row.dp)]
        assert row.best == min(v for _, v in runs)
        assert row.best_run_id == min(runs, key=lambda r: r[1])[0]


def test_summarize_single_run_has_zero_std(store):
    store.report(make_report(metrics={"accuracy": 0.75}))
    [row] = store.summarize(metric="accuracy")
    assert (row.count, row.mean, row.std, row.best, row.best_run_id) == (1, 0.75, 0.0, 0.75, "run-1")


def test_summarize_ties_pick_the_smallest_run_id(store):
    for run_id in ["z", "m", "q"]:
        store.report(make_report(run_id, metrics={"accuracy": 0.5}))
    [row] = store.summarize(metric="accuracy")
    assert (row.best_run_id, row.std) == ("m", 0.0)


def test_summarize_filters_by_model(store):
    expected = seed_leaderboard(store)
    rows = store.summarize(metric="accuracy", model="models/digits/versions/latest")
    assert [(r.model_version, r.count) for r in rows] == [(V2, len(expected[(V2, "full", False)]))]
    assert {r.model_version for r in store.summarize(metric="accuracy", model="models/digits")} == {
        V1,
        V2,
    }


def test_summarize_unknown_metric_is_empty(store):
    seed_leaderboard(store)
    assert store.summarize(metric="f1") == []


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(metric=""), "metric is required"),
        (dict(metric="Accuracy"), "metric 'Accuracy' is not a valid metric name"),
        (dict(metric="accuracy", goal="best"), "goal 'best' is invalid"),
        (dict(metric="accuracy", model="nope"), "model filter 'nope' is invalid"),
    ],
)
def test_summarize_invalid_arguments(sqlite_store, kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        sqlite_store.summarize(**kwargs)
