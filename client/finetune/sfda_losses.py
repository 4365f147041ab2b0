"""The losses of source-free adaptation, as pure torch functions (no state, no model).

Each follows the authors' reference code (cited per function), so that a
difference in results is a difference in setting, not in the method:

- TENT (Wang et al., ICLR 2021; github.com/DequanWang/tent): the Shannon
  entropy of each example's softmax prediction, averaged over the batch.
  It is a sum of per-example terms, so DP-SGD can clip it per example.
- SHOT (Liang et al., ICML 2020; github.com/tim-learn/SHOT): information
  maximisation (mean per-example entropy minus the entropy of the batch's
  mean prediction) plus cross-entropy to pseudo-labels from feature
  centroids (`centroid_pseudo_labels`). The diversity term couples the
  examples of a batch: not per-example.
- AaD (Yang et al., NeurIPS 2022; github.com/Albert0147/AaD_SFDA) and NRC
  (Yang et al., NeurIPS 2021; github.com/Albert0147/NRC_SFDA): consistency
  with the stored predictions of each example's nearest neighbours in a
  feature bank of the whole target set. Neither is per-example.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

#: The epsilon SHOT and AaD add inside their logarithms (`loss.Entropy`, `args.epsilon`).
LOG_EPSILON = 1e-5


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example entropy of softmax(logits), computed from log-softmax (TENT's `softmax_entropy`)."""
    logits = logits.float()
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def entropy_of_probs(probs: torch.Tensor, *, eps: float = LOG_EPSILON) -> torch.Tensor:
    """Per-row entropy −Σ p log(p + eps) of probability rows (SHOT's `loss.Entropy`)."""
    return -(probs * torch.log(probs + eps)).sum(-1)


def tent_loss(logits: torch.Tensor) -> torch.Tensor:
    """TENT: the mean softmax entropy of the batch (a mean of per-example terms)."""
    return softmax_entropy(logits).mean(0)


@dataclasses.dataclass(frozen=True)
class IMTerms:
    """SHOT's information-maximisation terms of one batch."""

    #: Mean per-example entropy (to minimise: confident predictions).
    entropy: torch.Tensor
    #: Entropy of the batch's mean prediction (to maximise: diverse predictions).
    diversity: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """entropy − diversity (SHOT's `entropy_loss -= gentropy_loss`)."""
        return self.entropy - self.diversity


def information_maximization(probs: torch.Tensor, *, eps: float = LOG_EPSILON) -> IMTerms:
    """SHOT's IM terms of a batch of softmax predictions."""
    mean = probs.mean(0)
    return IMTerms(entropy=entropy_of_probs(probs, eps=eps).mean(), diversity=-(mean * torch.log(mean + eps)).sum())


def shot_loss(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    *,
    cls_weight: float,
    im_weight: float = 1.0,
    eps: float = LOG_EPSILON,
) -> torch.Tensor:
    """SHOT: cls_weight × CE(logits, pseudo-labels) + im_weight × (mean entropy − entropy of the mean)."""
    probs = logits.float().softmax(1)
    loss = im_weight * information_maximization(probs, eps=eps).loss
    if cls_weight > 0:
        loss = loss + cls_weight * F.cross_entropy(logits.float(), pseudo_labels)
    return loss


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    """SHOT's self-supervised pseudo-labels of the whole target set."""

    labels: torch.Tensor
    #: How many of them differ from the classifier's own argmax (a label-free diagnostic).
    changed: int
    #: Classes that kept a centroid (those the classifier predicted at least `threshold` + 1 times).
    classes_kept: int


@torch.no_grad()
def centroid_pseudo_labels(
    features: torch.Tensor, probs: torch.Tensor, *, rounds: int = 2, threshold: int = 0
) -> PseudoLabels:
    """SHOT's `obtain_label` (object/image_target.py): nearest class centroid in cosine distance.

    Features get a constant 1 appended and are L2-normalised; the first
    centroids are the softmax-weighted means of the features, each later
    round's the mean of the features assigned to it. Only classes predicted
    more than `threshold` times keep a centroid. Two rounds, as the reference.
    """
    feats = torch.cat([features.float(), torch.ones(len(features), 1, device=features.device)], 1)
    feats = feats / feats.norm(dim=1, keepdim=True)
    k = probs.shape[1]
    predict = probs.argmax(1)
    first = predict
    weights = probs.float()
    kept = k
    for _ in range(max(1, rounds)):
        centroids = weights.t() @ feats / (1e-8 + weights.sum(0)[:, None])
        counts = torch.bincount(predict, minlength=k)
        labelset = torch.nonzero(counts > threshold).squeeze(1)
        if labelset.numel() == 0:  # nothing predicted often enough: keep the classifier's labels
            break
        kept = int(labelset.numel())
        centroids = centroids[labelset]
        centroids = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
        # Cosine distance = 1 − cosine similarity; feats are unit rows already.
        predict = labelset[(feats @ centroids.t()).argmax(1)]
        weights = F.one_hot(predict, k).float()
    return PseudoLabels(labels=predict, changed=int((predict != first).sum()), classes_kept=kept)


