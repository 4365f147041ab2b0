"""Differential privacy with Opacus DP-SGD.

One `PrivacyEngine` per run, so one accountant composes every phase of a
multi-phase strategy. The noise multiplier is solved once, up front, for the
run's total number of steps (`get_noise_multiplier`), so the target ε holds
for the whole plan; early stopping only spends less, and the ε reported is
read back from the accountant.

Only trainable parameters are privatised: frozen tensors have
requires_grad=False, so Opacus attaches no per-sample hooks to layers that
hold only frozen parameters and the optimizer never sees them.

The guarantee covers the training split. The validation split picks the
best checkpoint and drives early stopping, and the test split is scored
once: both are held out, used without noise, and never trained on.

Every DP parameter is a function of the size bucket N (the training-set
size rounded up to a power of two) and the config, never of the exact size:
δ = min(1e-5, 1/N^1.1), the sample rate q = 1/ceil(N/B) and the step budget,
hence σ. So the privacy fields of a report hold for every size in the
bucket, and the sample rate is fixed independently of the data, as the
add/remove-one analysis of Poisson-subsampled DP-SGD assumes.

Batches are drawn by Poisson sampling (each example independently with
probability q) directly on index tensors rather than through `DPDataLoader`,
which collates example by example.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xfer.client.dp_delta import default_delta, resolve_delta
from xfer.client.finetune.budget import Budget
from xfer.client.finetune.config import ACCOUNTANTS, PrivacyConfig
from xfer.client.finetune.errors import FinetuneError, PrivacyError
from xfer.client.finetune.ledger import LedgerEntry, PrivacyLedger

log = logging.getLogger(__name__)

__all__ = [
    "ACCOUNTANTS",
    "DPPlan",
    "PrivacyConfig",
    "PrivacyReport",
    "PrivateRun",
    "default_delta",
    "epsilon_of",
    "make_compatible",
    "plan_dp",
]


@dataclasses.dataclass(frozen=True)
class DPPlan:
    """The DP-SGD parameters a run will use, fixed before training starts."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    target_epsilon: float
    max_grad_norm: float
    accountant: str
    ghost_clipping: bool
    #: The expected Poisson batch, q x bucket: the DP optimizer averages noisy sums over it, a constant
    #: fixed before training (dividing by the batch actually drawn would leak its size).
    expected_batch: int = 1

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant history this plan produces if it runs to the end."""
        return [(self.noise_multiplier, self.sample_rate, self.steps)]


@functools.lru_cache(maxsize=256)
def _noise_multiplier(epsilon: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    # The binary search takes ~0.1-1 s; a search's fold runs and their pre-check repeat it exactly.
    from opacus.accountants import utils

    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            utils.get_noise_multiplier(
                target_epsilon=epsilon, target_delta=delta, sample_rate=rate, steps=steps, accountant=accountant
            )
        )


def plan_dp(config: PrivacyConfig, *, budget: Budget, noise_multiplier: float | None = None) -> DPPlan:
    """Solves the noise multiplier that reaches the target ε after the budget's steps at its sample rate.

    `noise_multiplier` fixes σ instead (a private search solves it for the whole selection).
    """
    if budget.sample_rate is None or budget.max_grad_norm is None:
        raise PrivacyError("the budget was planned without DP; plan it with a PrivacyConfig in the config")
    rate, steps = budget.sample_rate, budget.steps
    delta = resolve_delta(config.delta, bucket=budget.bucket, error=PrivacyError)
    if rate >= 1.0:
        log.warning(
            "batch size %d >= the size bucket (%d): every step sees all data, so DP-SGD gets no "
            "amplification by subsampling; a smaller batch size usually needs far less noise",
            budget.batch_size,
            budget.bucket,
        )
    try:
        sigma = noise_multiplier or _noise_multiplier(config.epsilon, delta, rate, steps, config.accountant)
    except ValueError as exc:
        raise PrivacyError(
            f"cannot reach epsilon={config.epsilon} at delta={delta:.3g} with {steps} steps at "
            f"sample rate {rate:.3g} ({exc}); raise epsilon or train fewer steps"
        ) from None
    return DPPlan(
        float(sigma),
        rate,
        steps,
        delta,
        config.epsilon,
        budget.max_grad_norm,
        config.accountant,
        config.ghost_clipping,
        expected_batch=max(1, round(rate * budget.bucket)),
    )


def epsilon_of(history: list[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    """ε of a composed accountant history [(noise_multiplier, sample_rate, steps), ...]."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    if not history:
        return 0.0
    acc.history = list(history)
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta))


