"""Meta-learned sources: training on N-way K-shot episodes instead of one fixed label set.

Three methods, each a small own implementation (learn2learn, the usual
library, pins a torch and torchvision that cannot sit beside this
project's torch==2.13.0 CPU build):

- ``protonet`` (Snell, Swersky & Zemel, NeurIPS 2017): embed support and
  query, class prototypes = support means, logits = −squared Euclidean
  distance to each prototype, cross-entropy on the queries, Adam. No head is
  learned; at the end the head is set to the prototype classifier of every
  source class (W_c = 2·p_c, b_c = −‖p_c‖², the linear form of the
  distance), so the card's head still classifies the source classes.
- ``fomaml`` (first-order MAML; Finn, Abbeel & Levine, ICML 2017, §5.2):
  per task, `inner_steps` SGD steps on the support set from the meta
  parameters θ (the ``ways``-output head included), then the query loss's
  gradient at the adapted parameters, averaged over `meta_batch` tasks,
  is applied to θ with Adam.
- ``reptile`` (Nichol, Achiam & Schulman 2018): per task, `inner_steps`
  SGD steps on all of the task's examples; θ moves towards the average
  adapted parameters, θ ← θ + ε·mean(φ − θ), with ε annealed linearly from
  `meta_step` to 0 over training, as in the paper.

`episodes` counts tasks (episodes) over the whole run for every method, so
budgets compare: the work per task is comparable (one forward and backward
pass of ways·(shots+queries) images for ProtoNet, `inner_steps` + 1 smaller
ones for the others).

A model meta-trained with fomaml or reptile has a ``ways``-output head whose
outputs are episode slots, not classes: its card has no label names, and a
client with the same number of classes starts from that head (the MAML
initialisation), one with another number resets it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from xfer.models.base import XferModel
from xfer.models.episodes import EpisodeSampler, EpisodeShape

log = logging.getLogger(__name__)

METHODS = ("protonet", "fomaml", "reptile")
#: Episodes of held-out source data used to measure the meta-trained model.
EVAL_EPISODES = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetaConfig:
    """How to meta-train: the method, the episode shape and budget, and the optimisers."""

    method: str
    episodes: int = 2000
    ways: int = 5
    shots: int = 5
    queries: int = 15
    #: Adam learning rate (ProtoNet; FOMAML's outer step).
    lr: float = 1e-3
    #: SGD steps and learning rate of the inner loop (fomaml, reptile).
    inner_steps: int = 5
    inner_lr: float = 0.05
    #: Tasks per meta-update (fomaml, reptile).
    meta_batch: int = 4
    #: Reptile's outer step size ε at the start (annealed linearly to 0).
    meta_step: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown meta-learning method {self.method!r}; valid: {', '.join(METHODS)}")
        for name in ("episodes", "inner_steps", "meta_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "inner_lr", "meta_step"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        EpisodeShape(self.ways, self.shots, self.queries)  # raises on a bad shape

    @property
    def shape(self) -> EpisodeShape:
        """The episode shape."""
        return EpisodeShape(self.ways, self.shots, self.queries)

    @property
    def head_classes(self) -> int | None:
        """Outputs the meta-trained head has: `ways` for fomaml/reptile, None (the source classes) for protonet."""
        return None if self.method == "protonet" else self.ways

    def settings(self) -> dict[str, str]:
        """The card's `training_settings`: what a client needs to adapt the way the model was trained."""
        out = {
            "episodes": str(self.episodes),
            "ways": str(self.ways),
            "shots": str(self.shots),
            "queries": str(self.queries),
        }
        if self.method == "protonet":
            out.update(lr=f"{self.lr:g}", distance="squared-euclidean")
        else:
            out.update(
                inner_steps=str(self.inner_steps),
                inner_lr=f"{self.inner_lr:g}",
                inner_optimizer="sgd",
                meta_batch=str(self.meta_batch),
            )
            out.update(lr=f"{self.lr:g}") if self.method == "fomaml" else out.update(meta_step=f"{self.meta_step:g}")
        return out


@dataclasses.dataclass(frozen=True)
class MetaResult:
    """What meta-training did: tasks seen, the loss and query accuracy along the way, held-out accuracy."""

    episodes: int
    losses: tuple[float, ...]  # mean training loss per tenth of the run
    train_accuracy: float  # query accuracy over the last tenth of the run
    heldout_accuracy: float  # episodic accuracy on held-out source examples
    heldout_episodes: int


