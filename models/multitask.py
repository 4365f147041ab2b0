"""Multi-task source models: one shared body, several classification heads.

The architecture's own head is the first task (the card's `num_classes` and
`label_names`); every further head is an `nn.Linear` on the same features,
kept in an `nn.ModuleDict` called `task_heads`, so the weights hold
`task_heads.<name>.weight` and `.bias` beside the architecture's tensors and
the card's `tasks` say which heads exist. `model_from_card` attaches them,
so the server's strict tensor check and the client's strict load see the
same module; the ONNX export's `logits` are the first head's.

A client adapts one head at a time: `select_head(model, card=..., head=name)`
returns a plain single-head model whose head is the chosen one (and a card
that describes it), from which fine-tuning starts, or resets it when the
client's label set differs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from xfer.models.base import XferModel
from xfer.models.card import ModelCard, TaskHead
from xfer.models.errors import InvalidCardError

TASK_HEADS = "task_heads"


def attach_task_heads(model: XferModel, tasks: Sequence[TaskHead]) -> XferModel:
    """Adds an `nn.Linear(feature_dim, k)` per task in `tasks` under `model.task_heads` (in place)."""
    if not tasks:
        return model
    head = model.head_layer
    heads = nn.ModuleDict(
        {
            t.name: nn.Linear(head.in_features, t.num_classes, device=head.weight.device, dtype=head.weight.dtype)
            for t in tasks
        }
    )
    model.add_module(TASK_HEADS, heads)
    return model


def task_heads(model: nn.Module) -> nn.ModuleDict | None:
    """The extra heads of a multi-task model, or None."""
    heads = getattr(model, TASK_HEADS, None)
    return heads if isinstance(heads, nn.ModuleDict) else None


def head_names(card: ModelCard) -> tuple[str, ...]:
    """Names of the card's heads, the model's own first (empty for a single-head model)."""
    return tuple(t.name for t in card.tasks)


def all_logits(model: XferModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Logits of every head on `x`, in the card's task order (the model's own head first)."""
    features = model.forward_features(x)
    out = [model.head_layer(features)]
    extra = task_heads(model)
    if extra is not None:
        out += [layer(features) for layer in extra.values()]
    return out


@dataclasses.dataclass(frozen=True)
class SelectedHead:
    """A single-head model and the card that describes it, from `select_head`."""

    model: XferModel
    card: ModelCard | None
    #: The chosen head's name; None for a single-head model.
    head: str | None


def select_head(model: XferModel, *, card: ModelCard | None, head: str | None = None) -> SelectedHead:
    """The single-head model to adapt: head `head` of a multi-task model (default: its first), extra heads dropped.

    A single-head model (no `tasks` on its card) comes back unchanged; asking it for a head by name raises
    InvalidCardError unless the name is its only head's. `model` itself is never modified.
    """
    tasks = card.tasks if card is not None else ()
    extra = task_heads(model)
    if not tasks:
        if head is not None:
            raise InvalidCardError(
                f"the model has a single head; --head {head!r} needs a multi-task source "
                f"(its card lists the heads under 'tasks')"
            )
        if extra is None:
            return SelectedHead(model, card, None)
        work = copy.deepcopy(model)
        delattr(work, TASK_HEADS)
        return SelectedHead(work, card, None)
    assert card is not None
    chosen = card.task(head) if head is not None else tasks[0]
    work = copy.deepcopy(model)
    extra = task_heads(work)
    if chosen.name != tasks[0].name:
        if extra is None or chosen.name not in extra:
            raise InvalidCardError(
                f"the card lists head {chosen.name!r} but the model has no such layer; load it "
                f"with xfer.models.weights.model_from_card"
            )
        setattr(work, work.head_name, extra[chosen.name])
        work.config = dataclasses.replace(work.config, num_classes=chosen.num_classes)
    if extra is not None:
        delattr(work, TASK_HEADS)
    selected = dataclasses.replace(
        card,
        architecture_config=work.config_dict(),
        num_classes=chosen.num_classes,
        label_names=tuple(chosen.label_names),
        tasks=(),
        description=(f"{card.description}; " if card.description else "") + f"head {chosen.name!r}",
    )
    return SelectedHead(work, selected, chosen.name)


# -- training a multi-task source (operator side) -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One head to train: which source classes map to which of its outputs, and its loss weight."""

    name: str
    #: Output j of the head is the union of the source classes groups[j].
    groups: tuple[tuple[int, ...], ...]
    label_names: tuple[str, ...]
    weight: float = 1.0

    def head(self) -> TaskHead:
        """The card's description of this head."""
        return TaskHead(
            name=self.name, num_classes=len(self.groups), label_names=self.label_names, loss_weight=float(self.weight)
        )