def _validator_errors(module: nn.Module) -> list[str]:
    from opacus.validators import ModuleValidator

    errors = []
    for name, sub in module.named_modules():
        check = ModuleValidator.VALIDATORS.get(type(sub))
        if check is not None and any(p.requires_grad for p in sub.parameters(recurse=False)):
            errors += [f"{name or '<root>'} ({type(sub).__name__}): {e}" for e in check(sub)]
    return errors


def make_compatible(model: nn.Module) -> nn.Module:
    """Returns `model` if Opacus can train it, a weight-preserving fix of it, or raises PrivacyError.

    A `ModuleValidator.fix` is accepted only when it keeps every state-dict
    tensor name and shape (e.g. not BatchNorm → GroupNorm, which would
    silently drop pretrained statistics and break the model card).
    """
    from opacus.validators import ModuleValidator

    errors = _validator_errors(model)
    if not errors:
        return model
    fixed = ModuleValidator.fix(copy.deepcopy(model))
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    after = {k: tuple(v.shape) for k, v in fixed.state_dict().items()}
    if before == after and not _validator_errors(fixed):
        fixed.load_state_dict(model.state_dict())
        log.warning("replaced layers Opacus cannot train with equivalent ones: %s", "; ".join(errors))
        return fixed
    raise PrivacyError(
        "Opacus cannot compute per-example gradients for layer(s): "
        + "; ".join(errors)
        + ". Freeze those layers (e.g. --strategy linear-probe) or use an architecture "
        "without them (GroupNorm/LayerNorm instead of BatchNorm)."
    )


class PrivateRun:
    """One run's Opacus state: the engine (and its accountant) across all phases."""

    def __init__(self, plan: DPPlan, *, n: int, seed: int, device: torch.device) -> None:
        from opacus import PrivacyEngine

        self.plan = plan
        self.n = n
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "secure RNG off" notice: we seed on purpose
            self.engine = PrivacyEngine(accountant=plan.accountant)
        self.noise_generator = torch.Generator(device=device).manual_seed(seed + 7919)
        # Only its shape matters: Opacus derives the sample rate 1/len(loader) and the expected batch
        # len(dataset) x rate from it, so the stand-in is sized from the plan alone, never from the data.
        per_pass = max(1, round(1.0 / plan.sample_rate))
        self.expected_batch = max(1, plan.expected_batch)
        self._loader = DataLoader(
            TensorDataset(torch.arange(per_pass * self.expected_batch)), batch_size=self.expected_batch
        )

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module
    ) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
        """Privatises one phase: per-sample hooks on trainable layers, a DP optimizer, (ghost) loss."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = self.engine.make_private(
                    module=model,
                    optimizer=optimizer,
                    criterion=criterion,
                    data_loader=self._loader,
                    noise_multiplier=self.plan.noise_multiplier,
                    max_grad_norm=self.plan.max_grad_norm,
                    poisson_sampling=False,  # we sample ourselves at the same rate; see module docstring
                    grad_sample_mode="ghost" if self.plan.ghost_clipping else "hooks",
                    noise_generator=self.noise_generator,
                )
            except (NotImplementedError, ValueError) as exc:
                raise PrivacyError(f"Opacus cannot privatise this model: {exc}") from None
        if self.plan.ghost_clipping:
            net, dp_optimizer, dp_criterion, _ = out
            return net, dp_optimizer, dp_criterion
        net, dp_optimizer, _ = out
        try:
            self._check_per_sample(model, net, dp_optimizer, criterion)
        except PrivacyError:
            self.unwrap(net)
            raise
        return net, dp_optimizer, criterion

    def _check_per_sample(
        self, model: nn.Module, net: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module
    ) -> None:
        """Catches layers whose per-example gradients come out wrong before any real data is used.

        A layer fed an input without the batch axis (e.g. an Embedding looked up
        with shared position ids) gets grad samples of batch size 1; Opacus would
        only fail later, obscurely, inside clipping. Two random (not real)
        examples are enough to tell; nothing is stepped or accounted.
        """
        shape = getattr(model, "input_shape", None)
        if shape is None:
            return
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((2, *shape()), generator=generator).to(device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            criterion(net(x), torch.zeros(2, dtype=torch.long, device=device)).backward()
        samples = {name: getattr(p, "grad_sample", None) for name, p in model.named_parameters() if p.requires_grad}
        bad = [name for name, grad in samples.items() if grad is not None and grad.shape[0] != 2]
        optimizer.zero_grad(set_to_none=True)
        if bad:
            raise PrivacyError(
                f"Opacus cannot compute per-example gradients for {', '.join(bad)}: the layer's "
                f"input has no batch axis (e.g. an Embedding looked up with shared ids), so its "
                f"gradient mixes examples. Freeze that block (e.g. --strategy linear-probe or "
                f"surgical:<another block>) or give the layer per-example inputs."
            )

    @staticmethod
    def unwrap(net: nn.Module) -> nn.Module:
        """Removes Opacus hooks and per-sample attributes; returns the plain module."""
        unwrap = getattr(net, "to_standard_module", None)
        return unwrap() if unwrap is not None else net

    def poisson_batch(self, generator: torch.Generator) -> torch.Tensor:
        """Indices of one Poisson-sampled batch (each example kept with probability q)."""
        return torch.nonzero(torch.rand(self.n, generator=generator) < self.plan.sample_rate).squeeze(1)

    @property
    def steps_taken(self) -> int:
        """DP-SGD steps the accountant has recorded so far."""
        return int(sum(steps for _, _, steps in self.engine.accountant.history))

    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's history: [(noise_multiplier, sample_rate, steps)]."""
        return [tuple(h) for h in self.engine.accountant.history]

    def epsilon_spent(self) -> float:
        """ε spent so far at the plan's δ, read from the accountant."""
        if not self.engine.accountant.history:
            return 0.0
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(self.engine.accountant.get_epsilon(delta=self.plan.delta))


