"""What a run report may say, so that it narrows the data size no further than its bucket (torch-free).

The report carries the training-set size only as its power-of-two bucket N.
Every other field is made to hold for every size n in (N/2, N]:

- hyperparameters, δ, σ, the sample rate and the steps are functions of N
  and the config (`budget.py`), and ε spent of those and of the evaluation
  rounds actually run (whose spacing is again a function of N);
- accuracy-like metrics of a held-out split are exact fractions c/m whose
  denominator m reveals the split's size, hence n. They are rounded to a
  grid of 2^-k with 2^k at most the smallest held-out split any n in the
  bucket can give (`fraction_grid`): every denominator m in range then has a
  numerator that rounds to the same grid point, so the value is consistent
  with every n in the bucket. In few-label mode the test split can be far
  larger than the whole training bucket; when its own bucket M has
  M/2 >= N it cannot be the held-out part of a 60/20/20 split of the same
  data (that is never larger than its training part), so its size says
  nothing about n and the grid follows M instead (every test size in M's
  bucket stays consistent). The choice depends on the two buckets only.
  The cross-validated accuracy, whose denominator is n itself, gets the
  grid of the smallest n in the bucket. The grid is reported
  (`metric_grid`), so readers know the precision;
- per-class accuracies (denominators of a few examples) and the validation
  accuracy are not sent at all (they stay in the local metrics.json), and
  under DP no noise-free statistic of the training data is sent: a private
  search's noisy scores stay local too;
- wall time is rounded to a power of two; the training work behind it
  (steps x batch) is fixed by the bucket;
- source-free runs (no labels) may carry the label-free criteria whose
  value is a mean over the examples (`REPORTABLE_LABEL_FREE`: `im`,
  `entropy`) as `label_free/<name>`, rounded to `fraction_grid`: a mean of m
  real-valued per-example terms can take any value for every m, so it says
  nothing about m, and the rounding bounds its precision anyway. SND is
  never sent: its scale grows with the log of the split size;

`tests/finetune/test_finetune_report_privacy.py` enumerates every n
consistent with a real report and requires the whole bucket to remain.
"""

from __future__ import annotations

import math

#: The smallest ratio held-out (test or validation) / training examples the stratified 60/20/20 split
#: can produce: a class of 7 examples splits 5/1/1. Larger classes give ratios closer to 1/3.
MIN_HELD_OUT_PER_TRAIN = 0.2
#: Rounding of a metric that is not a fraction of examples (the mean test loss).
LOSS_DECIMALS = 3
#: Label-free criteria a report may carry: means over examples, whose scale does not depend on their number.
REPORTABLE_LABEL_FREE = ("im", "entropy")


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(x, 1.0))))


def smallest_size(bucket: int) -> int:
    """The smallest training-set size with this bucket."""
    return 1 if bucket <= 1 else bucket // 2 + 1


def fraction_grid(bucket: int) -> float:
    """Grid of held-out-split fractions: 2^-k, 2^k <= the smallest held-out split of any n in the bucket."""
    smallest_held_out = max(1, math.floor(smallest_size(bucket) * MIN_HELD_OUT_PER_TRAIN))
    return 1.0 / _pow2_floor(smallest_held_out)


def held_out_grid(bucket: int, held_out: int | None) -> float:
    """Grid of the test metrics: by the training bucket, or by the test split's own bucket when that
    bucket is at least twice the training bucket (few-label mode: the test size is unrelated to n)."""
    if held_out is not None and held_out > 0:
        test_bucket = 1 if held_out <= 1 else 1 << (held_out - 1).bit_length()
        if test_bucket // 2 >= bucket:
            return 1.0 / _pow2_floor(smallest_size(test_bucket))
    return fraction_grid(bucket)


def training_fraction_grid(bucket: int) -> float:
    """Grid of fractions over the whole training set (cross-validated accuracy): 2^-k, 2^k <= min n."""
    return 1.0 / _pow2_floor(smallest_size(bucket))


def quantize(value: float, grid: float) -> float:
    """`value` rounded to the nearest multiple of `grid` (NaN stays NaN and is dropped by the caller)."""
    if not math.isfinite(value):
        return value
    return round(value / grid) * grid


def round_seconds(seconds: float) -> float:
    """Wall time rounded to the nearest power of two (in log scale); 0 stays 0."""
    if not math.isfinite(seconds) or seconds <= 0:
        return 0.0
    return float(2.0 ** round(math.log2(seconds)))


def report_metrics(
    *, test: dict[str, float] | None, bucket: int, cv_accuracy: float | None, held_out: int | None = None
) -> dict[str, float]:
    """The metrics a report carries: test-split scalars on `held_out_grid`, and the CV accuracy if any."""
    grid = held_out_grid(bucket, held_out)
    out: dict[str, float] = {}
    for name, value in (test or {}).items():
        if name == "loss":
            out[name] = round(float(value), LOSS_DECIMALS)
        elif name in ("accuracy", "macro_f1", "ece"):
            out[name] = quantize(float(value), grid)
    if cv_accuracy is not None:
        out["cv/accuracy"] = quantize(float(cv_accuracy), training_fraction_grid(bucket))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def label_free_metrics(scores: dict[str, float], *, bucket: int) -> dict[str, float]:
    """`label_free/<name>` for the reportable criteria among `scores`, on the bucket's held-out grid."""
    grid = fraction_grid(bucket)
    out = {
        f"label_free/{name}": quantize(float(scores[name]), grid) for name in REPORTABLE_LABEL_FREE if name in scores
    }
    return {k: v for k, v in out.items() if math.isfinite(v)}
