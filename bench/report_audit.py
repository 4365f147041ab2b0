"""Report section "What the weights reveal": membership inference and DP audits of the Fashion-MNIST source.

    .venv/bin/python bench/report_audit.py [--seeds 3] [--examples 1200] [--epochs 10] [--jobs 2]

For each setting (no DP, and DP-SGD at epsilon 1, 2, 4, 8) and seed, the
operator's own pipeline trains the Fashion-MNIST source with
`python -m xfer.models.train ... --audit` (`train_source_model(audit=...)`):
the held-out fifth of the pool are the non-members; the loss-threshold
attack and offline RMIA (one pair of reference models on disjoint halves of
the pool, trained with the same recipe) measure AUC and TPR at 1 % and
0.1 % FPR; for DP settings a one-run canary audit (Steinke et al. 2023)
bounds epsilon from below at 95 % confidence. A client then adapts each
source with a linear probe (20 labels per class) to the input-level target
(Fashion-MNIST target pool under Gaussian noise, severity 4) and we record
its test accuracy: the utility clients get.

Small on purpose (a few thousand images, a narrow convnet, few epochs) so
the whole report runs in about 20 minutes of CPU on two cores; the sizes are
printed with the table. Writes reports/audit_report.md and .json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETTINGS: tuple[float | None, ...] = (None, 8.0, 4.0, 2.0, 1.0)
TARGET_SPEC = "fashion-mnist:shift=gaussian-noise,severity=4"
PER_CLASS = 20
#: A narrow convnet: a quarter of the default width, two residual blocks.
CONVNET = {"width": 8, "depth": 2}


def run_one(*, epsilon: float | None, seed: int, examples: int, epochs: int, reference_pairs: int) -> dict[str, Any]:
    """One source training with its audit, then one client's linear probe; plain numbers back."""
    import torch

    torch.set_num_threads(1)
    from xfer.client.finetune import FinetuneConfig, adapt, load_target
    from xfer.models.audit.config import AuditConfig
    from xfer.models.train import train_source_model
    from xfer.models.weights import load_safetensors, model_from_card

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train_source_model(
            out_dir=out,
            data="fashion-mnist",
            max_examples=examples,
            epochs=epochs,
            seed=seed,
            dp_epsilon=epsilon,
            config=CONVNET,
            audit=AuditConfig(reference_pairs=reference_pairs, seed=seed),
        )
        card = result.card
        model = load_safetensors(model_from_card(card), Path(out) / "model.safetensors")
        trained = time.perf_counter()
        target = load_target(TARGET_SPEC, card=card, seed=seed, per_class=PER_CLASS)
        outcome = adapt(
            model,
            target=target,
            card=card,
            config=FinetuneConfig(strategy="linear-probe", epochs=30, seed=seed, device="cpu"),
        )
    audit = card.audit
    assert audit is not None
    attacks = {
        a.attack: {
            "auc": a.auc,
            "auc_low": a.auc_low,
            "auc_high": a.auc_high,
            "tpr": {str(p.fpr): [p.tpr, p.tpr_low, p.tpr_high] for p in a.tpr_at_fpr},
            "members": a.members,
            "non_members": a.non_members,
        }
        for a in audit.attacks
    }
    dp = audit.dp
    return {
        "epsilon": epsilon,
        "seed": seed,
        "claimed_epsilon": result.dp_epsilon,
        "examples": examples,
        "epochs": epochs,
        "reference_pairs": reference_pairs,
        "source_accuracy": result.test_accuracy,
        "train_accuracy": result.train_accuracy,
        "downstream_accuracy": outcome.test_metrics.accuracy if outcome.test_metrics else math.nan,
        "attacks": attacks,
        "dp_audit": None
        if dp is None
        else {
            "lower_bound": dp.epsilon_lower_bound,
            "claimed": dp.claimed_epsilon,
            "canaries": dp.canaries,
            "guesses": dp.guesses,
            "correct": dp.correct,
        },
        "seconds_source_and_audit": trained - started,
        "seconds_total": time.perf_counter() - started,
    }


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _name(epsilon: float | None) -> str:
    return "no DP" if epsilon is None else f"ε = {epsilon:g}"


