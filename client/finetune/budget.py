"""Step budgets and the defaults that depend on the data size (torch-free).

Two rules shape everything here:

1. **Budgets are optimizer steps.** A budget in epochs gives 10 steps on 50
   examples and 8,000 on 50,000; a budget in steps with a floor gives every
   data size enough updates to learn (`MIN_STEPS`), and large data sets the
   usual ~10 passes.
2. **Everything a report can reveal is a function of the size bucket**
   N = the training-set size rounded up to a power of two (the one size a
   report carries), never of the exact size n: the batch size, the number of
   steps, the evaluation interval, the DP sample rate q = B/N (Poisson
   sampling at a rate fixed before looking at the data, which is also what
   the add/remove-one DP analysis assumes), δ and therefore σ. A report's
   hyperparameters and privacy fields then hold for every n in the bucket.

The defaults were measured on the digits targets (see the README's
adaptation tables); `bench/finetune_defaults.py` reruns the measurement.
"""

from __future__ import annotations

import dataclasses
import math

from xfer.client.finetune.config import FinetuneConfig
from xfer.client.finetune.errors import FinetuneError

#: Fewest optimizer steps a default budget gives (few-label data needs updates, not passes).
MIN_STEPS = 200
#: Default budget on large data: this many passes over the size bucket.
DEFAULT_PASSES = 10
#: Largest default (non-DP) batch; small data sets get smaller batches (more, noisier steps).
MAX_BATCH = 64
MIN_BATCH = 8
#: At most this many evaluations per run by default (they cost a pass over the validation split each).
MAX_EVALUATIONS = 50

#: DP defaults (Tramèr & Boneh 2021; De et al. 2022: large batches, enough steps, a clip that binds).
#: Expected batch as a fraction of the bucket, and its bounds.
DP_BATCH_FRACTION = 1 / 4
DP_MIN_BATCH = 16
DP_MAX_BATCH = 1024
#: DP step budget (measured at ε = 2 on 277 examples: lp-ft 0.674 at 100 steps, 0.766 at 200, 0.772 at 400;
#: linear-probe 0.739, 0.750, 0.755), with the expected batch below: σ grows with the number of steps.
DP_STEPS = 200
#: Per-example clipping norm of a strategy that states none (strategies set their own `dp_clip`).
DP_CLIP = 1.0
#: DP learning rates are the strategy's default times this (noisy steps need bolder ones).
DP_LR_MULTIPLIER = 3.0


def size_bucket(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): the only training-set size a report may carry."""
    if n < 1:
        raise FinetuneError("the training set is empty; give at least one labelled example per class")
    return 1 if n <= 1 else 1 << (n - 1).bit_length()  # exact: no float log2


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(x, 1.0))))


def default_batch_size(bucket: int, *, dp: bool) -> int:
    """The default batch size (DP: the expected Poisson batch) for a size bucket."""
    if dp:
        return int(min(DP_MAX_BATCH, max(DP_MIN_BATCH, _pow2_floor(bucket * DP_BATCH_FRACTION))))
    return int(min(MAX_BATCH, max(MIN_BATCH, _pow2_floor(bucket / 8))))


def passes_to_steps(passes: float, *, bucket: int, batch_size: int) -> int:
    """Steps that make `passes` passes over the size bucket (at least 1)."""
    return max(1, math.ceil(passes * bucket / batch_size))


def default_steps(bucket: int, *, batch_size: int, dp: bool) -> int:
    """The default step budget: DEFAULT_PASSES passes over the bucket, at least MIN_STEPS (DP: DP_STEPS)."""
    passes = passes_to_steps(DEFAULT_PASSES, bucket=bucket, batch_size=batch_size)
    return max(DP_STEPS if dp else MIN_STEPS, passes)


def default_lr(strategy_lr: float, *, dp: bool) -> float:
    """The learning rate when none is given: the strategy's own, scaled up under DP."""
    return strategy_lr * DP_LR_MULTIPLIER if dp else strategy_lr


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a run will do, fixed before training from the size bucket and the config only."""

    bucket: int
    batch_size: int
    steps: int
    eval_every: int
    lr: float
    #: DP only: Poisson sample rate q (a function of bucket and batch) and clipping norm.
    sample_rate: float | None
    max_grad_norm: float | None

    @property
    def steps_per_pass(self) -> int:
        """Steps in one pass over the size bucket."""
        return max(1, math.ceil(self.bucket / self.batch_size))


def plan_budget(
    *, n: int, config: FinetuneConfig, strategy_lr: float, bucket: int | None = None, strategy_clip: float | None = None
) -> Budget:
    """The budget of a run on `n` training examples (used only through its size bucket).

    `bucket` overrides the bucket of `n` (a search trains on parts of a data set with the whole set's
    budget); `strategy_clip` is the strategy's default DP clipping norm.
    """
    bucket = bucket or size_bucket(n)
    dp = config.privacy is not None
    batch = config.batch_size or default_batch_size(bucket, dp=dp)
    if config.steps is not None:
        steps = config.steps
    elif config.epochs is not None:
        steps = passes_to_steps(config.epochs, bucket=bucket, batch_size=batch)
    else:
        steps = default_steps(bucket, batch_size=batch, dp=dp)
    per_pass = max(1, math.ceil(bucket / batch))
    eval_every = config.eval_every or max(per_pass, math.ceil(steps / MAX_EVALUATIONS))
    lr = config.lr if config.lr is not None else default_lr(strategy_lr, dp=dp)
    sample_rate = clip = None
    if config.privacy is not None:
        # q = 1/ceil(N/B) is Opacus' own convention (one "epoch" of the bucket per 1/q steps).
        sample_rate = 1.0 / per_pass
        clip = (
            config.privacy.max_grad_norm
            if config.privacy.max_grad_norm is not None
            else (strategy_clip if strategy_clip is not None else DP_CLIP)
        )
    return Budget(
        bucket=bucket,
        batch_size=int(batch),
        steps=int(steps),
        eval_every=int(min(eval_every, steps)),
        lr=float(lr),
        sample_rate=sample_rate,
        max_grad_norm=clip,
    )
