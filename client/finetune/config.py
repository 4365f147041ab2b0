"""The frozen configuration objects of the fine-tuning API (torch-free).

`FinetuneConfig` is the one object `finetune`, `search` and `adapt` take;
`PrivacyConfig` and `SearchConfig` hang off it. Every field is keyword-only
and checked when the object is made, so a bad value fails before any data
is read, with a message that says how to fix it. `None` means "the engine's
default for this data size" (see `xfer.client.finetune.budget`).
"""

from __future__ import annotations

import dataclasses
import math

from xfer.client.finetune.errors import DeviceError, FinetuneError, PrivacyError, SearchError
from xfer.client.finetune.schedules import SCHEDULES
from xfer.client.seeds import MAX_DERIVED_SEED, is_seed

ACCOUNTANTS = ("prv", "rdp")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: Label-free selection criteria of the source-free strategies (implemented in `sfda_criteria`).
LABEL_FREE_CRITERIA = ("im", "snd", "entropy")
DEFAULT_CRITERION = "im"


#: Training computes in float32: a rate or scale past its range overflows inside torch.
FLOAT32_MAX = 3.4028234663852886e38
#: The ε one DP-SGD run may target. Below, the noise drowns any signal and solving for it takes minutes
#: (Opacus doubles σ from 10); above, the guarantee (e^ε) is void and the PRV accountant overflows.
MIN_EPSILON, MAX_EPSILON = 0.01, 100.0


def _positive(
    name: str, value: float | None, *, error: type[FinetuneError] = FinetuneError, integer: bool = False
) -> None:
    if value is None:
        return
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise error(f"{name} must be a whole number, got {value!r}")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise error(f"{name} must be a positive finite number, got {value!r}")
    if not integer and value > FLOAT32_MAX:
        raise error(f"{name} must be at most {FLOAT32_MAX:.3g} (training computes in float32), got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """DP-SGD: the (ε, δ) the released result must satisfy, and the knobs to get there.

    `epsilon` covers everything the run releases: one training run, or a whole
    hyperparameter search (selection included). `delta=None` is
    min(1e-5, 1/N^1.1) for the size bucket N (the training-set size rounded up
    to a power of two, the only size a report carries). `max_grad_norm=None`
    is the measured default (`budget.DP_CLIP`). `budget` is the total ε the
    local ledger allows on this data set, over all runs.
    """

    epsilon: float
    delta: float | None = None
    max_grad_norm: float | None = None
    accountant: str = "prv"
    ghost_clipping: bool = False
    budget: float | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.epsilon, bool)
            or not isinstance(self.epsilon, (int, float))
            or not MIN_EPSILON <= self.epsilon <= MAX_EPSILON
        ):
            raise PrivacyError(
                f"target epsilon must be between {MIN_EPSILON} and {MAX_EPSILON:g}, got {self.epsilon!r}"
            )
        if self.delta is not None and not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise PrivacyError(f"delta must be in (0, 1), got {self.delta!r}")
        _positive("max_grad_norm", self.max_grad_norm, error=PrivacyError)
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyError(f"unknown accountant {self.accountant!r}; valid: {', '.join(ACCOUNTANTS)}")
        _positive("privacy budget", self.budget, error=PrivacyError)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Hyperparameter search over strategy × learning rate.

    Without DP: stratified k-fold cross-validation over the whole grid, the
    winner retrained on all training data. With DP: private selection with a
    random number of trials (Papernot & Steinke, ICLR 2022), `trials` on
    average, each a random grid cell scored by a noisy held-out count; see
    `xfer.client.finetune.search`.
    """

    strategies: tuple[str, ...] = ("linear-probe", "lp-ft")
    #: None: each strategy's default LR × `LR_MULTIPLIERS`.
    lrs: tuple[float, ...] | None = None
    folds: int = 3
    #: DP only: expected number of random trials (None: the grid size, at least 2).
    trials: float | None = None
    #: DP only: shape η of the truncated negative binomial number of trials (0: logarithmic, 1: geometric).
    trials_shape: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.strategies, str) or not self.strategies:
            raise SearchError("the search needs a non-empty tuple of strategy names, e.g. ('linear-probe', 'lp-ft')")
        if self.lrs is not None:
            if isinstance(self.lrs, (str, float, int)) or not self.lrs:
                raise SearchError(f"lrs must be a non-empty tuple of learning rates, got {self.lrs!r}")
            for lr in self.lrs:
                _positive("every learning rate", lr, error=SearchError)
        _positive("folds", self.folds, error=SearchError, integer=True)
        if self.folds < 2:
            raise SearchError(f"folds must be at least 2, got {self.folds}")
        if self.trials is not None and not (
            isinstance(self.trials, (int, float)) and math.isfinite(self.trials) and self.trials >= 1
        ):
            raise SearchError(f"trials must be a finite number >= 1, got {self.trials!r}")
        if not (
            isinstance(self.trials_shape, (int, float)) and math.isfinite(self.trials_shape) and self.trials_shape >= 0
        ):
            raise SearchError(f"trials_shape must be finite and >= 0, got {self.trials_shape!r}")


