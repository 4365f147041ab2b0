"""Random seeds: the one range every command and config accepts.

0..2^32-1: numpy's and torch's generators both take it, and the seeds a
search derives (seed + fold, seed + trial) stay within both.
"""

from __future__ import annotations

import argparse

MAX_SEED = 2**32 - 1


def is_seed(value: object) -> bool:
    """True for a whole number in 0..MAX_SEED (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


def seed_argument(text: str) -> int:
    """argparse type of --seed."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not is_seed(value):
        raise argparse.ArgumentTypeError(f"a seed is a whole number 0..{MAX_SEED}, got {text!r}")
    return value
