"""Label-free model-selection criteria: scores of a model's predictions on held-out *unlabelled* data.

With no labels, cross-validation is impossible; these criteria rank
candidate adaptations (learning rates, checkpoints) from the predictions
alone. Higher is better for every one. They see logits only — never a
label — and `select`/`adapt_source_free` give them the validation split
with its labels removed.

- `im`: information maximisation, H(mean prediction) − mean H(prediction)
  (SHOT's objective, read on held-out data; its maximum log K is reached
  by confident predictions spread evenly over the classes).
- `snd`: soft neighbourhood density (Saito et al., ICCV 2021,
  github.com/VisionLearningGroup/SND, as AaD's `snd.py`): the mean entropy
  of each example's softmax over its similarities (temperature 0.05) to the
  other examples' normalised softmax predictions; dense clusters score high.
- `entropy`: minus the mean prediction entropy (confidence alone; blind to
  collapse onto one class, kept as the baseline the others improve on).

How well each tracks true accuracy on the testbed is measured by
`bench/report_sfda.py` (`make report-sfda`: rank correlation with test
accuracy over every LR × checkpoint, and the accuracy of each criterion's
pick); `DEFAULT_CRITERION` (`im`) is the one that tracked it best there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from xfer.client.finetune.errors import SearchError
from xfer.client.finetune.sfda_losses import entropy_of_probs, information_maximization

#: SND's temperature (the SND paper's and AaD's `neighbor_density(T=0.05)`).
SND_TEMPERATURE = 0.05
#: SND compares every pair: above this many held-out examples it reads a fixed, seeded subset of them.
SND_MAX_EXAMPLES = 2048

Criterion = Callable[[torch.Tensor], float]


def information_maximization_score(logits: torch.Tensor) -> float:
    """H(mean p) − mean H(p) of the held-out predictions (higher: confident and diverse)."""
    terms = information_maximization(logits.float().softmax(1))
    return float(terms.diversity - terms.entropy)


def soft_neighbourhood_density(logits: torch.Tensor) -> float:
    """SND: mean entropy of the softmax (T = 0.05) over each example's similarity to the others."""
    probs = logits.float().softmax(1)
    if len(probs) > SND_MAX_EXAMPLES:
        # A fixed subset (the same for every candidate scored on this split), so rankings stay comparable.
        rows = torch.randperm(len(probs), generator=torch.Generator().manual_seed(0))[:SND_MAX_EXAMPLES]
        probs = probs[rows.to(probs.device)]
    unit = probs / probs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit.t() / SND_TEMPERATURE
    similarity.fill_diagonal_(-1.0 / SND_TEMPERATURE)
    return float(entropy_of_probs(similarity.softmax(1)).mean())


def negative_entropy(logits: torch.Tensor) -> float:
    """−mean H(p): prediction confidence."""
    return -float(entropy_of_probs(logits.float().softmax(1)).mean())


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, criterion: Criterion) -> None:
    """Registers a criterion (higher is better) under `name`; a duplicate raises."""
    if name in _CRITERIA:
        raise SearchError(f"label-free criterion {name!r} is already registered")
    _CRITERIA[name] = criterion


register_criterion("im", information_maximization_score)
register_criterion("snd", soft_neighbourhood_density)
register_criterion("entropy", negative_entropy)


def get_criterion(name: str) -> Criterion:
    """The criterion called `name`; raises listing the valid ones if unknown."""
    try:
        return _CRITERIA[name]
    except KeyError:
        raise SearchError(f"unknown label-free criterion {name!r}; valid: {', '.join(_CRITERIA)}") from None


def list_criteria() -> list[str]:
    """Registered criterion names."""
    return list(_CRITERIA)


def score_all(logits: torch.Tensor) -> dict[str, float]:
    """Every registered criterion of the same held-out logits (one forward pass serves them all)."""
    return {name: criterion(logits) for name, criterion in _CRITERIA.items()}
