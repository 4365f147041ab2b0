"""What the transfer report runs: sources, targets and every setting, fixed up front.

Nothing here is tuned to make results agree with the literature: the
numbers below were chosen once, before any result was seen, and the report's
"Setup" section prints them (`describe_settings`).
"""

from __future__ import annotations

import dataclasses
import math

#: Surgical / discriminative / gradual strategies of section 3, in the order the report shows them.
STRATEGIES = ("full", "discriminative", "gradual-unfreeze", "lp-ft", "linear-probe", "surgical:auto")
NO_DP = None


@dataclasses.dataclass(frozen=True)
class Source:
    """A source model the operator trains on the digits *source* pool and registers."""

    key: str
    model_id: str
    classes: tuple[int, ...]
    description: str


@dataclasses.dataclass(frozen=True)
class Target:
    """A client's target task: a digits data spec over the *target* pool plus its source model."""

    key: str
    level: str  # input | feature | output
    title: str
    source: str
    data: str  # data spec of client/finetune/data.py, without per_class

    def spec(self, per_class: int | None) -> str:
        """The data spec with the few-label subsample (None = the whole training split)."""
        return self.data if per_class is None else f"{self.data},per_class={per_class}"


SOURCES: dict[str, Source] = {
    "digits10": Source("digits10", "digits-convnet", tuple(range(10)), "all ten digits of the source pool"),
    "digits0to4": Source("digits0to4", "digits-convnet-0to4", tuple(range(5)), "digits 0-4 of the source pool"),
}

