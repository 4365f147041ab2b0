"""δ of a differentially private run: the default, and the largest one a caller may choose.

Both follow from the size bucket B (the training-set size rounded up to a
power of two, the only size a report carries), never from n, so δ reveals
nothing finer than B. numpy- and torch-free: the torch engine and the
torch-free head fit share it.
"""

from __future__ import annotations

#: The default δ never exceeds this.
MAX_DEFAULT_DELTA = 1e-5


def default_delta(bucket: int) -> float:
    """min(1e-5, 1/B^1.1) for the bucket B >= n: below 1/n for every n in the bucket."""
    return min(MAX_DEFAULT_DELTA, 1.0 / max(bucket, 1) ** 1.1)


def resolve_delta(delta: float | None, *, bucket: int, error: type[Exception]) -> float:
    """`delta`, or the default for `bucket`; raises `error` for a δ of 1/B or more.

    A guarantee that may fail with probability 1/n or more allows releasing
    some example outright (e.g. one chosen at random).
    """
    if delta is None:
        return default_delta(bucket)
    if delta >= 1.0 / bucket:
        raise error(
            f"delta {delta:g} is not below 1/{bucket} (one over the training set's size rounded up to a power "
            f"of two): a guarantee that weak allows releasing some example outright; choose a delta below "
            f"{1.0 / bucket:.3g}, or leave it out for the default {default_delta(bucket):.3g}"
        )
    return delta
