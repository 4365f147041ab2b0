"""`make report-sfda`: source-free adaptation on real data, with hyperparameters chosen without labels.

An operator trains convnet source models (Fashion-MNIST, MNIST-5k, the
28x28 scikit-learn digits) on their *source* pools and registers them on a
real xfer server (`python -m xfer.server --port 0`); an edge client pulls
each through the SDK and adapts it to *unlabelled* target data:

(a) Fashion-MNIST under synthetic corruptions (gaussian noise, blur,
    contrast, invert; one severity), source = the Fashion convnet;
(b) the digits domain pair MNIST-5k -> digits28 and back.

For every (target, seed) it measures on the held-out labelled test split:
the unadapted source; TENT, SHOT, AaD and NRC, each with its learning rate
and checkpoint chosen by the label-free criterion on the *unlabelled*
validation split (`sfda_selection.select_source_free`, grid = the
strategy's default LR x 0.3, 1, 3); the best grid cell in hindsight (an
oracle that reads test labels: the selection's upper bound); and supervised
`lp-ft` fine-tuning on 5 labels per class (the Lee et al. 2023 caution that
a few labels often beat SFDA). It also measures how well each label-free
criterion (im, snd, entropy) tracks true accuracy: the Spearman rank
correlation, over every checkpoint of every grid cell, between the
criterion on unlabelled val and accuracy on labelled test.

Test labels are read only to score — by an `on_candidate` hook that the
selection never sees — never to choose anything.

To fit ~15 minutes on two shared CPU cores the runs are small (fixed below,
before any result was seen, and printed in the report): subsets of each
split, a fixed step budget per run, few seeds.

    .venv/bin/python bench/report_sfda.py [--out reports/] [--seeds 3] [--quick]

Progress goes to stderr; the path of the written Markdown report to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for path in (str(REPO_ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402
from report_service import client, start_server  # noqa: E402

from xfer.client.finetune import FinetuneConfig, SearchConfig  # noqa: E402
from xfer.client.finetune.data import TensorData, load_target  # noqa: E402
from xfer.client.finetune.metrics import evaluate  # noqa: E402
from xfer.client.finetune.sfda_selection import select_source_free, spearman  # noqa: E402
from xfer.client.finetune.trainer import finetune  # noqa: E402
from xfer.models.files import write_bytes_atomic  # noqa: E402

METHODS = ("tent", "shot", "aad", "nrc")
CRITERIA = ("im", "snd", "entropy")
REPORT_NAME = "sfda_report.md"
JSON_NAME = "sfda_report.json"


@dataclasses.dataclass(frozen=True)
class Source:
    """A convnet an operator trains on a data set's source pool."""

    model_id: str
    data: str
    max_examples: int
    epochs: int


@dataclasses.dataclass(frozen=True)
class Target:
    """An unlabelled target task: a data spec over a target pool and the source it adapts."""

    key: str
    group: str  # "corruption" | "domain"
    source: str
    spec: str


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob, fixed up front."""

    seeds: tuple[int, ...] = (0, 1, 2)
    severity: int = 5
    corruptions: tuple[str, ...] = ("gaussian-noise", "blur", "contrast", "invert")
    max_train: int = 800  # unlabelled training examples per run (a seeded subset of the train split)
    max_val: int = 300  # unlabelled validation examples the criterion reads
    max_test: int = 600  # labelled test examples (scoring only)
    steps: int = 30
    batch_size: int = 32
    eval_every: int = 10
    lr_multipliers: tuple[float, ...] = (0.3, 1.0, 3.0)
    few_labels: int = 5
    criterion: str = "im"
    fashion_examples: int = 4000
    source_epochs: int = 3
    threads: int = 1  # two shared cores: one thread each is faster than two contending

    @property
    def sources(self) -> dict[str, Source]:
        return {
            "fashion": Source("sfda-fashion-convnet", "fashion-mnist", self.fashion_examples, self.source_epochs),
            "mnist5k": Source("sfda-mnist5k-convnet", "mnist5k", 2500, self.source_epochs),
            "digits28": Source("sfda-digits28-convnet", "digits28", 900, 2 * self.source_epochs),
        }

    @property
    def targets(self) -> list[Target]:
        out = [
            Target(f"fashion/{c}", "corruption", "fashion", f"fashion-mnist:shift={c},severity={self.severity}")
            for c in self.corruptions
        ]
        out.append(Target("mnist5k→digits28", "domain", "mnist5k", "digits28"))
        out.append(Target("digits28→mnist5k", "domain", "digits28", "mnist5k"))
        return out


def progress(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def _head(data: TensorData | None, n: int, *, seed: int) -> TensorData | None:
    """A seeded subset of at most `n` examples (the whole split when smaller)."""
    if data is None or len(data) <= n:
        return data
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.subset(rows)


def make_sources(settings: Settings, *, root: Path, log: Any, accuracy: dict[str, float]) -> dict[str, Any]:
    """Trains each source, registers it on a fresh server as the operator, pulls it back as a client.

    `accuracy` receives each source's held-out source-pool accuracy."""
    from xfer.models.train import train_source_model

    server = start_server(root / "server")
    loaded: dict[str, Any] = {}
    try:
        with client(server.target, token=server.operator_token, cache_dir=root / "op-cache") as op:
            for key, src in settings.sources.items():
                result = train_source_model(
                    out_dir=root / key,
                    arch="convnet",
                    data=src.data,
                    split="source",
                    epochs=src.epochs,
                    lr=3e-3,
                    seed=0,
                    max_examples=src.max_examples,
                    description=f"convnet on the {src.data} source pool (xfer SFDA report)",
                )
                op.register(root / key, src.model_id)
                accuracy[key] = result.test_accuracy
                log(
                    f"source {src.model_id}: held-out source accuracy {result.test_accuracy:.3f} "
                    f"({result.seconds:.0f}s)"
                )
        with client(server.target, token=server.client_token, cache_dir=root / "cache") as edge:
            for key, src in settings.sources.items():
                loaded[key] = edge.load_torch(src.model_id)
    finally:
        server.stop()
    return loaded