TARGETS: dict[str, Target] = {
    "input": Target("input", "input", "input-level: gaussian noise (σ=0.3), digits 0-9", "digits10",
                    "digits:shift=gaussian-noise"),
    "feature": Target("feature", "feature", "feature-level: unseen classes 5-9", "digits0to4",
                      "digits:classes=5-9"),
    "output": Target("output", "output", "output-level: permuted labels (y → y+1 mod 10)", "digits10",
                     "digits:shift=permute-labels"),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the report. `full()` and `quick()` are the two presets."""

    quick: bool
    seeds: tuple[int, ...]
    arch: str = "convnet"
    jobs: int = 2
    # source models (models.train defaults)
    source_epochs: int = 30
    source_lr: float = 3e-3
    source_seed: int = 0
    # every adaptation run: a fixed optimizer-step budget, no early stopping, last checkpoint kept
    steps: int = 200
    batch_size: int = 32
    # 1. pretrained vs random
    init_targets: tuple[str, ...] = ("feature", "input")
    few_labels: tuple[int | None, ...] = (5, 20, None)
    random_lr: float = 3e-3  # the LR models.train uses to train the source models from scratch
    # 2./3./5. the adaptation regime: few labels per class
    adapt_per_class: int | None = 20
    surgical_targets: tuple[str, ...] = ("input", "feature", "output")
    strategy_targets: tuple[str, ...] = ("input", "feature", "output")
    strategies: tuple[str, ...] = STRATEGIES
    # 4. privacy
    #: The target where the source's features should help most: the source saw these ten digits (clean).
    privacy_target: str = "input"
    privacy_per_class: int | None = None
    privacy_batch_size: int = 64
    epsilons: tuple[float | None, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, NO_DP)
    #: (initialisation, strategy) arms of the privacy plot.
    privacy_arms: tuple[tuple[str, str], ...] = (("pretrained", "linear-probe"), ("pretrained", "full"),
                                                 ("random", "full"))
    max_grad_norm: float = 1.0
    # 5. search (the product's default LR grid: each strategy's LR x 0.3, 1, 3)
    search_targets: tuple[str, ...] = ("input", "feature", "output")
    search_strategies: tuple[str, ...] = STRATEGIES
    folds: int = 3

    @classmethod
    def full(cls, *, seeds: int = 3, arch: str = "convnet", jobs: int = 2) -> "Settings":
        """The report as `make report` runs it."""
        return cls(quick=False, seeds=tuple(range(seeds)), arch=arch, jobs=jobs)

    @classmethod
    def quick_preset(cls, *, seeds: int = 1, arch: str = "convnet", jobs: int = 2) -> "Settings":
        """One seed, fewer settings, shorter training: the smoke test's report (same structure)."""
        return cls(quick=True, seeds=tuple(range(seeds)), arch=arch, jobs=jobs, source_epochs=8, steps=60,
                   init_targets=("feature",), few_labels=(5, None), epsilons=(1.0, NO_DP),
                   search_targets=("feature",), search_strategies=("linear-probe", "full"), folds=2)


def epochs_for(n: int, *, batch_size: int, steps: int) -> int:
    """Epochs that give about `steps` optimizer steps on `n` examples (at least one epoch)."""
    return max(1, math.ceil(steps / max(1, math.ceil(n / batch_size))))


def labels_text(per_class: int | None) -> str:
    """'5 per class' or 'all'."""
    return "all" if per_class is None else f"{per_class} per class"


def eps_text(epsilon: float | None) -> str:
    """'ε=1' or 'no DP'."""
    return "no DP" if epsilon is None else f"ε={epsilon:g}"


def describe_settings(settings: Settings) -> list[str]:
    """The Setup section's bullet points (Markdown)."""
    s = settings
    src = [f"`{v.model_id}` ({v.description})" for v in SOURCES.values()]
    tgt = [f"{t.title} (`{t.data}`, source `{SOURCES[t.source].model_id}`)" for t in TARGETS.values()]
    return [
        f"Mode: {'**quick** (smoke test: one seed, fewer settings, shorter training)' if s.quick else 'full'}; "
        f"seeds {', '.join(map(str, s.seeds))}; architecture `{s.arch}`; {s.jobs} worker process(es).",
        "Data: scikit-learn's 1,797 handwritten 8×8 digits, split once into disjoint *source* and *target* pools "
        "(`models.digits`). Sources never see the target pool.",
        f"Source models (trained once, seed {s.source_seed}, {s.source_epochs} epochs, Adam lr {s.source_lr:g}, "
        f"batch 64): " + "; ".join(src) + ". Each is registered on a fresh xfer server by an operator token "
        "and pulled by a client token with `Client.load_torch`.",
        "Targets: " + "; ".join(tgt) + ".",
        "Each seed draws its own stratified 60/20/20 train/val/test split of the target pool, its own few-label "
        "subsample of the train split, its own noise for the gaussian-noise shift, head initialisation and batch "
        "order. The **test split is only ever used to score**; the val split is not used at all (no early "
        "stopping), so nothing is chosen on data the numbers are reported on — except the 'best in hindsight' "
        "baseline of section 5, which is hindsight by definition.",
        f"Every adaptation run: AdamW (no weight decay), cosine schedule, batch {s.batch_size}, about "
        f"{s.steps} optimizer steps (epochs = ⌈{s.steps} / batches per epoch⌉), the last checkpoint is kept. "
        "Learning rates are each strategy's default (full/discriminative/gradual-unfreeze/lp-ft/surgical 1e-3, "
        "linear-probe 1e-2, lp-ft's probe phase 10× lr); the head is re-initialised whenever the label set "
        "differs from the source's.",
        f"Random initialisation = the same architecture freshly initialised, trained with `full` at lr "
        f"{s.random_lr:g} (the LR that trains the source models from scratch) and the same step budget. "
        "Random-initialisation runs are not reported to the server (they do not use a source model).",
        f"Adaptation regime of sections 2, 3 and 5: {labels_text(s.adapt_per_class)} training examples.",
        f"Privacy (section 4): target `{TARGETS[s.privacy_target].data}` with {labels_text(s.privacy_per_class)} "
        f"training examples, Opacus DP-SGD with Poisson sampling, batch {s.privacy_batch_size} (expected), clip "
        f"norm {s.max_grad_norm:g}, δ = min(1e-5, 1/n^1.1), PRV accountant, noise solved for the target ε over "
        "the whole run; the same LRs and step budget as above.",
        f"Search (section 5): `client.finetune.search` — {s.folds}-fold cross-validation on the training split "
        "over strategy × LR (each strategy's default LR × 0.3, 1, 3), the winner retrained on the whole "
        "training split and scored once on test.",
        "Verdicts compare means: a difference counts only when it is larger than twice its standard error "
        "(√(s₁²/n₁ + s₂²/n₂)); with one seed no verdict is possible.",
    ]
