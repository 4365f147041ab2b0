"""Adaptation strategies: which parameters train, in which phases, at which LR.

A strategy only *plans*: given a model (through the `XferModel` block
contract), a base learning rate and a budget of optimizer steps it returns `Phase`s,
each a list of parameter groups with an LR scale. The trainer executes the
plan; everything not in a phase's groups is frozen (requires_grad=False) for
that phase, so it stays bit-identical and — under DP — is not privatised.

Strategies live in an explicit registry: a duplicate name raises, an unknown one lists the valid names. Names:
`full`, `linear-probe`, `lp-ft`, `discriminative`, `gradual-unfreeze`,
`surgical:<block>` and `surgical:auto`; the source-free (unlabelled)
`tent`, `shot`, `aad` and `nrc` are in `sfda_strategies`.

Whenever the head was re-initialised (the target's label set differs from
the card's), every strategy also trains the head: a random head left
frozen would make the rest of the adaptation meaningless.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import ClassVar

from torch import nn

from xfer.client.finetune.errors import (
    DuplicateStrategyError,
    StrategyError,
    UnknownStrategyError,
)
from xfer.models.base import XferModel


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """One optimizer parameter group: its name, tensors and LR multiplier."""

    name: str
    params: tuple[nn.Parameter, ...]
    lr_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of training with a fixed trainable set.

    `rgn`: per-tensor LRs come from Auto-RGN, measured on every step's own gradient.
    """

    name: str
    steps: int
    lr: float
    groups: tuple[GroupPlan, ...]
    rgn: bool = False

    def trainable(self) -> set[int]:
        """ids of the parameters this phase trains."""
        return {id(p) for g in self.groups for p in g.params}


class Strategy(abc.ABC):
    """Base class. Subclasses set `name`, `default_lr` and implement `plan`."""

    name: ClassVar[str] = ""
    #: LR used when the caller gives none (AdamW).
    default_lr: ClassVar[float] = 1e-3
    #: DP per-example clipping norm when the caller gives none. Measured at ε = 2 on the demo's task:
    #: strategies that tune the body do better with a loose clip (lp-ft 0.808 at 10 vs 0.754 at 1), a
    #: lone head with a tight one (linear-probe 0.757 at 1 vs 0.732 at 10).
    dp_clip: ClassVar[float] = 10.0
    #: Train a re-initialised head on standardised features, folded back afterwards (no DP; standardize.py).
    #: On for linear-probe: +0.142/+0.140 on Fashion-MNIST 5-9 at 5/50 labels per class, +0.027/+0.033 on
    #: digits 5-9 at 5 per class/all (2 seeds each).
    probe_on_standardized_features: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """The name as reported (e.g. `surgical:block2`)."""
        return self.name

    @abc.abstractmethod
    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        """The phases this strategy trains `model` in; their steps add up to `steps`."""

    def hyperparameters(self) -> dict[str, str]:
        """Strategy-specific settings for the run report."""
        return {}


def _blocks(model: XferModel) -> list[tuple[str, list[nn.Parameter]]]:
    return [(name, params) for name, params in model.blocks() if params]


def _head_group(model: XferModel, scale: float = 1.0) -> GroupPlan:
    return GroupPlan(model.head_name, tuple(model.head_layer.parameters()), scale)


def _all_groups(model: XferModel) -> tuple[GroupPlan, ...]:
    return tuple(GroupPlan(name, tuple(params)) for name, params in _blocks(model))


_REGISTRY: dict[str, Callable[[str | None], Strategy]] = {}
#: How each registered family is spelled for users (e.g. `surgical:<block>`).
_SPELLING: dict[str, str] = {}


def register_strategy(name: str, *, spelling: str | None = None) -> Callable:
    """Registers a strategy factory `f(argument) -> Strategy` under `name`."""

    def decorate(factory: Callable[[str | None], Strategy]) -> Callable[[str | None], Strategy]:
        if name in _REGISTRY:
            raise DuplicateStrategyError(f"strategy {name!r} is already registered")
        _REGISTRY[name] = factory
        _SPELLING[name] = spelling or name
        return factory

    return decorate


def list_strategies() -> list[str]:
    """Valid strategy spellings, in registration order."""
    return list(_SPELLING.values())


def get_strategy(name: str) -> Strategy:
    """Builds the strategy spelled `name` (e.g. `lp-ft`, `surgical:block1`).

    Exact names win over parametrised families, so `surgical:auto` is its
    own strategy while `surgical:<anything else>` names a block.
    """
    if isinstance(name, Strategy):
        return name
    if name in _REGISTRY and _SPELLING[name] == name:
        return _REGISTRY[name](None)
    family, sep, argument = name.partition(":")
    if sep and argument and family in _REGISTRY and _SPELLING[family] != family:
        return _REGISTRY[family](argument)
    raise UnknownStrategyError(f"unknown strategy {name!r}; valid: {', '.join(list_strategies())}")


