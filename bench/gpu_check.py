"""GPU checks for client/finetune, then the fine-tuning benchmark on CUDA — one script.

Runs `pytest -m gpu tests/finetune` (CUDA setup, bf16 autocast, pinned
memory, DP on the GPU) and `bench/finetune.py --device cuda`, prints both
outputs and exits non-zero if either fails. Exits 2, saying so, on a machine
without a CUDA GPU. The lead wires it as `make gpu-check`.

    .venv/bin/python bench/gpu_check.py [--reps 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU visible; nothing to check on this machine", file=sys.stderr)
        return 2
    print(
        f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}",
        flush=True,
    )
    failures = []
    steps = [
        (
            "pytest -m gpu",
            [sys.executable, "-m", "pytest", "tests/finetune", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs"],
        ),
        (
            "bench (cuda)",
            [
                sys.executable,
                "bench/finetune.py",
                "--device",
                "cuda",
                "--threads",
                "0",
                "--reps",
                str(args.reps),
                "--examples",
                str(args.examples),
                "--batch-size",
                str(args.batch_size),
            ],
        ),
    ]
    for name, cmd in steps:
        started = time.perf_counter()
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        print(
            f"== {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        if code != 0:
            failures.append(name)
    if failures:
        print(f"gpu-check failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("gpu-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
