"""Rendering only: rows -> Markdown tables and PNG plots. No training, no server calls.

Plots use matplotlib's Agg backend and, like the report, are written to a
temp file and moved into place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from report_claims import AGREES, DISAGREES, INCONCLUSIVE, VERDICTS, WITHIN_NOISE, Claim  # noqa: E402
from report_experiments import ALL_BLOCKS, AUTO, Results, Stat  # noqa: E402
from report_setup import SOURCES, TARGETS, Settings, describe_settings, eps_text, labels_text  # noqa: E402

from xfer.models.files import atomic_path  # noqa: E402

FIGURES = "figures"


@dataclasses.dataclass(frozen=True)
class LeaderboardTable:
    """A server leaderboard (summarize_runs) for one metric, plus the local numbers it should match."""

    title: str
    metric: str
    entries: tuple[Any, ...]  # client.domain.LeaderboardEntry
    local_means: dict[str, float]  # strategy -> mean computed locally from the same runs


@dataclasses.dataclass(frozen=True)
class ProductFacts:
    """What the end-to-end path through the product did."""

    server_target: str
    sources: tuple[tuple[str, str, float, int], ...]  # (ref, sha256, source test accuracy, safetensors bytes)
    pulled_bytes: int
    worker_pulled_bytes: int
    runs_reported: int
    runs_listed: int
    leaderboards: tuple[LeaderboardTable, ...]


@dataclasses.dataclass(frozen=True)
class ReportInput:
    settings: Settings
    results: Results
    claims: list[Claim]
    product: ProductFacts
    wall_seconds: float
    busy_seconds: float
    cpu_seconds: float
    generated: str


# -- tables --------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def _bold_best(stats: dict[str, Stat]) -> dict[str, str]:
    """Formatted stats with the highest mean in bold."""
    best = max(stats, key=lambda k: stats[k].mean) if stats else None
    return {k: (f"**{v.fmt()}**" if k == best else v.fmt()) for k, v in stats.items()}


def _target_name(key: str) -> str:
    return TARGETS[key].title


def render_markdown(data: ReportInput) -> str:
    """The whole report as Markdown; figures are referenced under figures/."""
    s, r = data.settings, data.results
    parts = [
        "# xfer transfer-learning report",
        "",
        f"Generated {data.generated} by `bench/transfer_report.py{' --quick' if s.quick else ''}` in "
        f"{data.wall_seconds / 60:.1f} min wall time ({data.busy_seconds / 60:.1f} min of work in "
        f"{s.jobs} worker process(es), {data.cpu_seconds / 60:.1f} min of it on a CPU). "
        f"Every number is test accuracy, mean ± sample std over {len(s.seeds)} seed(s); the best entry of each "
        "column is in bold. Every pretrained run went through a real xfer server and the SDK.",
        "",
        "## Setup",
        "",
        *(f"- {line}" for line in describe_settings(s)),
        "",
        _product_section(data.product),
        _init_section(r),
        _surgical_section(r),
        _strategy_section(r, s),
        _privacy_section(r, s),
        _search_section(r, s),
        _claims_section(data.claims),
        _leaderboard_section(data.product),
    ]
    return "\n".join(parts).rstrip() + "\n"


def _product_section(p: ProductFacts) -> str:
    rows = [
        [f"`{ref}`", f"`{sha[:16]}…`", f"{size:,}", "imported" if acc is None else f"{acc:.3f}"]
        for ref, sha, acc, size in p.sources
    ]
    return "\n".join(
        [
            "## The product path",
            "",
            f"Server `python -m xfer.server --port 0` on {p.server_target} (temporary data dir, one operator and one client "
            f"token). Source models registered by the operator and pulled by a client with `Client.pull` / "
            f"`Client.load_torch` into a client cache ({p.pulled_bytes:,} bytes over the wire); the worker processes, "
            f"each its own `Client` on that cache, then loaded them with {p.worker_pulled_bytes:,} more bytes over the "
            f"wire (a cache hit is 0):",
            "",
            table(["model version", "safetensors sha256", "bytes", "held-out source accuracy"], rows),
            "",
            f"Runs reported with `Client.report`: {p.runs_reported}; listed back with `Client.list_runs`: "
            f"{p.runs_listed}.",
            "",
        ]
    )


def _fmt(stat: Stat | None, best: bool = False) -> str:
    if stat is None:
        return "—"
    return f"**{stat.fmt()}**" if best else stat.fmt()


def _init_section(r: Results) -> str:
    rows = []
    for row in r.init:
        arms = {k: v for k, v in (("probe", row.probe), ("pre", row.pretrained), ("rnd", row.random)) if v is not None}
        best = max(arms, key=lambda k: arms[k].mean)
        delta = "—" if row.pretrained is None or row.random is None else f"{row.pretrained.mean - row.random.mean:+.3f}"
        source = SOURCES[TARGETS[row.target].source]
        rows.append(
            [
                source.short,
                f"`{TARGETS[row.target].data}`",
                labels_text(row.per_class),
                str(row.train_examples),
                _fmt(row.probe, best == "probe"),
                _fmt(row.pretrained, best == "pre"),
                _fmt(row.random, best == "rnd"),
                delta,
            ]
        )
    return "\n".join(
        [
            "## 1. Pretrained vs random initialisation",
            "",
            "A Fashion-MNIST source (a convnet trained on five clothing classes) and an ImageNet source (EfficientNet-Lite0) "
            "adapted to Fashion classes neither convnet nor client share with the source, and to MNIST digits — with 1, 5, "
            "20 and all labels per class. Frozen-feature probe: logistic regression on the source's features; fine-tuned: "
            "`full` from the pulled weights; random init: the same architecture trained from scratch with the same budget "
            "(the small-scale counterpart of Huh et al.'s ImageNet-pretrained 58.3 vs random-init 41.3 mAP). Δ = "
            "fine-tuned − random init.",
            "",
            table(
                [
                    "source",
                    "target",
                    "labels",
                    "train examples",
                    "frozen-feature probe",
                    "fine-tuned",
                    "random init",
                    "Δ",
                ],
                rows,
            ),
            "",
            f"![pretrained vs random]({FIGURES}/init.png)",
            "",
        ]
    )


def _surgical_section(r: Results) -> str:
    targets = list(dict.fromkeys(row.target for row in r.surgical))
    labels = list(dict.fromkeys(row.tuned for row in r.surgical))
    by = {(row.target, row.tuned): row.accuracy for row in r.surgical}
    columns = {t: _bold_best({lab: by[(t, lab)] for lab in labels if (t, lab) in by}) for t in targets}
    head = {t: r.blocks[t][-1] for t in targets}

    def label(lab: str) -> str:
        if lab in (ALL_BLOCKS, AUTO):
            return lab
        return f"{lab} only" + (" (the head)" if all(lab == head[t] for t in targets) else "")

    rows = [[label(lab)] + [columns[t].get(lab, "—") for t in targets] for lab in labels]
    blocks = list(dict.fromkeys(row.block for row in r.rgn))
    scale = {(row.target, row.block): row.scale for row in r.rgn}
    rgn_rows = [[b] + [scale[(t, b)].fmt() if (t, b) in scale else "—" for t in targets] for b in blocks]
    return "\n".join(
        [
            "## 2. Surgical fine-tuning by shift type",
            "",
            "Tuning a single block (everything else frozen; a re-initialised head also trains), all blocks, or letting "
            "Auto-RGN set per-tensor learning rates (Lee et al., ICLR 2023). Input-level shift: a pixel corruption; "
            "feature-level: classes the source never saw; output-level: the same images with permuted labels. Every "
            "`surgical:<block>` row uses the strategy's default LR: 1e-3 for a body block, and for the head alone "
            "(a linear probe) the probe's 1e-2.",
            "",
            table(["tuned"] + [_target_name(t) for t in targets], rows),
            "",
            f"![surgical fine-tuning]({FIGURES}/surgical.png)",
            "",
            "Which blocks `surgical:auto` favours: the mean Auto-RGN LR scale (relative gradient norm / the largest, "
            "1 = the tensor with the most relative gradient) of each block's tensors, averaged over epochs.",
            "",
            table(["block"] + [_target_name(t) for t in targets], rgn_rows),
            "",
            f"![Auto-RGN block weights]({FIGURES}/rgn.png)",
            "",
        ]
    )


def _strategy_section(r: Results, s: Settings) -> str:
    targets = list(dict.fromkeys(row.target for row in r.strategies))
    by = {(row.target, row.strategy): row.accuracy for row in r.strategies}
    columns = {t: _bold_best({st: by[(t, st)] for st in s.strategies}) for t in targets}
    rows = [[f"`{st}`"] + [columns[t][st] for t in targets] for st in s.strategies]
    return "\n".join(
        [
            "## 3. Strategy comparison",
            "",
            f"Each strategy at its default learning rate, {labels_text(s.adapt_per_class)} training examples.",
            "",
            table(["strategy"] + [_target_name(t) for t in targets], rows),
            "",
            f"![strategies]({FIGURES}/strategies.png)",
            "",
        ]
    )


def _privacy_section(r: Results, s: Settings) -> str:
    arms = list(dict.fromkeys(row.arm for row in r.privacy))
    by = {(row.arm, row.epsilon): row for row in r.privacy}
    rows = [[arm] + [by[(arm, e)].accuracy.fmt() for e in s.epsilons] for arm in arms]
    spent_rows = [
        [arm] + [f"{by[(arm, e)].epsilon_spent.mean:.3g}" if by[(arm, e)].epsilon_spent else "—" for e in s.epsilons]
        for arm in arms
    ]
    return "\n".join(
        [
            "## 4. Privacy",
            "",
            f"DP-SGD on `{TARGETS[s.privacy_target].data}` ({labels_text(s.privacy_per_class)}): fine-tuning the "
            "pretrained source (head only, or every block) against training the same architecture from random "
            "initialisation, at each target ε (δ = min(1e-5, 1/n^1.1)).",
            "",
            table(["arm"] + [eps_text(e) for e in s.epsilons], rows),
            "",
            "ε actually spent (mean over seeds, read back from the accountant):",
            "",
            table(["arm"] + [eps_text(e) for e in s.epsilons], spent_rows),
            "",
            f"![accuracy vs epsilon]({FIGURES}/privacy.png)",
            "",
        ]
    )


def _search_section(r: Results, s: Settings) -> str:
    rows = []
    for row in r.search:
        rows.append(
            [
                _target_name(row.target),
                ", ".join(f"`{p}`" for p in row.picks),
                row.cv_pick.fmt(),
                f"`{row.hindsight}`",
                row.hindsight_accuracy.fmt(),
                row.default_accuracy.fmt(),
                f"{row.hindsight_accuracy.mean - row.cv_pick.mean:+.3f}",
            ]
        )
    grid = ", ".join(f"`{st}`" for st in s.search_strategies)
    return "\n".join(
        [
            "## 5. Search",
            "",
            f"`client.finetune.search`: {s.folds}-fold cross-validation on the training split over {grid} × "
            "(default LR × 0.3, 1, 3); the winner is retrained on the whole training split and scored once on test. "
            "Against it: every fixed cell of the same grid trained on the whole training split, and the one with the "
            "best mean *test* accuracy (hindsight: chosen on the test split, so optimistic by construction); and the "
            "CLI default for reference.",
            "",
            table(
                [
                    "target",
                    "CV picks (per seed)",
                    "CV pick",
                    "best fixed in hindsight",
                    "hindsight accuracy",
                    f"default ({r.search[0].default_strategy if r.search else 'lp-ft'})",
                    "regret",
                ],
                rows,
            ),
            "",
            f"![search]({FIGURES}/search.png)",
            "",
        ]
    )


def _claims_section(claims: list[Claim]) -> str:
    count = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    rows = [[c.section, c.claim, c.source, c.evidence, f"**{c.verdict}**"] for c in claims]
    summary = (
        f"Of {len(claims)} claims tested, {count[AGREES]} agree, {count[DISAGREES]} do not agree, "
        f"{count[WITHIN_NOISE]} are within noise (the claimed difference is not visible here) and "
        f"{count[INCONCLUSIVE]} are inconclusive (one seed, no test)."
    )
    disagree = [c for c in claims if c.verdict == DISAGREES]
    noise = [c for c in claims if c.verdict == WITHIN_NOISE]
    topics = {
        "1": "pretrained vs random",
        "2": "surgical fine-tuning",
        "3": "strategies",
        "4": "privacy",
        "5": "search",
    }
    per_section = [
        [sec, topic] + [str(sum(c.verdict == v for c in claims if c.section == sec)) for v in VERDICTS]
        for sec, topic in topics.items()
        if any(c.section == sec for c in claims)
    ]
    lines = [
        "## 6. Agreement with published claims",
        "",
        "Each verdict is computed from the tables above — a difference counts only when it exceeds twice its "
        "standard error — and nothing was tuned to make them agree. Small models and 28×28 images on two CPU cores "
        "are not the papers' scale: disagreements say where the small-scale picture differs, not that the papers "
        "are wrong.",
        "",
        summary,
        "",
        table(["§", "topic", *VERDICTS], per_section),
        "",
    ]
    if disagree:
        lines += ["Where it does not agree:", "", *(f"- {c.claim}: {c.evidence}." for c in disagree), ""]
    if noise:
        lines += ["Where the claimed effect is within noise:", "", *(f"- {c.claim}: {c.evidence}." for c in noise), ""]
    lines += [table(["§", "claim", "source", "evidence", "verdict"], rows), ""]
    return "\n".join(lines)


def _leaderboard_section(p: ProductFacts) -> str:
    lines = [
        "## Server leaderboard",
        "",
        "`Client.summarize_runs` for the accuracy metric each run reported under its target and regime; the "
        "server's means are checked against the means computed locally from the same runs.",
        "",
    ]
    for board in p.leaderboards:
        rows = [
            [
                f"`{e.model_version}`",
                f"`{e.strategy}`",
                "yes" if e.dp else "no",
                str(e.count),
                f"{e.mean:.3f}",
                f"{e.std:.3f}",
                f"{e.best:.3f}",
            ]
            for e in board.entries
        ]
        mismatches = [
            e.strategy
            for e in board.entries
            if e.strategy in board.local_means and abs(e.mean - board.local_means[e.strategy]) > 1e-6
        ]
        check = (
            "server and local means agree"
            if not mismatches
            else f"MISMATCH between server and local means for {', '.join(mismatches)}"
        )
        lines += [
            f"### {board.title} (metric `{board.metric}`)",
            "",
            table(["model version", "strategy", "dp", "runs", "mean", "std", "best"], rows),
            "",
            f"Check: {check}.",
            "",
        ]
    return "\n".join(lines)


# -- figures -------------------------------------------------------------------------------------


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path, mode=0o644) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _bars(ax, groups: Sequence[str], *, series: dict[str, list[Stat | None]], ylabel: str = "test accuracy") -> None:
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, stats) in enumerate(series.items()):
        # A missing entry (not run) draws no bar at all, rather than a zero.
        drawn = [(g + (i - (n - 1) / 2) * width, st) for g, st in enumerate(stats) if st is not None]
        ax.bar(
            [x for x, _ in drawn],
            [st.mean for _, st in drawn],
            width,
            yerr=[st.std for _, st in drawn],
            capsize=3,
            label=name,
        )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)


def make_figures(results: Results, *, settings: Settings, out_dir: Path) -> list[Path]:
    """Writes every PNG under out_dir/figures/ and returns their paths."""
    fig_dir = out_dir / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    r = results

    init_targets = list(dict.fromkeys(row.target for row in r.init))
    fig, axes = plt.subplots(
        1, max(1, len(init_targets)), figsize=(3.6 * max(1, len(init_targets)), 3.6), squeeze=False, sharey=True
    )
    for ax, t in zip(axes[0], init_targets, strict=True):
        rows = [row for row in r.init if row.target == t]
        _bars(
            ax,
            [labels_text(row.per_class) for row in rows],
            series={
                "frozen-feature probe": [row.probe for row in rows],
                "fine-tuned": [row.pretrained for row in rows],
                "random init": [row.random for row in rows],
            },
        )
        ax.set_title(f"{SOURCES[TARGETS[t].source].short}\n→ {TARGETS[t].data}", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Pretrained vs random initialisation", y=1.04)
    paths.append(_save(fig, fig_dir / "init.png"))

    targets = list(dict.fromkeys(row.target for row in r.surgical))
    fig, axes = plt.subplots(1, max(1, len(targets)), figsize=(4.2 * max(1, len(targets)), 3.8), squeeze=False)
    for ax, t in zip(axes[0], targets, strict=True):
        rows = [row for row in r.surgical if row.target == t]
        names = {ALL_BLOCKS: "all blocks"}
        _bars(ax, [names.get(row.tuned, row.tuned) for row in rows], series={"": [row.accuracy for row in rows]})
        ax.set_title(f"{TARGETS[t].level}-level shift", fontsize=10)
    fig.suptitle("Surgical fine-tuning: which block to tune", y=1.04)
    paths.append(_save(fig, fig_dir / "surgical.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    blocks = list(dict.fromkeys(row.block for row in r.rgn))
    scale = {(row.target, row.block): row.scale for row in r.rgn}
    rgn_targets = list(dict.fromkeys(row.target for row in r.rgn))
    _bars(
        ax,
        blocks,
        series={f"{TARGETS[t].level}-level": [scale.get((t, b)) for b in blocks] for t in rgn_targets},
        ylabel="mean Auto-RGN LR scale",
    )
    ax.set_title("surgical:auto — where the learning rate goes")
    ax.legend(fontsize=8)
    paths.append(_save(fig, fig_dir / "rgn.png"))

    fig, ax = plt.subplots(figsize=(8, 3.8))
    st_targets = list(dict.fromkeys(row.target for row in r.strategies))
    by = {(row.target, row.strategy): row.accuracy for row in r.strategies}
    _bars(
        ax,
        list(settings.strategies),
        series={f"{TARGETS[t].level}-level": [by[(t, st)] for st in settings.strategies] for t in st_targets},
    )
    ax.set_title(f"Strategies ({labels_text(settings.adapt_per_class)})")
    ax.legend(fontsize=8)
    paths.append(_save(fig, fig_dir / "strategies.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    finite = [e for e in settings.epsilons if e is not None]
    positions = {e: float(e) for e in finite}
    no_dp_x = (max(finite) * 2.5) if finite else 1.0
    for arm in dict.fromkeys(row.arm for row in r.privacy):
        rows = sorted(
            (row for row in r.privacy if row.arm == arm and row.epsilon is not None), key=lambda row: row.epsilon
        )
        line = ax.errorbar(
            [positions[row.epsilon] for row in rows],
            [row.accuracy.mean for row in rows],
            yerr=[row.accuracy.std for row in rows],
            marker="o",
            capsize=3,
            label=arm,
        )
        free = [row for row in r.privacy if row.arm == arm and row.epsilon is None]
        if free:
            color = line.lines[0].get_color()
            ax.errorbar(
                [no_dp_x],
                [free[0].accuracy.mean],
                yerr=[free[0].accuracy.std],
                marker="s",
                capsize=3,
                color=color,
                linestyle="none",
            )
            if rows:  # dotted: "no DP" is not a point on the ε axis
                ax.plot(
                    [positions[rows[-1].epsilon], no_dp_x],
                    [rows[-1].accuracy.mean, free[0].accuracy.mean],
                    linestyle=":",
                    color=color,
                )
    ax.set_xscale("log")
    ticks = [*finite, no_dp_x] if None in settings.epsilons else finite
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{e:g}" for e in finite] + (["no DP"] if None in settings.epsilons else []))
    ax.minorticks_off()
    ax.set_xlabel("target ε")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(f"DP fine-tuning vs DP from scratch ({TARGETS[settings.privacy_target].level}-level target)")
    ax.legend(fontsize=8, loc="lower right")
    paths.append(_save(fig, fig_dir / "privacy.png"))

    fig, ax = plt.subplots(figsize=(7, 3.8))
    default_label = f"default ({r.search[0].default_strategy})" if r.search else "default"
    _bars(
        ax,
        [f"{TARGETS[row.target].level}-level" for row in r.search],
        series={
            "CV pick": [row.cv_pick for row in r.search],
            "best fixed (hindsight)": [row.hindsight_accuracy for row in r.search],
            default_label: [row.default_accuracy for row in r.search],
        },
    )
    ax.set_title("What cross-validation picks vs the best fixed choice in hindsight")
    ax.legend(fontsize=8)
    paths.append(_save(fig, fig_dir / "search.png"))
    return paths


def results_json(data: ReportInput) -> dict[str, Any]:
    """Every row as JSON (the machine-readable twin of the report)."""

    def conv(obj: Any) -> Any:
        if isinstance(obj, Stat):
            return {"mean": obj.mean, "std": obj.std, "n": obj.n, "values": list(obj.values)}
        if dataclasses.is_dataclass(obj):
            return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, dict):
            return {str(k): conv(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [conv(v) for v in obj]
        return obj

    return {
        "generated": data.generated,
        "wall_seconds": data.wall_seconds,
        "settings": conv(data.settings),
        "results": conv(data.results),
        "claims": conv(data.claims),
        "product": conv(data.product),
    }
