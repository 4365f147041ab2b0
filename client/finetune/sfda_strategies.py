"""Source-free strategies: adapt a pulled model to the client's *unlabelled* data (TENT, SHOT, AaD, NRC).

Each is a `Strategy` of the one registry (`strategies.py`): its `plan` says
which parameters train, its `objective` builds the loss the source-free loop
(`sfda.py`) minimises. None of them reads a label; none re-initialises the
head (the target is assumed to share the source's label set: closed-set
adaptation). Defaults follow the authors' reference code except where our
engine differs (AdamW for every strategy, budgets in optimizer steps); those
choices are stated on each class and measured in the README.

| strategy | trains | loss | per-example (DP) |
| --- | --- | --- | --- |
| `tent` | normalisation affines only | prediction entropy | yes |
| `shot` | everything but the head | IM + 0.3 × CE to centroid pseudo-labels | no (diversity term, centroids) |
| `aad` | everything | neighbour attraction + batch dispersion | no (feature bank, batch term) |
| `nrc` | everything | reciprocal-neighbour consistency + diversity | no (feature bank, batch term) |
"""

from __future__ import annotations

import abc
import logging
from typing import ClassVar

import torch
from torch import nn

from xfer.client.finetune.errors import StrategyError
from xfer.client.finetune.sfda_losses import (
    aad_alpha,
    aad_loss,
    centroid_pseudo_labels,
    nearest_neighbours,
    nrc_loss,
    reciprocal_weights,
    shot_loss,
    tent_loss,
)
from xfer.client.finetune.strategies import GroupPlan, Phase, Strategy, register_strategy
from xfer.models.base import XferModel

log = logging.getLogger(__name__)

#: Rows per forward pass when a whole split is read in eval mode (pseudo-labels, banks).
PASS_BATCH = 512


def features_and_logits(model: XferModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and the head's logits in one forward pass (the model contract's split).

    A model whose `forward` adds dropout before its head (EfficientNet-Lite)
    gets no dropout here: the source-free methods read the classifier as a
    fixed map from features (SHOT freezes it).
    """
    features = model.forward_features(x)
    return features, model.head_layer(features)


@torch.no_grad()
def pass_outputs(model: XferModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits of every row of `x` in eval mode (the train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    feats, logits = [], []
    for i in range(0, len(x), PASS_BATCH):
        f, z = features_and_logits(model, x[i : i + PASS_BATCH])
        feats.append(f.float())
        logits.append(z.float())
    model.train(was_training)
    return torch.cat(feats), torch.cat(logits)


class Objective(abc.ABC):
    """The loss of one source-free run, with whatever state it keeps across steps (banks, pseudo-labels)."""

    def start(self, model: XferModel) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Called once before the first step."""

    def on_pass(self, model: XferModel) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Called before the first step of every pass over the training data."""

    @abc.abstractmethod
    def loss(
        self, net: nn.Module, model: XferModel, xb: torch.Tensor, idx: torch.Tensor, *, progress: float
    ) -> torch.Tensor:
        """The batch loss. `net` is `model` or (under DP) its Opacus wrapper; `idx` the rows of `xb` in the
        training set; `progress` the fraction of the budget done before this step."""

    def diagnostics(self) -> dict[str, float]:
        """Label-free numbers about the run, for the local metrics.json (never the report)."""
        return {}


class SourceFreeStrategy(Strategy):
    """Base of the strategies that adapt without labels."""

    #: Whether the loss is a mean of per-example terms, so DP-SGD can clip it per example.
    per_example: ClassVar[bool] = False
    #: Why DP-SGD cannot train it (named in the refusal), when `per_example` is False.
    dp_refusal: ClassVar[str] = ""
    #: Default budget in passes over the size bucket (None: the engine's default budget).
    default_passes: ClassVar[float | None] = None
    #: RDumb (Press et al., NeurIPS 2023): reset to the source weights every this many steps (None: never).
    reset_every: int | None = None

    @abc.abstractmethod
    def objective(self, *, model: XferModel, x: torch.Tensor, num_classes: int, seed: int) -> Objective:
        """The loss of a run on training inputs `x` (on the training device)."""


def _block_of(model: XferModel) -> dict[int, str]:
    return {id(p): name for name, params in model.blocks() for p in params}


def _groups_by_block(model: XferModel, params: list[nn.Parameter]) -> tuple[GroupPlan, ...]:
    owner = _block_of(model)
    grouped: dict[str, list[nn.Parameter]] = {}
    for p in params:
        grouped.setdefault(owner[id(p)], []).append(p)
    return tuple(GroupPlan(name, tuple(ps)) for name, ps in grouped.items())


def normalisation_affines(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every affine scale and shift of a normalisation layer.

    GroupNorm, LayerNorm, (frozen-statistics) BatchNorm and InstanceNorm, and
    the per-channel affine maps EfficientNet-Lite's importer folds its batch
    norms into (`ChannelAffine`).
    """
    from xfer.models.efficientnet import ChannelAffine

    kinds = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase, ChannelAffine)
    out = []
    for module_name, module in model.named_modules():
        if isinstance(module, kinds):
            for name, p in module.named_parameters(recurse=False):
                if name in ("weight", "bias"):
                    out.append((f"{module_name}.{name}" if module_name else name, p))
    return out


