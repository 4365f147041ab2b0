"""Torch-free head fits (xfer.client.onnxhead) against the torch linear probe, measured in one run.

1. Accuracy on a digits transfer task: a convnet source trained on digits
   0-4 (`xfer.models.train`), target digits 5-9 with 5 and 20 labels per
   class and all (277) training examples, 3 seeds; heads `onnx-logreg` and
   `onnx-prototype` against `xfer finetune --strategy linear-probe`, without
   DP and at ε = 1 and 4. Both sides get the same train/val/test splits.
2. Cost of one adaptation, each in a fresh subprocess: the torch-free fit
   (onnxruntime + numpy) against the torch linear probe (10 epochs, the
   default) on the same data: wall time of the whole process (imports
   included), of the fit alone, and peak resident memory; at the digits size
   and at 50,000 training examples (digits resampled with pixel noise).
   Ratios are torch-free / torch: below 1 means the torch-free fit is
   cheaper.

    .venv/bin/python bench/onnxhead.py [--quick] [--threads 1] [--seeds 3] [--large 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPSILONS = (None, 1.0, 4.0)
SHOTS = (5, 20, None)


# -- workers (run in subprocesses; each imports only what its side needs) ---------------------------


def _peak_rss_mb() -> float:
    # VmHWM is this process image's own high-water mark; ru_maxrss would carry the parent's over fork + exec.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def worker_torch_free(*, source: Path, data: Path, threads: int) -> dict:
    """Fits onnx-logreg on the .npz splits; returns timings, accuracy and peak memory."""
    started = time.perf_counter()
    import numpy as np

    from xfer.client.onnxhead import HeadConfig, SessionOptions, fit_head
    from xfer.models.card import ModelCard

    imported = time.perf_counter()
    card = ModelCard.from_dict(json.loads((source / "card.json").read_text()))
    with np.load(data) as arrays:
        split = {k: arrays[k] for k in arrays.files}
    result = fit_head(
        source / "model.onnx",
        train=(split["x_train"], split["y_train"]),
        val=(split["x_val"], split["y_val"]),
        test=(split["x_test"], split["y_test"]),
        strategy="logreg",
        card=card,
        label_names=tuple(str(n) for n in split["label_names"]),
        config=HeadConfig(session=SessionOptions(intra_op_threads=threads)),
    )
    done = time.perf_counter()
    assert "torch" not in sys.modules
    return {
        "process_seconds": done - started,
        "fit_seconds": done - imported,
        "peak_rss_mb": _peak_rss_mb(),
        "accuracy": result.test_metrics.accuracy,
        "phases": result.timings,
    }


def worker_torch_probe(*, source: Path, data: Path, threads: int) -> dict:
    """`finetune(strategy="linear-probe")` on the same splits, from the source's safetensors."""
    started = time.perf_counter()
    import numpy as np
    import torch

    from xfer.client.finetune.config import FinetuneConfig
    from xfer.client.finetune.data import TensorData
    from xfer.client.finetune.metrics import evaluate
    from xfer.client.finetune.trainer import finetune
    from xfer.models.card import ModelCard
    from xfer.models.weights import load_safetensors, model_from_card

    torch.set_num_threads(threads)
    imported = time.perf_counter()
    card = ModelCard.from_dict(json.loads((source / "card.json").read_text()))
    with np.load(data) as arrays:
        label_names = tuple(str(n) for n in arrays["label_names"])
        split = {k: torch.from_numpy(arrays[k]) for k in arrays.files if k != "label_names"}
    model = load_safetensors(model_from_card(card), source / "model.safetensors").eval()

    def tensors(name: str) -> TensorData:
        return TensorData(split[f"x_{name}"], split[f"y_{name}"], torch.arange(len(split[f"y_{name}"])))

    config = FinetuneConfig(strategy="linear-probe", device="cpu", seed=0)
    result = finetune(
        model, train=tensors("train"), val=tensors("val"), config=config, label_names=label_names, card=card
    )
    test = evaluate(result.model, split["x_test"], split["y_test"], label_names=label_names)
    done = time.perf_counter()
    return {
        "process_seconds": done - started,
        "fit_seconds": done - imported,
        "peak_rss_mb": _peak_rss_mb(),
        "accuracy": test.accuracy,
    }


