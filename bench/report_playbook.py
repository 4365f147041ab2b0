"""The rest of the playbook, measured on Fashion-MNIST at small scale (about 10-15 CPU-minutes on two cores).

Three sections, each over 3 seeds, every verdict computed from the numbers
(a difference counts when it exceeds twice its standard error over seeds):

A. Meta-learned vs ordinarily pretrained sources on 5-way 1-shot and 5-shot
   episodes of the five Fashion-MNIST classes the sources never saw (5-9),
   scored with the training-free prototype head (and the logistic-regression
   probe), 95 % intervals over episodes.
B. Self-pretraining on the client's own unlabelled examples (masked-image
   reconstruction) before fine-tuning on 20 labels per class: from the pulled
   source vs no self-pretraining vs self-pretraining from random
   initialisation (Krishna et al., ACL 2023, at small scale).
C. `xfer rank`'s scores (LogME, leave-one-out k-NN on the ONNX features of the
   20-per-class training split) against the accuracy each candidate reaches
   after fine-tuning; Kendall τ between each score's order and the accuracy's.

Everything is small on purpose (a width-16 convnet, 2,000 source examples, a
few hundred episodes and steps) so the whole report fits the time stated
above; the settings are fixed in `SETTINGS` before any result was seen.

    python bench/report_playbook.py [--out reports/playbook_report.md] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    "arch": "convnet",
    "config": {"width": 16, "depth": 2},
    "source_classes": "0-4",
    "target_classes": "5-9",
    "source_examples": 2000,
    "supervised_epochs": 3,
    "protonet_episodes": 200,
    "protonet_shape": (5, 5, 10),
    "episodes": 200,
    "ways": 5,
    "shots": (1, 5),
    "queries": 15,
    "labels_per_class": 20,
    "finetune_strategy": "full",
    "finetune_steps": 100,
    "self_pretrain_steps": 200,
    "self_pretrain_lr": 1e-3,
}
QUICK = {
    "source_examples": 500,
    "supervised_epochs": 1,
    "protonet_episodes": 20,
    "episodes": 20,
    "finetune_steps": 10,
    "self_pretrain_steps": 10,
}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 for one seed)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def verdict(a: list[float], b: list[float], *, better: str, worse: str) -> str:
    """'better > worse' when the mean difference exceeds twice its standard error, else 'no clear difference'."""
    if len(a) < 2 or len(b) < 2:
        return f"{better} vs {worse}: one seed, no verdict"
    ma, sa = mean_se(a)
    mb, sb = mean_se(b)
    diff, se = ma - mb, math.sqrt(sa**2 + sb**2)
    if not (math.isfinite(diff) and math.isfinite(se)):
        return "no verdict (NaN)"
    if diff > 2 * se:
        return f"{better} beats {worse} by {diff:+.3f} (2·SE {2 * se:.3f})"
    if -diff > 2 * se:
        return f"{worse} beats {better} by {-diff:+.3f} (2·SE {2 * se:.3f})"
    return f"no clear difference between {better} and {worse} ({diff:+.3f}, 2·SE {2 * se:.3f})"


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's τ-b between two score lists (ties count as neither concordant nor discordant)."""
    n, concordant, discordant, ties_a, ties_b = len(a), 0, 0, 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else float("nan")


@dataclasses.dataclass
class Source:
    """A source model on disk: its folder, card and how it was made."""

    key: str
    folder: Path
    card: object
    how: str


def _load(folder: Path):
    from xfer.models.card import ModelCard
    from xfer.models.weights import load_safetensors, model_from_card

    card = ModelCard.from_dict(json.loads((folder / "card.json").read_text()))
    return load_safetensors(model_from_card(card), folder / "model.safetensors").eval(), card