def render(rows: list[dict[str, Any]], *, args: argparse.Namespace, wall: float, cpu: float) -> str:
    """The markdown section."""
    by_setting: dict[float | None, list[dict[str, Any]]] = {}
    for row in rows:
        by_setting.setdefault(row["epsilon"], []).append(row)
    # The sizes come from the rows (a --render-only run renders what was measured, not its own defaults).
    examples = rows[0].get("examples", args.examples) if rows else args.examples
    epochs = rows[0].get("epochs", args.epochs) if rows else args.epochs
    pairs = rows[0].get("reference_pairs", args.reference_pairs) if rows else args.reference_pairs
    lines = [
        "## What the weights reveal",
        "",
        f"Fashion-MNIST source pool, a stratified {examples} images (4/5 train = members, 1/5 held out = "
        f"non-members), convnet {CONVNET}, {epochs} epochs, Adam 3e-3, batch 64 (`models.train` defaults "
        f"otherwise; DP-SGD with Opacus at the given ε, δ = min(1e-5, 1/n^1.1)); "
        f"{len(set(r['seed'] for r in rows))} "
        f"seed(s); RMIA offline with {2 * pairs} reference models on disjoint halves of the pool. "
        f"Downstream: a client's linear probe with {PER_CLASS} labels per class on `{TARGET_SPEC}`. "
        f"Mean ± sd over seeds; [..] in the per-run table is the 95 % interval (DeLong for AUC, Clopper-Pearson "
        f"for TPR).",
        "",
        "| source | source acc. | downstream acc. | loss AUC | RMIA AUC | RMIA TPR@1% FPR | RMIA TPR@0.1% FPR "
        "| ε lower bound (95 %) | claimed ε |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for epsilon in SETTINGS:
        group = by_setting.get(epsilon)
        if not group:
            continue
        rmia = [r["attacks"].get("rmia-offline") for r in group]
        loss = [r["attacks"]["loss-threshold"] for r in group]
        strongest = [a for a in rmia if a is not None] or loss
        lines.append(
            " | ".join(
                [
                    f"| {_name(epsilon)}",
                    _mean_sd([r["source_accuracy"] for r in group]),
                    _mean_sd([r["downstream_accuracy"] for r in group]),
                    _mean_sd([a["auc"] for a in loss]),
                    _mean_sd([a["auc"] for a in rmia if a is not None]),
                    _mean_sd([a["tpr"]["0.01"][0] for a in strongest]),
                    _mean_sd([a["tpr"]["0.001"][0] for a in strongest]),
                    _mean_sd([r["dp_audit"]["lower_bound"] for r in group if r["dp_audit"]])
                    if epsilon is not None
                    else "-",
                    _mean_sd([r["claimed_epsilon"] for r in group]) if epsilon is not None else "∞",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Per run:",
        "",
        "| source | seed | loss AUC [95 %] | RMIA AUC [95 %] | RMIA TPR@0.1% FPR [95 %] | "
        "members / non-members | canary guesses right | ε lower bound | claimed ε |",
        "| --- " * 9 + "|",
    ]
    for row in rows:
        loss = row["attacks"]["loss-threshold"]
        rmia = row["attacks"].get("rmia-offline") or loss
        dp = row["dp_audit"]
        tpr = rmia["tpr"]["0.001"]
        lines.append(
            f"| {_name(row['epsilon'])} | {row['seed']} | {loss['auc']:.3f} [{loss['auc_low']:.3f}, "
            f"{loss['auc_high']:.3f}] | {rmia['auc']:.3f} [{rmia['auc_low']:.3f}, {rmia['auc_high']:.3f}] | "
            f"{tpr[0]:.4f} [{tpr[1]:.4f}, {tpr[2]:.4f}] | {loss['members']} / {loss['non_members']} | "
            + (
                f"{dp['correct']}/{dp['guesses']} of {dp['canaries']} | {dp['lower_bound']:.3f} | {dp['claimed']:.3f} |"
                if dp
                else "- | - | - |"
            )
        )
    if math.isfinite(wall):
        lines += ["", f"Wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min ({args.jobs} processes, 1 torch thread each)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Runs every (setting, seed), prints and writes the section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1200, help="images of the source pool used (default 1200)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--reference-pairs", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--settings", default="none,8,4,2,1", help="comma list of epsilons, 'none' for no DP")
    parser.add_argument("--out", default="reports", help="folder for audit_report.md/.json")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="render the rows already in OUT/audit_rows.jsonl (e.g. of a run that was stopped)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "audit_rows.jsonl"
    if args.render_only:
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
        rows.sort(key=lambda r: (SETTINGS.index(r["epsilon"]) if r["epsilon"] in SETTINGS else 99, r["seed"]))
        text = render(rows, args=args, wall=math.nan, cpu=math.nan)
        (out / "audit_report.md").write_text(text)
        print(text)
        return 0
    rows_file.write_text("")
    settings = [None if s == "none" else float(s) for s in args.settings.split(",")]
    jobs = [(e, seed) for seed in range(args.seeds) for e in settings]
    started, cpu0 = time.perf_counter(), time.process_time()
    rows: list[dict[str, Any]] = []
    children_cpu = 0.0
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(
                run_one,
                epsilon=e,
                seed=s,
                examples=args.examples,
                epochs=args.epochs,
                reference_pairs=args.reference_pairs,
            ): (e, s)
            for e, s in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            rows.append(row)
            with rows_file.open("a") as handle:  # one line per finished run: a stopped report keeps them
                handle.write(json.dumps(row) + "\n")
            print(
                f"{_name(row['epsilon'])} seed {row['seed']}: source acc {row['source_accuracy']:.3f}, downstream "
                f"{row['downstream_accuracy']:.3f}, AUCs "
                + ", ".join(f"{k} {v['auc']:.3f}" for k, v in row["attacks"].items())
                + (
                    f", eps >= {row['dp_audit']['lower_bound']:.3f} (claimed {row['claimed_epsilon']:.2f})"
                    if row["dp_audit"]
                    else ""
                )
                + f" [{row['seconds_total']:.0f}s]",
                flush=True,
            )
    children = os.times()
    children_cpu = children.children_user + children.children_system
    rows.sort(key=lambda r: (SETTINGS.index(r["epsilon"]) if r["epsilon"] in SETTINGS else 99, r["seed"]))
    text = render(rows, args=args, wall=time.perf_counter() - started, cpu=time.process_time() - cpu0 + children_cpu)
    (out / "audit_report.md").write_text(text)
    (out / "audit_report.json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