def run_target(target: Target, *, seed: int, loaded: Any, settings: Settings, log: Any) -> dict[str, Any]:
    """Every method on one (target, seed): test accuracies, chosen cells, criterion-accuracy correlations."""
    card, source = loaded.card, loaded.module
    data = load_target(
        target.spec + ",unlabeled" if ":" in target.spec else target.spec + ":unlabeled", card=card, seed=seed
    )
    train = _head(data.train, settings.max_train, seed=seed)
    val = _head(data.val, settings.max_val, seed=seed + 1)
    test = _head(data.test, settings.max_test, seed=seed + 2)
    assert train is not None and val is not None and test is not None and test.y is not None
    assert train.y is None and val.y is None  # the unlabelled spec hides them
    names = tuple(card.label_names)
    out: dict[str, Any] = {
        "target": target.key,
        "seed": seed,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
    }
    out["source"] = evaluate(source, test.x, test.y, label_names=names).accuracy

    for method in METHODS:
        candidates: list[dict[str, Any]] = []

        def on_candidate(strategy: str, lr: float, record: Any, net: Any, candidates: list = candidates) -> None:
            # Measurement only: the selection below never sees this hook's numbers.
            acc = evaluate(net, test.x, test.y, label_names=names).accuracy
            candidates.append({"lr": lr, "step": record.step, "accuracy": acc, **record.label_free})

        config = FinetuneConfig(
            strategy=method,
            steps=settings.steps,
            batch_size=settings.batch_size,
            eval_every=settings.eval_every,
            seed=seed,
            device="cpu",
            criterion=settings.criterion,
            search=SearchConfig(strategies=(method,), lrs=None),
        )
        started = time.perf_counter()
        found = select_source_free(
            source,
            train=train,
            val=val,
            test=test,
            config=config,
            card=card,
            label_names=names,
            on_candidate=on_candidate,
        )
        assert found.test_metrics is not None
        oracle = max(c["accuracy"] for c in candidates)
        corr = {c: spearman([x[c] for x in candidates], [x["accuracy"] for x in candidates]) for c in CRITERIA}
        out[method] = {
            "accuracy": found.test_metrics.accuracy,
            "lr": found.best.lr,
            "step": found.best.step,
            "oracle": oracle,
            "spearman": corr,
            "candidates": candidates,
            "seconds": time.perf_counter() - started,
        }
        log(
            f"  {target.key} seed {seed} {method}: {found.test_metrics.accuracy:.3f} (lr {found.best.lr:g}, step "
            f"{found.best.step}; oracle {oracle:.3f}; ρ(im) {corr['im']:.2f}) {time.perf_counter() - started:.0f}s"
        )

    few = load_target(target.spec, card=card, seed=seed, per_class=settings.few_labels)
    result = finetune(
        source,
        train=few.train,
        val=None,
        config=FinetuneConfig(strategy="lp-ft", seed=seed, device="cpu"),
        card=card,
        label_names=few.label_names,
    )
    few_test = _head(few.test, settings.max_test, seed=seed + 2)
    assert few_test is not None and few_test.y is not None
    out["lp-ft-5"] = evaluate(result.model, few_test.x, few_test.y, label_names=result.label_names).accuracy
    log(
        f"  {target.key} seed {seed}: source {out['source']:.3f}, lp-ft {settings.few_labels}/class "
        f"{out['lp-ft-5']:.3f}"
    )
    return out


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _mean(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return statistics.mean(values) if values else math.nan


def _differs(a: list[float], b: list[float]) -> int:
    """+1 / -1 when mean(a) is above / below mean(b) by more than twice the standard error, else 0."""
    a = [v for v in a if math.isfinite(v)]
    b = [v for v in b if math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return 0
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    diff = statistics.mean(a) - statistics.mean(b)
    return 0 if abs(diff) <= 2 * se else 1 if diff > 0 else -1


def verdicts(rows: list[dict[str, Any]], targets: list[Target]) -> list[str]:
    """Plain-language findings, decided from the numbers (a difference counts beyond twice its standard error)."""
    lines = []
    for t in targets:
        mine = [r for r in rows if r["target"] == t.key]
        src = [r["source"] for r in mine]
        best = max(METHODS, key=lambda m: _mean([r[m]["accuracy"] for r in mine]))
        acc = [r[best]["accuracy"] for r in mine]
        few = [r["lp-ft-5"] for r in mine]
        vs_source = {1: "improves on", 0: "is within noise of", -1: "is worse than"}[_differs(acc, src)]
        vs_few = {1: "beats", 0: "is within noise of", -1: "is beaten by"}[_differs(acc, few)]
        lines.append(
            f"- **{t.key}**: the best of the four (each with its LR chosen label-free; best by test accuracy, in hindsight), `{best}`, {vs_source} the source "
            f"({_mean(src):.3f} → {_mean(acc):.3f}, {_mean(acc) - _mean(src):+.3f}) and {vs_few} lp-ft on "
            f"5 labels/class ({_mean(few):.3f})."
        )
    return lines


def chosen_by(candidates: list[dict[str, Any]], criterion: str) -> float:
    """Test accuracy of the candidate (LR x checkpoint) a criterion ranks first (what selecting by it gives)."""
    finite = [c for c in candidates if math.isfinite(c[criterion])]
    return max(finite, key=lambda c: c[criterion])["accuracy"] if finite else math.nan


def unselected(candidates: list[dict[str, Any]], method: str) -> float:
    """Test accuracy with no selection at all: the strategy's default LR, last step."""
    from xfer.client.finetune.strategies import get_strategy

    default = get_strategy(method).default_lr
    mine = [c for c in candidates if math.isclose(c["lr"], default)]
    return max(mine, key=lambda c: c["step"])["accuracy"] if mine else math.nan


def render(
    rows: list[dict[str, Any]],
    settings: Settings,
    *,
    targets: list[Target],
    seconds: float,
    source_acc: dict[str, float],
    quick: bool,
) -> str:
    """The Markdown report."""
    s = settings
    lines = [
        "# Source-free adaptation on real data",
        "",
        f"Generated by `bench/report_sfda.py` in {seconds / 60:.1f} min on CPU; seeds {', '.join(map(str, s.seeds))}.",
        "",
        "## Setup" + (" (quick preset: a smoke test)" if quick else ""),
        "",
        f"- Sources: convnets trained by `xfer.models.train` on each data set's *source* pool "
        f"(held-out source accuracy {', '.join(f'{k} {v:.3f}' for k, v in source_acc.items())}), registered on a "
        f"real xfer server and pulled through the SDK.",
        f"- Targets (`…:unlabeled`: train and val without labels): Fashion-MNIST target pool under "
        f"{', '.join(s.corruptions)} at severity {s.severity}; MNIST-5k → digits28 and back.",
        f"- Small on purpose (two shared CPU cores, ~15 min): per run at most {s.max_train} unlabelled training "
        f"and {s.max_val} unlabelled validation examples, {s.max_test} labelled test examples (scoring only), "
        f"{s.steps} AdamW steps at batch {s.batch_size}, a checkpoint scored every {s.eval_every} steps; "
        f"{len(s.seeds)} seed(s) (each its own split, subset and batch order).",
        f"- Selection: label-free `{s.criterion}` on the unlabelled validation split chooses LR (the strategy's "
        f"default × {', '.join(f'{m:g}' for m in s.lr_multipliers)}) and checkpoint. *oracle* = best grid "
        f"cell and checkpoint by test accuracy (hindsight; reads test labels, an upper bound only).",
        f"- Few labels: `lp-ft` with its default budget on {s.few_labels} labelled examples per class of the "
        f"same training split, last step kept.",
        "",
        "## Test accuracy (mean ± sd over seeds)",
        "",
    ]
    header = ["target", "source only", *METHODS, f"lp-ft {s.few_labels}/class"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for t in targets:
        mine = [r for r in rows if r["target"] == t.key]
        cells = [_mean_sd([r["source"] for r in mine])]
        cells += [_mean_sd([r[m]["accuracy"] for r in mine]) for m in METHODS]
        cells.append(_mean_sd([r["lp-ft-5"] for r in mine]))
        lines.append(f"| {t.key} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Label-free selection vs hindsight",
        "",
        "Chosen cell's test accuracy / the oracle's (mean over targets and seeds), and the LRs chosen.",
        "",
        "| method | chosen | oracle | gap | LRs chosen |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in METHODS:
        chosen = _mean([r[m]["accuracy"] for r in rows])
        oracle = _mean([r[m]["oracle"] for r in rows])
        lrs = sorted({f"{r[m]['lr']:g}" for r in rows})
        lines.append(f"| {m} | {chosen:.3f} | {oracle:.3f} | {oracle - chosen:.3f} | {', '.join(lrs)} |")
    lines += [
        "",
        "What selecting by each criterion would give: test accuracy of the LR × checkpoint it ranks first "
        "(mean over targets and seeds), beside no selection (default LR, last step) and the oracle.",
        "",
        "| method | default LR, last step | " + " | ".join(f"by {c}" for c in CRITERIA) + " | oracle |",
        "|" + " --- |" * (len(CRITERIA) + 3),
    ]
    for m in METHODS:
        cells = [f"{_mean([unselected(r[m]['candidates'], m) for r in rows]):.3f}"]
        cells += [f"{_mean([chosen_by(r[m]['candidates'], c) for r in rows]):.3f}" for c in CRITERIA]
        cells.append(f"{_mean([r[m]['oracle'] for r in rows]):.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## How each criterion tracks true accuracy",
        "",
        "Spearman ρ between the criterion on unlabelled val and accuracy on labelled test, over every "
        f"checkpoint of every LR of one (method, target, seed) ({len(s.lr_multipliers)} LRs × "
        f"{s.steps // s.eval_every} checkpoints); mean ± sd over targets and seeds.",
        "",
        "| method | " + " | ".join(CRITERIA) + " |",
        "|" + " --- |" * (len(CRITERIA) + 1),
    ]
    for m in METHODS:
        cells = [_mean_sd([r[m]["spearman"][c] for r in rows]) for c in CRITERIA]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    all_corr = {c: _mean([r[m]["spearman"][c] for r in rows for m in METHODS]) for c in CRITERIA}
    best_c = max(CRITERIA, key=lambda c: all_corr[c] if math.isfinite(all_corr[c]) else -math.inf)
    lines += ["", "## Verdicts", ""] + verdicts(rows, targets)
    lines.append(
        "- Criterion: over all methods the mean ρ is "
        + ", ".join(f"{c} {all_corr[c]:.2f}" for c in CRITERIA)
        + f"; `{best_c}` tracks accuracy best here"
        + ("" if best_c == s.criterion else f" (the selection used `{s.criterion}`)")
        + "."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/report_sfda.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per number (default 3)")
    parser.add_argument("--quick", action="store_true", help="one seed, two targets, 20 steps: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        settings = Settings(
            seeds=(0,),
            corruptions=("invert",),
            steps=10,
            eval_every=5,
            max_train=200,
            max_val=100,
            max_test=200,
            fashion_examples=1000,
            source_epochs=1,
        )
    else:
        settings = Settings(seeds=tuple(range(args.seeds)))
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()

    def log(message: str) -> None:
        progress(started, message)

    rows: list[dict[str, Any]] = []
    source_acc: dict[str, float] = {}
    targets = settings.targets if not args.quick else [settings.targets[0], settings.targets[-2]]
    with tempfile.TemporaryDirectory(prefix="xfer-sfda-") as tmp:
        loaded = make_sources(settings, root=Path(tmp), log=log, accuracy=source_acc)
        for target in targets:
            for seed in settings.seeds:
                rows.append(run_target(target, seed=seed, loaded=loaded[target.source], settings=settings, log=log))
    seconds = time.perf_counter() - started
    text = render(rows, settings, targets=targets, seconds=seconds, source_acc=source_acc, quick=args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / REPORT_NAME, text.encode())
    write_bytes_atomic(
        args.out / JSON_NAME,
        json.dumps(
            {"settings": dataclasses.asdict(settings), "seconds": seconds, "source_accuracy": source_acc, "rows": rows},
            indent=1,
            default=str,
        ).encode(),
    )
    print(args.out / REPORT_NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
