"""Throughput of the fine-tuning trainer against hand-written baselines, measured in the same run.

1. `finetune(strategy="full")` vs a plain PyTorch loop (same model, data,
   AdamW, batch size, epochs);
2. `finetune(privacy=...)` vs a plain Opacus loop (`make_private` with
   Poisson sampling through `DPDataLoader`) at the same noise multiplier.

Examples/second counts training examples only (setup such as copying the
model or solving the noise multiplier is excluded on both sides). One
warm-up round is discarded; then both sides run once per round, in
alternating order, for --reps rounds and the medians are compared. Prints
both ratios (ours / baseline; ≥ 0.95 is the target).

    .venv/bin/python bench/finetune.py [--reps 7] [--epochs 4] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xfer.client.finetune.budget import plan_budget
from xfer.client.finetune.config import FinetuneConfig, PrivacyConfig
from xfer.client.finetune.data import TensorData
from xfer.client.finetune.devices import resolve_device
from xfer.client.finetune.privacy import plan_dp
from xfer.client.finetune.trainer import finetune
from xfer.models import create_model

LR = 1e-3


def make_data(n: int, *, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 8, 8), generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorData(x, y, torch.arange(n))


def baseline_plain(
    model: torch.nn.Module, data: TensorData, *, epochs: int, batch_size: int, device: torch.device
) -> tuple[int, float]:
    """The loop anyone would write by hand."""
    model = copy.deepcopy(model).to(device).train()
    x, y = data.x.to(device), data.y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)  # as ours (weight_decay=0)
    loss_fn = torch.nn.CrossEntropyLoss()
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(batch_size):
            idx = idx.to(device)
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen, time.perf_counter() - start


def baseline_opacus(
    model: torch.nn.Module,
    data: TensorData,
    *,
    epochs: int,
    batch_size: int,
    noise_multiplier: float,
    device: torch.device,
) -> tuple[int, float]:
    """The plain Opacus tutorial loop: make_private + DPDataLoader (Poisson sampling)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model = copy.deepcopy(model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)  # as ours (weight_decay=0)
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="prv")
        module, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=noise_multiplier, max_grad_norm=1.0
        )
        loss_fn = torch.nn.CrossEntropyLoss()
        seen = 0
        start = time.perf_counter()
        for _ in range(epochs):
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                loss = loss_fn(module(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(yb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return seen, elapsed


def ours(
    model: torch.nn.Module,
    data: TensorData,
    *,
    epochs: int,
    batch_size: int,
    device: str,
    privacy: PrivacyConfig | None,
) -> tuple[int, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # `epochs` passes over the data (a power of two, so it is its own size bucket) as steps.
        steps = epochs * -(-len(data) // batch_size)
        config = FinetuneConfig(
            strategy="full",
            lr=LR,
            steps=steps,
            batch_size=batch_size,
            eval_every=steps,
            privacy=privacy,
            device=device,
            seed=0,
        )
        result = finetune(model, train=data, val=None, config=config, label_names=[str(i) for i in range(10)])
    return result.examples_seen, result.train_seconds


def compare(name: str, run_ours, run_base, *, reps: int) -> float:
    run_ours(), run_base()  # warm-up: allocator, thread pools, lazy imports
    rates_ours, rates_base = [], []
    for rep in range(reps):
        # Alternate which side goes first so drift in machine load does not favour either.
        order = ((run_base, rates_base), (run_ours, rates_ours))
        for run, rates in order if rep % 2 == 0 else order[::-1]:
            seen, seconds = run()
            rates.append(seen / seconds)
    ours_med, base_med = statistics.median(rates_ours), statistics.median(rates_base)
    ratio = ours_med / base_med
    print(f"{name:<34} ours {ours_med:10.0f} ex/s   baseline {base_med:10.0f} ex/s   ratio {ratio:.3f}", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for both sides (1: stable numbers on a shared machine)",
    )
    args = parser.parse_args(argv)

    setup = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("convnet", width=args.width, depth=3)
    data = make_data(args.examples)
    print(
        f"device {setup.kind}, convnet width {args.width}, {args.examples} examples, batch {args.batch_size}, "
        f"{args.epochs} epochs, {args.reps} reps (median), torch threads {torch.get_num_threads()}"
    )
    kw = {"epochs": args.epochs, "batch_size": args.batch_size}
    ratio = compare(
        "trainer vs plain PyTorch loop",
        lambda: ours(model, data, device=setup.kind, privacy=None, **kw),
        lambda: baseline_plain(model, data, device=setup.device, **kw),
        reps=args.reps,
    )
    ratios = {"plain": ratio}
    if not args.skip_dp:
        privacy = PrivacyConfig(epsilon=8.0, accountant="prv", max_grad_norm=1.0)
        steps = args.epochs * -(-args.examples // args.batch_size)
        config = FinetuneConfig(steps=steps, batch_size=args.batch_size, privacy=privacy)
        sigma = plan_dp(privacy, budget=plan_budget(n=args.examples, config=config, strategy_lr=LR)).noise_multiplier
        ratios["dp"] = compare(
            "DP trainer vs plain Opacus loop",
            lambda: ours(model, data, device=setup.kind, privacy=privacy, **kw),
            lambda: baseline_opacus(model, data, noise_multiplier=sigma, device=setup.device, **kw),
            reps=args.reps,
        )
    print("ratios: " + "  ".join(f"{k}={v:.3f}" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