# -- driver ------------------------------------------------------------------------------------------


def train_source(work: Path) -> Path:
    from xfer.models.train import train_source_model

    out = work / "source-convnet-0-4"
    if not (out / "card.json").exists():
        result = train_source_model(
            out_dir=out, arch="convnet", classes=range(5), epochs=30, seed=0, description="bench source: digits 0-4"
        )
        print(f"source: convnet on digits 0-4, held-out source accuracy {result.test_accuracy:.3f}", flush=True)
    return out


def accuracy_table(source: Path, *, seeds: int) -> list[dict]:
    import numpy as np

    from xfer.client.finetune.config import FinetuneConfig
    from xfer.client.finetune.data import load_target
    from xfer.client.finetune.metrics import evaluate
    from xfer.client.finetune.privacy import PrivacyConfig as TorchPrivacy
    from xfer.client.finetune.trainer import finetune
    from xfer.client.onnxhead import PrivacyConfig, fit_head
    from xfer.client.onnxhead.data import load_data
    from xfer.models.card import ModelCard
    from xfer.models.weights import load_safetensors, model_from_card

    card = ModelCard.from_dict(json.loads((source / "card.json").read_text()))
    rows = []
    for shots in SHOTS:
        spec = "digits:classes=5-9" + (f",per_class={shots}" if shots else "")
        for seed in range(seeds):
            ours = load_data(spec, card=card, seed=seed)
            theirs = load_target(spec, card=card, seed=seed)
            assert np.array_equal(ours.train.x, theirs.train.x.numpy())  # the same examples on both sides
            for epsilon in EPSILONS:
                for head in ("logreg", "prototype"):
                    started = time.perf_counter()
                    privacy = PrivacyConfig(epsilon=epsilon, noise_seed=1000 * seed + 17) if epsilon else None
                    r = fit_head(
                        source / "model.onnx",
                        train=ours.train,
                        val=ours.val,
                        test=ours.test,
                        strategy=head,
                        label_names=ours.label_names,
                        privacy=privacy,
                    )
                    rows.append(
                        {
                            "shots": shots,
                            "seed": seed,
                            "epsilon": epsilon,
                            "method": r.strategy,
                            "accuracy": r.test_metrics.accuracy,
                            "seconds": time.perf_counter() - started,
                            "train": len(ours.train),
                        }
                    )
                started = time.perf_counter()
                model = load_safetensors(model_from_card(card), source / "model.safetensors")
                config = FinetuneConfig(
                    strategy="linear-probe",
                    device="cpu",
                    seed=seed,
                    privacy=TorchPrivacy(epsilon=epsilon) if epsilon else None,
                )
                result = finetune(
                    model, train=theirs.train, val=theirs.val, config=config, label_names=theirs.label_names, card=card
                )
                test = evaluate(result.model, theirs.test.x, theirs.test.y, label_names=theirs.label_names)
                rows.append(
                    {
                        "shots": shots,
                        "seed": seed,
                        "epsilon": epsilon,
                        "method": "torch linear-probe",
                        "accuracy": test.accuracy,
                        "seconds": time.perf_counter() - started,
                        "train": len(theirs.train),
                    }
                )
            print(f"  {spec} seed {seed}: done", flush=True)
    return rows


def print_accuracy(rows: list[dict]) -> None:
    methods = ("onnx-logreg", "onnx-prototype", "torch linear-probe")
    print("\n## Test accuracy, digits 5-9 from a convnet trained on digits 0-4 (mean ± std over seeds)\n")
    print("| labels per class | DP ε | " + " | ".join(methods) + " | logreg / probe |")
    print("| --- | --- | " + " | ".join("---" for _ in methods) + " | --- |")
    for shots in SHOTS:
        for epsilon in EPSILONS:
            cells, means = [], {}
            for method in methods:
                accs = [
                    r["accuracy"]
                    for r in rows
                    if r["shots"] == shots and r["epsilon"] == epsilon and r["method"] == method
                ]
                means[method] = statistics.mean(accs)
                spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
                cells.append(f"{means[method]:.3f} ± {spread:.3f}")
            n = next(r["train"] for r in rows if r["shots"] == shots)
            label = f"{shots}" if shots else f"all ({n})"
            ratio = means["onnx-logreg"] / means["torch linear-probe"]
            print(f"| {label} | {epsilon or '—'} | " + " | ".join(cells) + f" | {ratio:.2f} |")