@torch.no_grad()
def nearest_neighbours(
    query: torch.Tensor, bank: torch.Tensor, *, k: int, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices (len(query), k) of the k most cosine-similar bank rows (rows of both are unit vectors).

    The reference takes the top k + 1 and drops the first, which is the
    query itself when it is in the bank; `exclude` (each query's own bank
    row) masks it out explicitly, so a duplicate image cannot take its place.
    """
    similarity = query @ bank.t()
    if exclude is not None:
        similarity[torch.arange(len(query), device=query.device), exclude] = -float("inf")
    k = min(k, bank.shape[0] - (1 if exclude is not None else 0))
    return similarity.topk(k, dim=1).indices


def aad_loss(probs: torch.Tensor, neighbour_scores: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """AaD: attract each prediction to its neighbours' stored ones, disperse it from the rest of the batch.

    `probs` (B, C) are this batch's softmax outputs, `neighbour_scores`
    (B, K, C) the bank's predictions of each example's K neighbours. The
    reference writes the attraction as `kl_div(p, s)` without a log on p,
    which is Σ s log s − s·p: the same gradient as the −s·p used here. The
    dispersion is the batch's off-diagonal Σ_{j≠i} p_i·p_j, weighted by alpha.
    """
    attract = -(probs.unsqueeze(1) * neighbour_scores).sum(-1).sum(1).mean()
    gram = probs @ probs.t()
    disperse = (gram.sum(1) - gram.diagonal()).mean()
    return attract + alpha * disperse


def aad_alpha(progress: float, *, alpha: float = 1.0, beta: float = 5.0) -> float:
    """AaD's dispersion weight (1 + 10·progress)^(−beta) × alpha, progress in [0, 1]."""
    return (1.0 + 10.0 * progress) ** (-beta) * alpha


def nrc_loss(
    probs: torch.Tensor,
    neighbour_scores: torch.Tensor,
    neighbour_weights: torch.Tensor,
    expanded_scores: torch.Tensor,
    *,
    expanded_weight: float = 0.1,
    eps: float = LOG_EPSILON,
) -> torch.Tensor:
    """NRC: weighted consistency with the K neighbours and their KK neighbours, plus diversity.

    `neighbour_weights` (B, K) are 1 for reciprocal neighbours and 0.1
    otherwise; every expanded neighbour (B, K·KK, C) weighs `expanded_weight`.
    As in AaD the reference's log-free `kl_div` is the dot product used
    here. The last term is Σ p̄ log p̄ of the batch's mean prediction.
    """
    near = -((probs.unsqueeze(1) * neighbour_scores).sum(-1) * neighbour_weights).sum(1).mean()
    expanded = -((probs.unsqueeze(1) * expanded_scores).sum(-1) * expanded_weight).sum(1).mean()
    mean = probs.mean(0)
    return near + expanded + (mean * torch.log(mean + eps)).sum()


@torch.no_grad()
def reciprocal_weights(
    neighbours: torch.Tensor, bank: torch.Tensor, own: torch.Tensor, *, kk: int, other: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """NRC's affinities: for each of the K neighbours of each query, its own KK nearest neighbours (B, K, KK)
    and a weight of 1 if the query (bank row `own`) is among them, else `other` (B, K)."""
    b, k = neighbours.shape
    near_feats = bank[neighbours.reshape(-1)]  # (B·K, d)
    expanded = nearest_neighbours(near_feats, bank, k=kk, exclude=neighbours.reshape(-1)).reshape(b, k, -1)
    match = (expanded == own.view(b, 1, 1)).any(-1)
    weights = torch.where(
        match, torch.ones_like(match, dtype=torch.float32), torch.full_like(match, other, dtype=torch.float32)
    )
    return expanded, weights