#: Self-supervised objectives of `SelfPretrainConfig` (`xfer.client.finetune.selfsup`).
SELF_PRETRAIN_OBJECTIVES = ("masked", "contrastive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfPretrainConfig:
    """Self-pretraining: continue training the pulled body on the client's own unlabelled examples first.

    `masked`: reconstruct randomly masked patches (features or pixels) from
    the body's features through a small decoder; the loss is per example, so
    it runs under DP-SGD too. `contrastive`: SimCLR's NT-Xent between two
    augmentations of each example, the rest of the batch as negatives (an
    example's loss depends on the others, so not under DP). Under DP the
    self-pretraining spends `epsilon_share` of the run's ε and fine-tuning
    the rest (basic composition; each gets half of δ). `batch_size=None`:
    the engine's default for the size bucket of the unlabelled pool (at
    least 16, for negatives).
    """

    steps: int
    objective: str = "masked"
    lr: float = 1e-3
    batch_size: int | None = None
    #: masked: fraction of patches (features) hidden per example.
    mask_ratio: float = 0.5
    #: contrastive: softmax temperature of NT-Xent.
    temperature: float = 0.5
    #: DP only: share of the run's ε that self-pretraining spends.
    epsilon_share: float = 0.5

    def __post_init__(self) -> None:
        _positive("self_pretrain steps", self.steps, integer=True)
        if self.objective not in SELF_PRETRAIN_OBJECTIVES:
            raise FinetuneError(
                f"unknown self-pretraining objective {self.objective!r}; valid: {', '.join(SELF_PRETRAIN_OBJECTIVES)}"
            )
        _positive("self_pretrain lr", self.lr)
        _positive("self_pretrain batch_size", self.batch_size, integer=True)
        _positive("temperature", self.temperature)
        for name in ("mask_ratio", "epsilon_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise FinetuneError(f"{name} must be strictly between 0 and 1, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """How to adapt a model: strategy, step budget, optimisation, privacy, search.

    The budget is counted in optimizer steps. `steps=None` and `epochs=None`
    take the default budget for the data size (`budget.default_steps`);
    `epochs` is a convenience that means passes over the size bucket (so it
    reveals nothing finer than the bucket). `patience` counts evaluations
    (every `eval_every` steps, default about one pass over the bucket)
    without validation improvement; it needs a validation split.
    """

    strategy: str = "lp-ft"
    lr: float | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    schedule: str = "cosine"
    weight_decay: float = 0.0
    patience: int | None = None
    eval_every: int | None = None
    reinit_head: bool = False
    device: str = "auto"
    seed: int = 0
    privacy: PrivacyConfig | None = None
    search: SearchConfig | None = None
    #: A multi-task source's head to start from (None: its first); see `xfer.models.multitask`.
    head: str | None = None
    #: Self-supervised pretraining on the client's unlabelled examples before fine-tuning (None: none).
    self_pretrain: SelfPretrainConfig | None = None
    #: Source-free strategies only: the label-free criterion that picks the checkpoint (and, with a search,
    #: the learning rate) on the unlabelled validation split.
    criterion: str = DEFAULT_CRITERION

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) and not hasattr(self.strategy, "plan"):
            raise FinetuneError(f"strategy must be a strategy name such as 'lp-ft', got {self.strategy!r}")
        _positive("lr", self.lr)
        _positive("steps", self.steps, integer=True)
        _positive("epochs", self.epochs)
        if self.steps is not None and self.epochs is not None:
            raise FinetuneError("give the budget as steps or as epochs, not both")
        _positive("batch_size", self.batch_size, integer=True)
        if self.schedule not in SCHEDULES:
            raise FinetuneError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if (
            isinstance(self.weight_decay, bool)
            or not isinstance(self.weight_decay, (int, float))
            or not math.isfinite(self.weight_decay)
            or self.weight_decay < 0
        ):
            raise FinetuneError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _positive("patience", self.patience, integer=True)
        _positive("eval_every", self.eval_every, integer=True)
        if self.device not in DEVICE_CHOICES:
            raise DeviceError(f"unknown device {self.device!r}; valid: {', '.join(DEVICE_CHOICES)}")
        if not is_seed(self.seed, upper=MAX_DERIVED_SEED):
            raise FinetuneError(f"seed must be a whole number 0..{MAX_DERIVED_SEED}, got {self.seed!r}")
        if self.privacy is not None and not isinstance(self.privacy, PrivacyConfig):
            raise FinetuneError(f"privacy must be a PrivacyConfig or None, got {type(self.privacy).__name__}")
        if self.search is not None and not isinstance(self.search, SearchConfig):
            raise FinetuneError(f"search must be a SearchConfig or None, got {type(self.search).__name__}")
        if self.head is not None and (not isinstance(self.head, str) or not self.head):
            raise FinetuneError(f"head must be the name of one of the source's heads, got {self.head!r}")
        if self.self_pretrain is not None:
            if not isinstance(self.self_pretrain, SelfPretrainConfig):
                raise FinetuneError(
                    f"self_pretrain must be a SelfPretrainConfig or None, got {type(self.self_pretrain).__name__}"
                )
            if self.privacy is not None and self.self_pretrain.objective != "masked":
                raise PrivacyError(
                    f"self-pretraining objective {self.self_pretrain.objective!r} under DP: its loss "
                    f"couples the examples of a batch (the others are its negatives), so clipping "
                    f"per example bounds no one example's influence; use objective 'masked'"
                )
        if self.criterion not in LABEL_FREE_CRITERIA:
            raise SearchError(
                f"unknown label-free criterion {self.criterion!r}; valid: {', '.join(LABEL_FREE_CRITERIA)}"
            )

    @property
    def strategy_label(self) -> str:
        """The strategy as spelled in reports."""
        return self.strategy if isinstance(self.strategy, str) else str(getattr(self.strategy, "label", ""))

    def replace(self, **changes: object) -> FinetuneConfig:
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