# -- TENT ---------------------------------------------------------------------------------------


class _TentObjective(Objective):
    def loss(
        self, net: nn.Module, model: XferModel, xb: torch.Tensor, idx: torch.Tensor, *, progress: float
    ) -> torch.Tensor:
        return tent_loss(net(xb))


class Tent(SourceFreeStrategy):
    """TENT (Wang et al., ICLR 2021): minimise prediction entropy, updating only normalisation affines.

    One optimizer step per batch of the unlabelled stream; Adam (here AdamW
    without weight decay) at 1e-3 as the reference's CIFAR-10-C config. Our
    models normalise with GroupNorm/LayerNorm or frozen, folded batch norms,
    so there are no batch statistics to re-estimate: TENT here adapts the
    affine scales and shifts alone. Long streams collapse (Press et al.,
    RDumb, NeurIPS 2023): the default budget is one pass over the size
    bucket (each example seen once, as TENT's online setting), and any budget
    resets to the source weights every `reset_every` = 1,000 steps as RDumb
    does. The entropy is per-example, so TENT runs under DP-SGD.
    """

    name = "tent"
    default_lr = 1e-3
    per_example = True
    default_passes = 1.0
    # Only affine scales and shifts train, as for a lone head: a tight clip (see Strategy.dp_clip).
    dp_clip = 1.0

    def __init__(self, *, reset_every: int | None = 1000) -> None:
        if reset_every is not None and (
            isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 1
        ):
            raise StrategyError(f"tent reset_every must be a positive number of steps or None, got {reset_every!r}")
        self.reset_every = reset_every

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        params = [p for _, p in normalisation_affines(model)]
        if not params:
            raise StrategyError(
                f"tent adapts the affine parameters of normalisation layers, and "
                f"{model.architecture or type(model).__name__} has none; use shot, aad or nrc"
            )
        return [Phase("tent", steps, lr, _groups_by_block(model, params))]

    def objective(self, *, model: XferModel, x: torch.Tensor, num_classes: int, seed: int) -> Objective:
        return _TentObjective()

    def hyperparameters(self) -> dict[str, str]:
        return {"reset_every": str(self.reset_every or "never")}


# -- SHOT ---------------------------------------------------------------------------------------


class _ShotObjective(Objective):
    def __init__(self, strategy: Shot, x: torch.Tensor) -> None:
        self.strategy, self.x = strategy, x
        self.labels: torch.Tensor | None = None
        self.refreshes = 0
        self.changed: list[int] = []

    def on_pass(self, model: XferModel) -> None:
        # SHOT's obtain_label, recomputed at the start of every epoch with the model in eval mode; the
        # classifier is frozen, so the centroids move only with the features.
        features, logits = pass_outputs(model, self.x)
        pseudo = centroid_pseudo_labels(
            features, logits.softmax(1), rounds=self.strategy.rounds, threshold=self.strategy.threshold
        )
        self.labels = pseudo.labels.to(self.x.device)
        self.refreshes += 1
        self.changed.append(pseudo.changed)
        log.debug(
            "SHOT pseudo-labels #%d: %d differ from the classifier's, %d classes kept",
            self.refreshes,
            pseudo.changed,
            pseudo.classes_kept,
        )

    def loss(
        self, net: nn.Module, model: XferModel, xb: torch.Tensor, idx: torch.Tensor, *, progress: float
    ) -> torch.Tensor:
        assert self.labels is not None, "on_pass computes the pseudo-labels before the first step"
        _, logits = features_and_logits(model, xb)
        return shot_loss(
            logits, self.labels[idx], cls_weight=self.strategy.cls_weight, im_weight=self.strategy.im_weight
        )

    def diagnostics(self) -> dict[str, float]:
        return {
            "pseudo_label_refreshes": float(self.refreshes),
            "pseudo_labels_changed_last": float(self.changed[-1]) if self.changed else 0.0,
        }