def write_cost_data(source: Path, work: Path, *, large: int) -> list[tuple[str, Path]]:
    import numpy as np

    from xfer.client.onnxhead.data import load_data
    from xfer.models.card import ModelCard

    card = ModelCard.from_dict(json.loads((source / "card.json").read_text()))
    d = load_data("digits:classes=5-9", card=card, seed=0)
    sets = []
    base = {
        "x_val": d.val.x,
        "y_val": d.val.y,
        "x_test": d.test.x,
        "y_test": d.test.y,
        "label_names": np.array(d.label_names),
    }
    small = work / "cost-digits.npz"
    np.savez(small, x_train=d.train.x, y_train=d.train.y, **base)
    sets.append((f"digits ({len(d.train)} train)", small))
    if large:
        rng = np.random.default_rng(0)
        rows = rng.integers(0, len(d.train), large)
        x = (d.train.x[rows] + rng.normal(0.0, 0.3, (large, *d.train.x.shape[1:]))).astype(np.float32)
        big = work / f"cost-{large}.npz"
        np.savez(big, x_train=x, y_train=d.train.y[rows], **base)
        sets.append((f"{large} train (resampled + noise)", big))
    return sets


def run_worker(kind: str, *, source: Path, data: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            kind,
            "--source",
            str(source),
            "--data",
            str(data),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_cost(source: Path, work: Path, *, large: int, threads: int, reps: int) -> None:
    print(f"\n## Cost of one adaptation (fresh process each, {threads} thread(s), median of {reps})\n")
    print("| training set | side | process s | fit s | peak RSS MiB | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios = []
    for label, data in write_cost_data(source, work, large=large):
        medians = {}
        for kind in ("torch-free", "torch-probe"):
            runs = [run_worker(kind, source=source, data=data, threads=threads) for _ in range(reps)]
            medians[kind] = {
                key: statistics.median(r[key] for r in runs)
                for key in ("process_seconds", "fit_seconds", "peak_rss_mb", "accuracy")
            }
            m = medians[kind]
            print(
                f"| {label} | {kind} | {m['process_seconds']:.2f} | {m['fit_seconds']:.2f} | "
                f"{m['peak_rss_mb']:.0f} | {m['accuracy']:.3f} |",
                flush=True,
            )
        a, b = medians["torch-free"], medians["torch-probe"]
        ratios.append(
            (
                label,
                a["process_seconds"] / b["process_seconds"],
                a["fit_seconds"] / b["fit_seconds"],
                a["peak_rss_mb"] / b["peak_rss_mb"],
            )
        )
    print("\nratios torch-free / torch probe (below 1: the torch-free fit is cheaper)")
    for label, process, fit, memory in ratios:
        print(f"  {label}: process time {process:.2f}, fit time {fit:.2f}, peak memory {memory:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, no large set, 1 rep (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--large", type=int, default=50_000, help="size of the large cost run (0: skip)")
    parser.add_argument("--reps", type=int, default=3, help="cost runs per side (median)")
    parser.add_argument("--threads", type=int, default=1, help="threads for numpy/onnxruntime/torch")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp dir)")
    parser.add_argument("--worker", choices=("torch-free", "torch-probe"), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work = worker_torch_free if args.worker == "torch-free" else worker_torch_probe
        print(json.dumps(work(source=args.source, data=args.data, threads=args.threads)))
        return 0
    if args.quick:
        args.seeds, args.large, args.reps = 1, 0, 1
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="xfer-onnxhead-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = train_source(work)
        rows = accuracy_table(source, seeds=args.seeds)
        print_accuracy(rows)
        print_cost(source, work, large=args.large, threads=args.threads, reps=args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