def squared_distances(queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(q, k) squared Euclidean distances."""
    return (
        queries.pow(2).sum(1, keepdim=True) - 2 * queries @ prototypes.T + prototypes.pow(2).sum(1)[None, :]
    ).clamp_min(0)


def prototype_logits(
    embed: Callable[[torch.Tensor], torch.Tensor],
    *,
    support: torch.Tensor,
    support_y: torch.Tensor,
    query: torch.Tensor,
    ways: int,
) -> torch.Tensor:
    """ProtoNet logits of the queries: −squared distance to each class's mean support embedding."""
    z = embed(torch.cat([support, query]))
    zs, zq = z[: len(support)], z[len(support) :]
    protos = torch.zeros(ways, z.shape[1], dtype=z.dtype).index_add_(0, support_y, zs)
    protos = protos / torch.bincount(support_y, minlength=ways).clamp_min(1)[:, None].to(z.dtype)
    return -squared_distances(zq, protos)


def inner_adapt(
    model: nn.Module, params: dict[str, torch.Tensor], *, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> dict[str, torch.Tensor]:
    """`steps` full-batch SGD steps from `params` on (x, y); first-order (no graph through the steps)."""
    fast = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    for _ in range(steps):
        loss = nn.functional.cross_entropy(functional_call(model, fast, (x,)), y)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {k: (v - lr * g).detach().requires_grad_(True) for (k, v), g in zip(fast.items(), grads)}
    return fast


class _Trainer:
    """One run of a meta-learning method on (x, y)."""

    def __init__(self, model: XferModel, *, x: torch.Tensor, y: np.ndarray, config: MetaConfig) -> None:
        self.model, self.x, self.config = model, x, config
        self.sampler = EpisodeSampler(y, shape=config.shape, seed=config.seed)
        self.params = dict(model.named_parameters())

    def _tensors(self, rows: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[torch.from_numpy(rows)], torch.from_numpy(labels).long()

    def run(self) -> tuple[list[float], list[float]]:
        c = self.config
        per_update = 1 if c.method == "protonet" else c.meta_batch
        updates = max(1, math.ceil(c.episodes / per_update))
        optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr) if c.method != "reptile" else None
        losses, accuracies = [], []
        self.model.train()
        for update in range(updates):
            if optimizer is not None and c.method == "protonet":
                loss, acc = self._protonet_step(optimizer)
            elif optimizer is not None and c.method == "fomaml":
                loss, acc = self._fomaml_step(optimizer)
            else:
                loss, acc = self._reptile_step(1.0 - update / updates)
            losses.append(loss)
            accuracies.append(acc)
        return losses, accuracies

    def _protonet_step(self, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
        e = self.sampler.sample()
        (xs, ys), (xq, yq) = self._tensors(e.support, e.support_y), self._tensors(e.query, e.query_y)
        logits = prototype_logits(
            self.model.forward_features, support=xs, support_y=ys, query=xq, ways=self.config.ways
        )
        loss = nn.functional.cross_entropy(logits, yq)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach()), float((logits.argmax(1) == yq).float().mean())

    def _fomaml_step(self, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
        c = self.config
        meta_grads = {k: torch.zeros_like(v) for k, v in self.params.items()}
        losses, accs = [], []
        for _ in range(c.meta_batch):
            e = self.sampler.sample()
            (xs, ys), (xq, yq) = self._tensors(e.support, e.support_y), self._tensors(e.query, e.query_y)
            fast = inner_adapt(self.model, self.params, x=xs, y=ys, steps=c.inner_steps, lr=c.inner_lr)
            logits = functional_call(self.model, fast, (xq,))
            loss = nn.functional.cross_entropy(logits, yq)
            # First order: the query gradient at the adapted parameters stands in for the meta-gradient.
            for (k, _), g in zip(fast.items(), torch.autograd.grad(loss, list(fast.values()))):
                meta_grads[k] += g / c.meta_batch
            losses.append(float(loss.detach()))
            accs.append(float((logits.argmax(1) == yq).float().mean()))
        optimizer.zero_grad(set_to_none=True)
        for k, p in self.params.items():
            p.grad = meta_grads[k]
        optimizer.step()
        return float(np.mean(losses)), float(np.mean(accs))

    @torch.no_grad()
    def _reptile_step(self, remaining: float) -> tuple[float, float]:
        c = self.config
        step = c.meta_step * remaining
        target = {k: torch.zeros_like(v) for k, v in self.params.items()}
        losses, accs = [], []
        for _ in range(c.meta_batch):
            e = self.sampler.sample()
            rows = np.concatenate([e.support, e.query])
            xt, yt = self._tensors(rows, np.concatenate([e.support_y, e.query_y]))
            with torch.enable_grad():
                # The task's query accuracy before adapting is a cheap progress signal (the data is all training).
                logits = functional_call(self.model, self.params, (xt,))
                losses.append(float(nn.functional.cross_entropy(logits, yt).detach()))
                accs.append(float((logits.argmax(1) == yt).float().mean()))
                fast = inner_adapt(self.model, self.params, x=xt, y=yt, steps=c.inner_steps, lr=c.inner_lr)
            for k, v in fast.items():
                target[k] += v.detach() / c.meta_batch
        for k, p in self.params.items():
            p.add_(target[k] - p, alpha=step)
        return float(np.mean(losses)), float(np.mean(accs))


def meta_train(
    model: XferModel,
    *,
    x: torch.Tensor,
    y: np.ndarray,
    config: MetaConfig,
    heldout: tuple[torch.Tensor, np.ndarray] | None = None,
) -> MetaResult:
    """Meta-trains `model` in place on model-ready examples `x` with class labels `y`.

    fomaml/reptile need a head with `config.ways` outputs; protonet's head is set to the prototype
    classifier of `y`'s classes at the end (it needs `y.max() + 1` outputs). `heldout` (examples and
    labels of the same classes, never trained on) measures episodic accuracy afterwards.
    """
    if config.head_classes is not None and model.num_classes != config.head_classes:
        raise ValueError(
            f"{config.method} needs a head with {config.head_classes} outputs (one per way), "
            f"the model has {model.num_classes}"
        )
    torch.manual_seed(config.seed)
    losses, accuracies = _Trainer(model, x=x, y=y, config=config).run()
    if config.method == "protonet":
        set_prototype_head(model, x=x, y=y)
    model.eval()
    tenth = max(1, len(losses) // 10)
    curve = tuple(float(np.mean(losses[i : i + tenth])) for i in range(0, len(losses), tenth))
    held_acc, held_n = float("nan"), 0
    if heldout is not None:
        held_acc, held_n = episodic_accuracy(model, x=heldout[0], y=heldout[1], config=config)
    return MetaResult(
        episodes=config.episodes,
        losses=curve,
        train_accuracy=float(np.mean(accuracies[-tenth:])),
        heldout_accuracy=held_acc,
        heldout_episodes=held_n,
    )


@torch.no_grad()
def set_prototype_head(model: XferModel, *, x: torch.Tensor, y: np.ndarray, batch: int = 512) -> None:
    """Sets the head to the nearest-prototype classifier of `y`'s classes (W_c = 2·p_c, b_c = −‖p_c‖²)."""
    model.eval()
    feats = torch.cat([model.forward_features(x[i : i + batch]) for i in range(0, len(x), batch)])
    labels = torch.from_numpy(np.asarray(y)).long()
    k = model.num_classes
    protos = torch.zeros(k, feats.shape[1]).index_add_(0, labels, feats)
    protos /= torch.bincount(labels, minlength=k).clamp_min(1)[:, None].float()
    model.head_layer.weight.copy_(2 * protos)
    model.head_layer.bias.copy_(-protos.pow(2).sum(1))


def episodic_accuracy(
    model: XferModel, *, x: torch.Tensor, y: np.ndarray, config: MetaConfig, episodes: int = EVAL_EPISODES
) -> tuple[float, int]:
    """Mean query accuracy over episodes of (x, y), adapted the way `config.method` adapts.

    Queries per class shrink to what the smallest class allows; (nan, 0) when not even one fits.
    """
    counts = np.bincount(np.asarray(y))
    counts = np.sort(counts[counts > 0])[::-1]
    if len(counts) < config.ways or counts[config.ways - 1] <= config.shots:
        return float("nan"), 0
    queries = int(min(config.queries, counts[config.ways - 1] - config.shots))
    sampler = EpisodeSampler(y, shape=EpisodeShape(config.ways, config.shots, queries), seed=config.seed + 10_007)
    params = dict(model.named_parameters())
    model.eval()
    scores = []
    for _ in range(episodes):
        e = sampler.sample()
        xs, ys = x[torch.from_numpy(e.support)], torch.from_numpy(e.support_y).long()
        xq, yq = x[torch.from_numpy(e.query)], torch.from_numpy(e.query_y).long()
        if config.method == "protonet":
            with torch.no_grad():
                logits = prototype_logits(model.forward_features, support=xs, support_y=ys, query=xq, ways=config.ways)
        else:
            fast = inner_adapt(model, params, x=xs, y=ys, steps=config.inner_steps, lr=config.inner_lr)
            with torch.no_grad():
                logits = functional_call(model, fast, (xq,))
        scores.append(float((logits.argmax(1) == yq).float().mean()))
    return float(np.mean(scores)), episodes