# -- the strategies ---------------------------------------------------------------------------


class Full(Strategy):
    """Full fine-tuning: every parameter, one small LR.

    Helps when the target has enough data and differs from the source in
    low-level statistics; the small LR (1e-3 with AdamW vs 1e-2 for a probe)
    keeps it from destroying pretrained features early on.
    """

    name = "full"
    default_lr = 1e-3

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        return [Phase("full", steps, lr, _all_groups(model))]


class LinearProbe(Strategy):
    """Train only the head on frozen features.

    Helps when target data is scarce or the shift is at the output level
    (new or permuted labels) while the source features still apply; cheapest,
    and under DP the privatised model is just one Linear layer.
    """

    name = "linear-probe"
    default_lr = 1e-2
    dp_clip = 1.0
    probe_on_standardized_features = True

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        return [Phase("probe", steps, lr, (_head_group(model),))]


class LPFT(Strategy):
    """Linear probe first, then full fine-tuning (Kumar et al., 2022).

    Helps when the head is re-initialised: fine-tuning from a random head
    distorts the pretrained features, probing first aligns the head so the
    full phase starts from a sensible point. Probe LR = `probe_lr_mult` × LR.
    """

    name = "lp-ft"
    default_lr = 1e-3
    #: Not for lp-ft: measured mixed (Fashion-MNIST 5-9 at 5/50 per class +0.046/+0.005, digits 5-9 at 5 per
    #: class/all -0.017/-0.011, 2 seeds): the full phase that follows retunes the head anyway.

    def __init__(self, *, probe_fraction: float = 0.5, probe_lr_mult: float = 10.0) -> None:
        self.probe_fraction = probe_fraction
        self.probe_lr_mult = probe_lr_mult

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        if steps < 2:
            raise StrategyError(f"lp-ft needs at least 2 steps (a probe step and a full step), got {steps}")
        probe = min(steps - 1, max(1, round(steps * self.probe_fraction)))
        return [
            Phase("probe", probe, lr * self.probe_lr_mult, (_head_group(model),)),
            Phase("full", steps - probe, lr, _all_groups(model)),
        ]

    def hyperparameters(self) -> dict[str, str]:
        return {"probe_fraction": str(self.probe_fraction), "probe_lr_mult": str(self.probe_lr_mult)}


class Discriminative(Strategy):
    """Discriminative LRs (ULMFiT): the head gets LR, each block toward the input LR/factor more.

    Helps when lower layers hold general features worth keeping and upper
    ones need to move: everything adapts, lower blocks less.
    """

    name = "discriminative"
    default_lr = 1e-3

    def __init__(self, *, factor: float = 2.6) -> None:
        self.factor = factor

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        blocks = _blocks(model)
        top = len(blocks) - 1
        groups = tuple(
            GroupPlan(name, tuple(params), self.factor ** -(top - i)) for i, (name, params) in enumerate(blocks)
        )
        return [Phase("discriminative", steps, lr, groups)]

    def hyperparameters(self) -> dict[str, str]:
        return {"factor": str(self.factor)}