class Shot(SourceFreeStrategy):
    """SHOT (Liang et al., ICML 2020): freeze the classifier, train the features to fit it.

    Loss: information maximisation (mean per-example entropy minus the
    entropy of the batch's mean prediction, weight `im_weight` = 1) plus
    `cls_weight` = 0.3 × cross-entropy to pseudo-labels from feature
    centroids, recomputed at the start of every pass over the training data
    in eval mode (two clustering rounds, cosine distance, classes predicted
    at least once: the reference's `obtain_label`). The head stays
    bit-identical. The reference's SGD at 1e-2 is AdamW here (measured LR in
    the README); its diversity term and centroids couple all examples, so
    there is no per-example loss to clip: no DP.
    """

    name = "shot"
    default_lr = 1e-3
    dp_refusal = (
        "its diversity term (the entropy of the batch's mean prediction) and its centroid "
        "pseudo-labels depend on every example at once, so there is no per-example loss for DP-SGD "
        "to clip"
    )

    def __init__(self, *, cls_weight: float = 0.3, im_weight: float = 1.0, rounds: int = 2, threshold: int = 0) -> None:
        if cls_weight < 0 or im_weight < 0 or rounds < 1 or threshold < 0:
            raise StrategyError("shot needs cls_weight >= 0, im_weight >= 0, rounds >= 1 and threshold >= 0")
        self.cls_weight, self.im_weight, self.rounds, self.threshold = cls_weight, im_weight, rounds, threshold

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        body = tuple(
            GroupPlan(name, tuple(params)) for name, params in model.blocks() if params and name != model.head_name
        )
        return [Phase("shot", steps, lr, body)]

    def objective(self, *, model: XferModel, x: torch.Tensor, num_classes: int, seed: int) -> Objective:
        return _ShotObjective(self, x)

    def hyperparameters(self) -> dict[str, str]:
        return {
            "cls_weight": f"{self.cls_weight:g}",
            "im_weight": f"{self.im_weight:g}",
            "pseudo_label_rounds": str(self.rounds),
        }


# -- AaD and NRC: a feature bank of the whole target set -------------------------------------------