def make_sources(root: Path, *, seed: int, s: dict) -> dict[str, Source]:
    """Supervised, ProtoNet and random-init convnets on Fashion-MNIST's source pool; for seed 0 also two more."""
    import torch

    from xfer.models.export import export_onnx
    from xfer.models.meta import MetaConfig
    from xfer.models.train import train_source_model
    from xfer.models.weights import model_from_card, save_safetensors

    lo, hi = (int(v) for v in s["source_classes"].split("-"))
    common = dict(
        arch=s["arch"], data="fashion-mnist", config=s["config"], max_examples=s["source_examples"], seed=seed
    )
    out: dict[str, Source] = {}
    r = train_source_model(
        out_dir=root / f"supervised-{seed}", classes=range(lo, hi + 1), epochs=s["supervised_epochs"], **common
    )
    out["supervised"] = Source("supervised", r.out_dir, r.card, f"supervised, classes {s['source_classes']}")
    ways, shots, queries = s["protonet_shape"]
    r = train_source_model(
        out_dir=root / f"protonet-{seed}",
        classes=range(lo, hi + 1),
        meta=MetaConfig(
            method="protonet", episodes=s["protonet_episodes"], ways=ways, shots=shots, queries=queries, seed=seed
        ),
        **common,
    )
    out["protonet"] = Source("protonet", r.out_dir, r.card, f"ProtoNet, classes {s['source_classes']}")
    torch.manual_seed(seed)
    model = model_from_card(out["supervised"].card)  # the same architecture, freshly initialised
    folder = root / f"random-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    card = dataclasses.replace(
        out["supervised"].card,
        source_task="random initialisation",
        training_method="",
        training_settings={},
        description="",
    )
    save_safetensors(model, folder / "model.safetensors")
    export_onnx(model.eval(), folder / "model.onnx")
    (folder / "card.json").write_text(json.dumps(card.to_dict()))
    out["random"] = Source("random", folder, card, "random initialisation")
    if seed == 0:  # more candidates for the ranking (section C)
        r = train_source_model(
            out_dir=root / "weak",
            classes=range(lo, hi + 1),
            epochs=1,
            **{**common, "max_examples": max(50, s["source_examples"] // 8)},
        )
        out["weak"] = Source("weak", r.out_dir, r.card, "supervised, 1 epoch on an eighth of the examples")
        r = train_source_model(out_dir=root / "all10", epochs=s["supervised_epochs"], **common)
        out["all10"] = Source("all10", r.out_dir, r.card, "supervised, all ten classes (source pool)")
    return out


def section_a(sources: dict[int, dict[str, Source]], *, s: dict) -> dict:
    """Episodes of the unseen classes: prototype and logreg heads on each source's features."""
    from xfer.client.fewshot.config import EpisodeConfig
    from xfer.client.fewshot.evaluate import evaluate_model_episodes
    from xfer.client.finetune.data import load_target

    rows: dict[str, dict[str, list[float]]] = {}
    cis: dict[str, dict[str, list[float]]] = {}
    for seed, by_key in sources.items():
        for key in ("supervised", "protonet", "random"):
            model, card = _load(by_key[key].folder)
            target = load_target(f"fashion-mnist:classes={s['target_classes']}", card=card, seed=seed)
            config = EpisodeConfig(
                episodes=s["episodes"],
                ways=s["ways"],
                shots=s["shots"],
                queries=s["queries"],
                heads=("prototype", "logreg"),
                seed=seed,
            )
            report = evaluate_model_episodes(model, target.test.x, target.test.y.numpy(), config=config, card=card)
            for score in report.scores:
                col = f"{score.head} {score.shots}-shot"
                rows.setdefault(key, {}).setdefault(col, []).append(score.mean)
                cis.setdefault(key, {}).setdefault(col, []).append(score.ci95)
    verdicts = [
        verdict(rows["protonet"][c], rows["supervised"][c], better="ProtoNet", worse="supervised") + f" ({c})"
        for c in (f"prototype {k}-shot" for k in s["shots"])
    ]
    verdicts += [
        verdict(rows["supervised"][c], rows["random"][c], better="supervised", worse="random init") + f" ({c})"
        for c in (f"prototype {k}-shot" for k in s["shots"])
    ]
    return {"rows": rows, "ci95": cis, "verdicts": verdicts}


def _finetune(model, card, *, seed: int, s: dict, self_pretrain: bool) -> float:
    from xfer.client.finetune.config import FinetuneConfig, SelfPretrainConfig
    from xfer.client.finetune.data import load_target
    from xfer.client.finetune.pipeline import adapt

    target = load_target(
        f"fashion-mnist:classes={s['target_classes']},per_class={s['labels_per_class']}", card=card, seed=seed
    )
    sp = SelfPretrainConfig(steps=s["self_pretrain_steps"], lr=s["self_pretrain_lr"]) if self_pretrain else None
    config = FinetuneConfig(
        strategy=s["finetune_strategy"],
        steps=s["finetune_steps"],
        device="cpu",
        seed=seed,
        self_pretrain=sp,
        reinit_head=True,
    )
    outcome = adapt(model, target=target, config=config, card=card)
    return float(outcome.test_metrics.accuracy)


def section_b(sources: dict[int, dict[str, Source]], *, s: dict) -> dict:
    """Fine-tuning on 20 labels per class after self-pretraining (or not), from the source or from random init."""
    rows: dict[str, list[float]] = {}
    for seed, by_key in sources.items():
        for key, start, sp in (
            ("source, no self-pretraining", "supervised", False),
            ("source + self-pretraining", "supervised", True),
            ("random init + self-pretraining", "random", True),
            ("random init, no self-pretraining", "random", False),
        ):
            model, card = _load(by_key[start].folder)
            rows.setdefault(key, []).append(_finetune(model, card, seed=seed, s=s, self_pretrain=sp))
    verdicts = [
        verdict(
            rows["source + self-pretraining"],
            rows["source, no self-pretraining"],
            better="self-pretraining the source",
            worse="no self-pretraining",
        ),
        verdict(
            rows["random init + self-pretraining"],
            rows["random init, no self-pretraining"],
            better="self-pretraining from random init",
            worse="random init alone",
        ),
        verdict(
            rows["random init + self-pretraining"],
            rows["source, no self-pretraining"],
            better="self-pretraining only on the client's data",
            worse="the pulled source",
        ),
    ]
    return {"rows": rows, "verdicts": verdicts}


def section_c(sources: dict[int, dict[str, Source]], *, s: dict, tuned: dict | None) -> dict:
    """Rank scores on ONNX features of the training split vs accuracy after fine-tuning, per candidate (seed 0's)."""
    from xfer.client.finetune.data import load_target
    from xfer.client.onnxhead.features import FeatureExtractor
    from xfer.client.rank.scores import score_features

    candidates = sources[0]
    scores, accuracy = {}, {}
    for key, src in candidates.items():
        target = load_target(
            f"fashion-mnist:classes={s['target_classes']},per_class={s['labels_per_class']}", card=src.card, seed=0
        )
        feats = FeatureExtractor(src.folder / "model.onnx")(target.train.x.numpy())
        scores[key] = score_features(feats, target.train.y.numpy())
        if tuned is not None and key == "supervised":
            accuracy[key] = list(tuned["source, no self-pretraining"])
        elif tuned is not None and key == "random":
            accuracy[key] = list(tuned["random init, no self-pretraining"])
        else:
            model, card = _load(src.folder)
            accuracy[key] = [_finetune(model, card, seed=seed, s=s, self_pretrain=False) for seed in sources]
    keys = list(candidates)
    mean_acc = [float(np.mean(accuracy[k])) for k in keys]
    tau_logme = kendall_tau([scores[k].logme for k in keys], mean_acc)
    tau_knn = kendall_tau([scores[k].knn_accuracy for k in keys], mean_acc)
    per_seed = {
        crit: [
            kendall_tau([getattr(scores[k], attr) for k in keys], [accuracy[k][i] for k in keys])
            for i in range(len(sources))
        ]
        for crit, attr in (("logme", "logme"), ("knn", "knn_accuracy"))
    }
    best = keys[int(np.argmax(mean_acc))]
    verdicts = [
        f"LogME's order agrees with the fine-tuned accuracy's with Kendall τ = {tau_logme:+.2f} "
        f"(per seed {', '.join(f'{t:+.2f}' for t in per_seed['logme'])}); k-NN's τ = {tau_knn:+.2f} "
        f"(per seed {', '.join(f'{t:+.2f}' for t in per_seed['knn'])})",
        f"LogME's first choice ({max(keys, key=lambda k: scores[k].logme)}) "
        f"{'is' if max(keys, key=lambda k: scores[k].logme) == best else 'is not'} the best after "
        f"fine-tuning ({best}); k-NN's ({max(keys, key=lambda k: scores[k].knn_accuracy)}) "
        f"{'is' if max(keys, key=lambda k: scores[k].knn_accuracy) == best else 'is not'}",
    ]
    return {
        "scores": {k: dataclasses.asdict(v) for k, v in scores.items()},
        "accuracy": accuracy,
        "how": {k: candidates[k].how for k in keys},
        "tau": {"logme": tau_logme, "knn": tau_knn},
        "tau_per_seed": per_seed,
        "verdicts": verdicts,
    }


def _fmt(values: list[float]) -> str:
    m, se = mean_se(values)
    return f"{m:.3f} ± {se:.3f}"


def render(result: dict) -> str:
    """The report as markdown."""
    s, lines = result["settings"], []
    lines.append(
        f"# The rest of the playbook, measured\n\nFashion-MNIST; sources trained on the source pool's classes "
        f"{s['source_classes']} ({s['source_examples']} examples, {s['arch']} {s['config']}); targets are "
        f"classes {s['target_classes']} of the target pool, never seen by any source. {result['seeds']} seeds "
        f"(mean ± standard error over seeds). Wall {result['wall_seconds']:.0f}s, CPU "
        f"{result['cpu_seconds']:.0f}s.\n"
    )
    a = result["a"]
    cols = [f"{h} {k}-shot" for h in ("prototype", "logreg") for k in s["shots"]]
    lines.append(
        f"## A. Meta-learned vs ordinary sources: {s['ways']}-way episodes of unseen classes\n\n"
        f"{s['episodes']} episodes per setting and seed, {s['queries']} queries per class; mean query "
        f"accuracy ± SE over seeds (the mean 95 % interval over episodes in brackets).\n"
    )
    lines.append("| source | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for key, row in a["rows"].items():
        lines.append(
            f"| {key} | " + " | ".join(f"{_fmt(row[c])} [±{np.mean(a['ci95'][key][c]):.3f}]" for c in cols) + " |"
        )
    lines += ["", *(f"- {v}" for v in a["verdicts"]), ""]
    b = result["b"]
    lines.append(
        f"## B. Self-pretraining on the client's unlabelled examples\n\n{s['labels_per_class']} labels per "
        f"class, the rest of the training split unlabelled; masked-image self-pretraining "
        f"{s['self_pretrain_steps']} steps, then `{s['finetune_strategy']}` fine-tuning "
        f"{s['finetune_steps']} steps; test accuracy.\n"
    )
    lines.append("| start | test accuracy |\n|---|---|")
    lines += [f"| {k} | {_fmt(v)} |" for k, v in b["rows"].items()]
    lines += ["", *(f"- {v}" for v in b["verdicts"]), ""]
    c = result["c"]
    lines.append(
        "## C. Choosing a source: rank scores vs accuracy after fine-tuning\n\nScores on the ONNX features "
        f"of the {s['labels_per_class']}-per-class training split (seed 0's candidates); accuracy after "
        f"fine-tuning as in B, over seeds.\n"
    )
    lines.append("| candidate | how | LogME | k-NN acc | fine-tuned acc |\n|---|---|---|---|---|")
    for key, how in c["how"].items():
        sc = c["scores"][key]
        lines.append(f"| {key} | {how} | {sc['logme']:.3f} | {sc['knn_accuracy']:.3f} | {_fmt(c['accuracy'][key])} |")
    lines += ["", *(f"- {v}" for v in c["verdicts"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/playbook_report.md")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny budgets, numbers meaningless")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        print("report_playbook: Fashion-MNIST is missing (make data); nothing measured", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    s = {**SETTINGS, **(QUICK if args.quick else {})}
    started, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        sources = {seed: make_sources(Path(tmp), seed=seed, s=s) for seed in range(args.seeds)}
        print(f"sources trained ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        a = section_a(sources, s=s)
        print(f"A done ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        b = section_b(sources, s=s)
        print(f"B done ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        c = section_c(sources, s=s, tuned=b["rows"])
    result = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "seeds": args.seeds,
        "a": a,
        "b": b,
        "c": c,
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
    }
    text = render(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