@dataclasses.dataclass(frozen=True)
class PrivacyReport:
    """What a run spent, for results and the metrics report."""

    epsilon_spent: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    accountant: str
    target_epsilon: float
    ghost_clipping: bool


@dataclasses.dataclass
class AccountedRun:
    """A DP run and, when a ledger is kept, the ε reserved for it before the first step."""

    plan: DPPlan
    run: PrivateRun
    entry: LedgerEntry | None = None

    @classmethod
    def start(
        cls,
        privacy: PrivacyConfig,
        *,
        budget: Budget,
        n: int,
        seed: int,
        device: torch.device,
        ledger: PrivacyLedger | None,
        dataset_id: str | None,
        note: str,
        noise_multiplier: float | None = None,
    ) -> AccountedRun:
        """Plans the run and reserves its target ε; kept in full if training fails midway (part may be spent)."""
        plan = plan_dp(privacy, budget=budget, noise_multiplier=noise_multiplier)
        accounted = cls(plan, PrivateRun(plan, n=n, seed=seed, device=device))
        if ledger is not None:
            if not dataset_id:
                raise FinetuneError("a privacy ledger needs the dataset_id to charge")
            accounted.entry = ledger.charge(
                dataset_id, epsilon=plan.target_epsilon, delta=plan.delta, budget=privacy.budget, note=note
            )
        return accounted

    def finish(self, *, ledger: PrivacyLedger | None, dataset_id: str | None) -> PrivacyReport:
        """What the run spent; the ledger's reservation is settled to it."""
        spent = self.run.epsilon_spent()
        plan = self.plan
        if ledger is not None and self.entry is not None and dataset_id:
            ledger.settle(dataset_id, self.entry.entry_id, epsilon=spent, delta=plan.delta)
        return PrivacyReport(
            spent,
            plan.delta,
            plan.noise_multiplier,
            plan.max_grad_norm,
            plan.sample_rate,
            self.run.steps_taken,
            plan.accountant,
            plan.target_epsilon,
            plan.ghost_clipping,
        )