class _BankObjective(Objective):
    """A memory of every training example's normalised features and softmax prediction.

    Filled once in eval mode before training, then each batch overwrites its
    own rows with the current (training-mode) outputs, as the references do.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.features: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None

    def start(self, model: XferModel) -> None:
        features, logits = pass_outputs(model, self.x)
        self.features = nn.functional.normalize(features, dim=1)
        self.scores = logits.softmax(1)

    def _forward(self, model: XferModel, xb: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.features is not None and self.scores is not None
        features, logits = features_and_logits(model, xb)
        probs = logits.float().softmax(1)
        with torch.no_grad():
            unit = nn.functional.normalize(features.detach().float(), dim=1)
            self.features[idx] = unit
            self.scores[idx] = probs.detach()
        return unit, probs


class _AadObjective(_BankObjective):
    def __init__(self, strategy: Aad, x: torch.Tensor) -> None:
        super().__init__(x)
        self.strategy = strategy

    def loss(
        self, net: nn.Module, model: XferModel, xb: torch.Tensor, idx: torch.Tensor, *, progress: float
    ) -> torch.Tensor:
        unit, probs = self._forward(model, xb, idx)
        assert self.features is not None and self.scores is not None
        near = nearest_neighbours(unit, self.features, k=self.strategy.k, exclude=idx)
        alpha = aad_alpha(progress, alpha=self.strategy.alpha, beta=self.strategy.beta)
        return aad_loss(probs, self.scores[near], alpha=alpha)


class Aad(SourceFreeStrategy):
    """AaD (Yang et al., NeurIPS 2022): attract predictions to their feature neighbours', disperse the rest.

    A bank holds every training example's normalised features and
    prediction; each example's prediction is pulled toward the stored
    predictions of its K = 5 nearest neighbours (cosine) and pushed away from
    the other predictions of its batch, the push weighted by
    (1 + 10·progress)^−β·α with α = 1, β = 5 (the reference's VisDA
    defaults). Everything trains, the classifier included, as in the
    reference (one LR; its 0.1× backbone LR is for an ImageNet backbone under
    a fresh bottleneck, which our models do not have). Not per-example: no DP.
    """

    name = "aad"
    default_lr = 1e-4
    dp_refusal = (
        "each example's loss reads a bank of every other example's features and predictions, and its "
        "dispersion term couples the examples of a batch, so there is no per-example loss for DP-SGD "
        "to clip"
    )

    def __init__(self, *, k: int = 5, alpha: float = 1.0, beta: float = 5.0) -> None:
        if k < 1 or alpha < 0 or beta < 0:
            raise StrategyError("aad needs k >= 1, alpha >= 0 and beta >= 0")
        self.k, self.alpha, self.beta = k, alpha, beta

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        return [Phase("aad", steps, lr, tuple(GroupPlan(n, tuple(ps)) for n, ps in model.blocks() if ps))]

    def objective(self, *, model: XferModel, x: torch.Tensor, num_classes: int, seed: int) -> Objective:
        return _AadObjective(self, x)

    def hyperparameters(self) -> dict[str, str]:
        return {"neighbours": str(self.k), "alpha": f"{self.alpha:g}", "beta": f"{self.beta:g}"}


class _NrcObjective(_BankObjective):
    def __init__(self, strategy: Nrc, x: torch.Tensor) -> None:
        super().__init__(x)
        self.strategy = strategy

    def loss(
        self, net: nn.Module, model: XferModel, xb: torch.Tensor, idx: torch.Tensor, *, progress: float
    ) -> torch.Tensor:
        unit, probs = self._forward(model, xb, idx)
        assert self.features is not None and self.scores is not None
        s = self.strategy
        near = nearest_neighbours(unit, self.features, k=s.k, exclude=idx)
        expanded, weights = reciprocal_weights(near, self.features, idx, kk=s.kk, other=s.other_weight)
        b = len(idx)
        return nrc_loss(
            probs, self.scores[near], weights, self.scores[expanded.reshape(b, -1)], expanded_weight=s.other_weight
        )


class Nrc(SourceFreeStrategy):
    """NRC (Yang et al., NeurIPS 2021): consistency with reciprocal nearest neighbours and their neighbours.

    Each prediction is pulled toward its K = 5 nearest neighbours' stored
    predictions (weight 1 if the neighbourhood is reciprocal, else 0.1) and
    toward their own KK = 5 neighbours' (weight 0.1), with the diversity term
    Σ p̄ log p̄ of the batch's mean prediction (the reference's VisDA
    defaults). Everything trains, the classifier included, as in the
    reference. Not per-example: no DP.
    """

    name = "nrc"
    default_lr = 1e-4
    dp_refusal = Aad.dp_refusal

    def __init__(self, *, k: int = 5, kk: int = 5, other_weight: float = 0.1) -> None:
        if k < 1 or kk < 1 or not 0 <= other_weight <= 1:
            raise StrategyError("nrc needs k >= 1, kk >= 1 and 0 <= other_weight <= 1")
        self.k, self.kk, self.other_weight = k, kk, other_weight

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        return [Phase("nrc", steps, lr, tuple(GroupPlan(n, tuple(ps)) for n, ps in model.blocks() if ps))]

    def objective(self, *, model: XferModel, x: torch.Tensor, num_classes: int, seed: int) -> Objective:
        return _NrcObjective(self, x)

    def hyperparameters(self) -> dict[str, str]:
        return {
            "neighbours": str(self.k),
            "expanded_neighbours": str(self.kk),
            "other_weight": f"{self.other_weight:g}",
        }


register_strategy("tent")(lambda _: Tent())
register_strategy("shot")(lambda _: Shot())
register_strategy("aad")(lambda _: Aad())
register_strategy("nrc")(lambda _: Nrc())

#: The source-free strategies' names, in registration order (for messages and help text).
SOURCE_FREE = ("tent", "shot", "aad", "nrc")


def is_source_free(strategy: object) -> bool:
    """Whether a strategy (name or object) adapts without labels."""
    from xfer.client.finetune.strategies import get_strategy

    return isinstance(get_strategy(strategy) if isinstance(strategy, str) else strategy, SourceFreeStrategy)


__all__ = [
    "Aad",
    "Nrc",
    "Objective",
    "SOURCE_FREE",
    "Shot",
    "SourceFreeStrategy",
    "Tent",
    "features_and_logits",
    "is_source_free",
    "normalisation_affines",
    "pass_outputs",
]
