"""The `finetune` episode head: the whole network adapted on one episode's support set (torch).

The head starts from the support set's class prototypes in their linear form
(W_c = 2·p_c, b_c = −‖p_c‖² on the body's features: Proto-MAML, Triantafillou
et al., ICLR 2020), so the first step already starts from ProtoNet's answer,
for any source and any number of ways. A source meta-trained with an inner
loop (fomaml, reptile) whose head has exactly `ways` outputs starts from its
own meta-learned head instead, and adapts with its own inner loop (the card's
`inner_steps`, `inner_lr`): the procedure it was trained for. Then
full-batch SGD on the support set (first order, on a functional copy: the
model is never modified), and the adapted network's query logits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.func import functional_call

from xfer.models.base import XferModel
from xfer.models.card import ModelCard
from xfer.models.meta import inner_adapt

#: SGD on the support set when the card records no inner loop.
DEFAULT_STEPS = 10
DEFAULT_LR = 0.01
#: Meta-training methods whose card records an inner loop a client should repeat.
INNER_LOOP_METHODS = ("fomaml", "reptile")


@dataclasses.dataclass(frozen=True)
class EpisodeTuning:
    """How the `finetune` head adapts: steps, learning rate, and whether it starts from the model's own head."""

    steps: int
    lr: float
    own_head: bool

    @classmethod
    def for_card(cls, card: ModelCard | None, *, ways: int, steps: int | None, lr: float | None) -> EpisodeTuning:
        """The card's inner loop for a fomaml/reptile source (own head when it has `ways` outputs), else defaults."""
        settings = card.training_settings if card is not None else {}
        meta = card is not None and card.training_method in INNER_LOOP_METHODS
        own = bool(meta and card is not None and card.num_classes == ways)
        default_steps = int(settings.get("inner_steps", DEFAULT_STEPS)) if meta else DEFAULT_STEPS
        default_lr = float(settings.get("inner_lr", DEFAULT_LR)) if meta else DEFAULT_LR
        return cls(
            steps=steps if steps is not None else default_steps, lr=lr if lr is not None else default_lr, own_head=own
        )


def prototype_head(features: torch.Tensor, labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the squared-Euclidean prototype classifier of the support features."""
    protos = torch.zeros(ways, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    protos /= torch.bincount(labels, minlength=ways).clamp_min(1)[:, None].to(features.dtype)
    return 2 * protos, -protos.pow(2).sum(1)


def finetune_episode(
    model: XferModel,
    *,
    support_x: torch.Tensor,
    support_y: np.ndarray,
    query_x: torch.Tensor,
    ways: int,
    tuning: EpisodeTuning,
) -> np.ndarray:
    """Query logits after adapting a functional copy of `model` on the support set."""
    model.eval()
    ys = torch.from_numpy(np.asarray(support_y)).long()
    params = {k: v.detach() for k, v in model.named_parameters()}
    if not tuning.own_head:
        with torch.no_grad():
            weight, bias = prototype_head(model.forward_features(support_x), ys, ways)
        params[f"{model.head_name}.weight"], params[f"{model.head_name}.bias"] = weight, bias
    fast = inner_adapt(model, params, x=support_x, y=ys, steps=tuning.steps, lr=tuning.lr)
    with torch.no_grad():
        return functional_call(model, fast, (query_x,)).double().numpy()
