"""Random seeds: the range a user gives (--seed), and the wider one a config holds.

A user's seed is 0..2^32-1; a search derives seed + fold or seed + trial
from it, so configs take 0..2^63-1, all of which torch (int64) and numpy
accept.
"""

from __future__ import annotations

import argparse

MAX_SEED = 2**32 - 1
MAX_DERIVED_SEED = 2**63 - 1


def is_seed(value: object, *, upper: int = MAX_SEED) -> bool:
    """True for a whole number in 0..upper (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= upper


def seed_argument(text: str) -> int:
    """argparse type of --seed."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not is_seed(value):
        raise argparse.ArgumentTypeError(f"a seed is a whole number 0..{MAX_SEED}, got {text!r}")
    return value