def parse_tasks(text: str, *, label_names: Sequence[str]) -> tuple[TaskSpec, ...]:
    """Parses `--tasks`: ``NAME=CLASSES[@WEIGHT];NAME=...``, the first task being the model's own head.

    CLASSES is a class list (``0-4`` or ``1,3,5``: one output per class, named as the data set names it)
    or groups separated by ``|``, each an optional ``label:`` and a class list (``top:0,2,4|bottom:1``:
    one output per group). Class numbers are the data set's own; an example whose class a task does not
    list contributes nothing to that task's loss. Raises ValueError saying what is wrong.
    """
    from xfer.models.card import TASK_NAME
    from xfer.models.imagesets import parse_classes

    parts = [p.strip() for p in text.split(";") if p.strip()]
    if len(parts) < 2:
        raise ValueError(
            "--tasks needs at least two tasks separated by ';', e.g. "
            "'items=0-4;group=top:0,2,4|bottom:1,3' (one task is --classes)"
        )
    specs: list[TaskSpec] = []
    for part in parts:
        name, sep, body = part.partition("=")
        name = name.strip()
        if not sep or not body.strip():
            raise ValueError(f"task {part!r}: write NAME=CLASSES, e.g. items=0-4")
        if not TASK_NAME.fullmatch(name):
            raise ValueError(f"task name {name!r} must match ^[a-z][a-z0-9_]{{0,31}}$")
        body, at, weight_text = body.rpartition("@") if "@" in body else (body, "", "")
        weight = 1.0
        if at:
            try:
                weight = float(weight_text)
            except ValueError:
                raise ValueError(f"task {name!r}: weight {weight_text!r} is not a number") from None
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"task {name!r}: the weight must be a finite number >= 0, got {weight_text}")
        groups, names = [], []
        grouped = "|" in body
        for group in body.split("|") if grouped else [body]:
            label, colon, classes = group.rpartition(":") if ":" in group else ("", "", group)
            numbers = parse_classes(classes)
            bad = [c for c in numbers if not 0 <= c < len(label_names)]
            if bad or not numbers:
                raise ValueError(f"task {name!r}: classes must be 0-{len(label_names) - 1}, got {classes.strip()!r}")
            if grouped:
                groups.append(tuple(numbers))
                names.append(label.strip() or "+".join(label_names[c] for c in numbers))
            else:
                if colon:
                    raise ValueError(f"task {name!r}: a 'label:' names a group; separate groups with '|'")
                groups += [(c,) for c in numbers]
                names += [label_names[c] for c in numbers]
        flat = [c for g in groups for c in g]
        if len(set(flat)) != len(flat):
            raise ValueError(f"task {name!r}: a class appears twice")
        if len(groups) < 2:
            raise ValueError(f"task {name!r} has {len(groups)} output; a head needs at least two")
        if len(set(names)) != len(names):
            raise ValueError(f"task {name!r}: output names must differ, got {names}")
        specs.append(TaskSpec(name, tuple(groups), tuple(names), weight))
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"task names must differ, got {[s.name for s in specs]}")
    if all(s.weight == 0 for s in specs):
        raise ValueError("every task has weight 0: nothing would be trained")
    return tuple(specs)


def task_targets(y: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """(n, tasks) labels: each example's output in each task, −1 where the task does not list its class."""
    out = np.full((len(y), len(tasks)), -1, dtype=np.int64)
    for t, task in enumerate(tasks):
        for j, group in enumerate(task.groups):
            out[np.isin(y, group), t] = j
    return out


def used_classes(tasks: Sequence[TaskSpec]) -> list[int]:
    """Every source class some task lists, sorted."""
    return sorted({c for task in tasks for g in task.groups for c in g})


class MultiHeadNet(nn.Module):
    """All heads' logits side by side, (batch, Σ k_i): one module for the optimiser and for Opacus."""

    def __init__(self, model: XferModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(all_logits(self.model, x), dim=1)


def multitask_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, sizes: Sequence[int], weights: Sequence[float]
) -> torch.Tensor:
    """mean over the batch of Σ_i w_i · CE_i(example), a task's term 0 where it has no label (per-example, so DP-SGD
    can clip it). When every task labels every example this is Σ_i w_i L_i."""
    total = logits.new_zeros(len(logits))
    start = 0
    for t, (k, w) in enumerate(zip(sizes, weights)):
        part = logits[:, start : start + k]
        start += k
        y = targets[:, t]
        has = y >= 0
        ce = nn.functional.cross_entropy(part, y.clamp_min(0), reduction="none")
        total = total + w * torch.where(has, ce, torch.zeros_like(ce))
    return total.sum() / max(len(logits), 1)