class GradualUnfreeze(Strategy):
    """Gradual unfreezing (ULMFiT): head first, one more block per stage, top down.

    Helps against catastrophic forgetting on small targets: lower blocks only
    start moving once the layers above them have adapted. The step budget is
    split into one equal stage per block (`stage_steps` fixes the length of
    every stage but the last, which takes the rest); with fewer steps than
    blocks the lowest blocks are never unfrozen.
    """

    name = "gradual-unfreeze"
    default_lr = 1e-3

    def __init__(self, *, stage_steps: int | None = None) -> None:
        if stage_steps is not None and stage_steps < 1:
            raise StrategyError(f"stage_steps must be positive, got {stage_steps}")
        self.stage_steps = stage_steps

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        blocks = _blocks(model)
        stage = self.stage_steps or max(1, steps // len(blocks))
        phases: list[Phase] = []
        left = steps
        for k in range(1, len(blocks) + 1):
            if left <= 0:
                break
            length = left if k == len(blocks) else min(left, stage)
            groups = tuple(GroupPlan(name, tuple(params)) for name, params in blocks[-k:])
            phases.append(Phase(f"unfreeze-{k}", length, lr, groups))
            left -= length
        if left > 0:  # stage_steps too short for the budget: the last stage takes the rest
            phases[-1] = dataclasses.replace(phases[-1], steps=phases[-1].steps + left)
        return phases

    def hyperparameters(self) -> dict[str, str]:
        return {"stage_steps": str(self.stage_steps)} if self.stage_steps else {}


class Surgical(Strategy):
    """Surgical fine-tuning (Lee et al., 2023): tune one block only.

    Helps when the shift lives at one level: input-level corruptions (noise,
    blur) → an early block; output-level shifts (permuted labels) → the head.
    The head also trains if it was re-initialised.
    """

    name = "surgical"
    default_lr = 1e-3

    def __init__(self, block: str) -> None:
        self.block = block
        if block == XferModel.head_name:
            # Tuning the head alone is a linear probe and needs the probe's LR: at 1e-3 a lone
            # head barely moves within a fine-tuning budget (the transfer report's permuted-label
            # target: 0.01 accuracy at 1e-3 against 0.97 at 1e-2).
            self.default_lr = LinearProbe.default_lr  # type: ignore[misc]  # this instance's own default
            self.dp_clip = LinearProbe.dp_clip  # type: ignore[misc]

    @property
    def label(self) -> str:
        return f"surgical:{self.block}"

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        blocks = dict(_blocks(model))
        if self.block not in blocks:
            raise StrategyError(
                f"surgical block {self.block!r} is not a block of {model.architecture}; "
                f"valid: {', '.join(blocks)} (or surgical:auto)"
            )
        groups = [GroupPlan(self.block, tuple(blocks[self.block]))]
        if head_reset and self.block != model.head_name:
            groups.append(_head_group(model))
        return [Phase(f"surgical-{self.block}", steps, lr, tuple(groups))]

    def hyperparameters(self) -> dict[str, str]:
        return {"block": self.block}


class AutoRGN(Strategy):
    """Auto-RGN (Lee et al., 2023): per-tensor LR ∝ relative gradient norm ‖g‖/‖θ‖.

    Helps when you do not know which block the shift lives in: tensors whose
    gradients are large relative to their weights get most of the LR. The
    RGN is measured on every step's own gradient (under DP the privatised
    one), so measuring costs no step and no privacy: ‖g‖ is the norm of an
    exponential moving average of the gradient (`momentum`, bias-corrected,
    so the first step uses its own gradient; under DP the average also
    filters the noise, which would otherwise favour large tensors), and
    tensor t's LR for that step = LR × RGN_t / max RGN.
    """

    name = "surgical:auto"
    # The base LR is what the max-RGN tensor gets and every other tensor gets a fraction of it,
    # so it sits at probe size (on the digits shifts 1e-2 beat 1e-3 by 5-70 points of accuracy).
    default_lr = 1e-2

    def __init__(self, *, momentum: float = 0.9) -> None:
        if not 0 <= momentum < 1:
            raise StrategyError(f"Auto-RGN momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def plan(self, model: XferModel, *, lr: float, steps: int, head_reset: bool) -> list[Phase]:
        owner = model.block_of_parameter()
        groups = tuple(GroupPlan(qualified, (p,)) for qualified, p in model.named_parameters() if qualified in owner)
        return [Phase("auto-rgn", steps, lr, groups, rgn=True)]

    def hyperparameters(self) -> dict[str, str]:
        return {"rgn_momentum": f"{self.momentum:g}"}


#: Floor on a tensor's RMS in the RGN denominator. Zero-initialised tensors (biases, norm shifts of a
#: fresh head) would otherwise get an infinite RGN and starve every other tensor of LR.
RGN_RMS_FLOOR = 1e-3


def relative_gradient_norms(params: list[nn.Parameter], grads: list | None = None) -> list[float]:
    """‖g‖ / max(‖θ‖, RGN_RMS_FLOOR·√numel) for each tensor (0 where there is no gradient).

    `grads` (one tensor or None per parameter) replaces `p.grad`, e.g. by a moving average of it.
    """
    out = []
    for i, p in enumerate(params):
        g = p.grad if grads is None else grads[i]
        if g is None:
            out.append(0.0)
            continue
        floor = RGN_RMS_FLOOR * p.numel() ** 0.5
        out.append(float(g.detach().float().norm() / p.detach().float().norm().clamp_min(floor)))
    return out


def rgn_lr_scales(rgn: list[float]) -> list[float]:
    """Auto-RGN's LR multipliers: RGN / max RGN (all ones if every RGN is zero)."""
    top = max(rgn) if rgn else 0.0
    if top <= 0.0:
        return [1.0 for _ in rgn]
    return [r / top for r in rgn]


register_strategy("full")(lambda _: Full())
register_strategy("linear-probe")(lambda _: LinearProbe())
register_strategy("lp-ft")(lambda _: LPFT())
register_strategy("discriminative")(lambda _: Discriminative())
register_strategy("gradual-unfreeze")(lambda _: GradualUnfreeze())
register_strategy("surgical", spelling="surgical:<block>")(lambda block: Surgical(block))
register_strategy("surgical:auto")(lambda _: AutoRGN())

# The source-free strategies (tent, shot, aad, nrc) register themselves in the same registry.
from xfer.client.finetune import sfda_strategies as _sfda_strategies  # noqa: E402,F401
