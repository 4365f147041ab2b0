"""The source-free losses against the reference code's own formulations (SHOT, TENT, AaD, NRC)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xfer.client.finetune.sfda_losses import (
    aad_alpha,
    aad_loss,
    centroid_pseudo_labels,
    information_maximization,
    nearest_neighbours,
    nrc_loss,
    reciprocal_weights,
    shot_loss,
    softmax_entropy,
    tent_loss,
)


def test_tent_entropy_is_a_mean_of_per_example_entropies():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    p = logits.softmax(1)
    manual = -(p * p.log()).sum(1)
    assert torch.allclose(softmax_entropy(logits), manual, atol=1e-6)
    assert torch.allclose(tent_loss(logits), manual.mean(), atol=1e-6)
    # Per-example: the batch gradient is the mean of the single-example gradients (what DP-SGD clips).
    whole = logits.clone().requires_grad_(True)
    tent_loss(whole).backward()
    for i in range(6):
        one = logits[i : i + 1].clone().requires_grad_(True)
        tent_loss(one).backward()
        assert torch.allclose(whole.grad[i] * 6, one.grad[0], atol=1e-6)


def test_information_maximization_extremes():
    k = 5
    uniform = torch.full((8, k), 1.0 / k)
    terms = information_maximization(uniform)
    assert terms.entropy.item() == pytest.approx(math.log(k), abs=1e-4)
    assert terms.diversity.item() == pytest.approx(math.log(k), abs=1e-4)
    assert terms.loss.item() == pytest.approx(0.0, abs=1e-4)
    # Confident and spread evenly: the IM optimum (entropy 0, diversity log K).
    confident = torch.eye(k).repeat(2, 1)
    best = information_maximization(confident)
    assert best.entropy.item() == pytest.approx(0.0, abs=1e-3) and best.diversity.item() == pytest.approx(
        math.log(k), abs=1e-3
    )
    # Collapsed onto one class: confident but not diverse, so IM is worse than the optimum.
    collapsed = information_maximization(torch.eye(k)[[0] * 10])
    assert collapsed.loss.item() > best.loss.item() + 1.0


def test_shot_loss_is_im_plus_weighted_cross_entropy():
    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    p = logits.softmax(1)
    # SHOT's uda_digit.py, term by term.
    entropy = torch.mean(torch.sum(-p * torch.log(p + 1e-5), dim=1))
    mean = p.mean(dim=0)
    expected = 0.3 * F.cross_entropy(logits, labels) + entropy - torch.sum(-mean * torch.log(mean + 1e-5))
    assert shot_loss(logits, labels, cls_weight=0.3).item() == pytest.approx(expected.item(), abs=1e-6)
    assert shot_loss(logits, labels, cls_weight=0.0).item() == pytest.approx(
        (expected - 0.3 * F.cross_entropy(logits, labels)).item(), abs=1e-6
    )


def _reference_obtain_label(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """SHOT's object/image_target.py obtain_label (numpy + scipy cdist), threshold 0."""
    import numpy as np
    from scipy.spatial.distance import cdist

    all_fea = torch.cat((features, torch.ones(features.size(0), 1)), 1)
    all_fea = (all_fea.t() / torch.norm(all_fea, p=2, dim=1)).t().numpy()
    k = probs.size(1)
    aff = probs.numpy()
    predict = probs.argmax(1).numpy()
    for _ in range(2):
        initc = aff.transpose().dot(all_fea)
        initc = initc / (1e-8 + aff.sum(axis=0)[:, None])
        cls_count = np.eye(k)[predict].sum(axis=0)
        labelset = np.where(cls_count > 0)[0]
        dd = cdist(all_fea, initc[labelset], "cosine")
        predict = labelset[dd.argmin(axis=1)]
        aff = np.eye(k)[predict]
    return torch.from_numpy(predict.astype("int64"))


def test_centroid_pseudo_labels_match_shots_obtain_label():
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 16, generator=g) * 3
    truth = torch.arange(4).repeat_interleave(25)
    features = centres[truth] + torch.randn(100, 16, generator=g)
    # A weak classifier: right only 60% of the time, and never predicts class 3.
    noisy = torch.where(torch.rand(100, generator=g) < 0.6, truth, torch.randint(0, 3, (100,), generator=g))
    noisy = torch.where(noisy == 3, torch.zeros_like(noisy), noisy)
    probs = (F.one_hot(noisy, 4).float() * 3 + torch.rand(100, 4, generator=g)).softmax(1)
    pseudo = centroid_pseudo_labels(features, probs)
    assert torch.equal(pseudo.labels, _reference_obtain_label(features, probs))
    assert pseudo.classes_kept == 3 and 3 not in pseudo.labels.tolist()  # a class never predicted keeps no centroid
    before = (probs.argmax(1) == truth).float().mean()
    assert (pseudo.labels == truth).float().mean() > before  # clustering repairs the classifier's mistakes
    assert pseudo.changed == int((pseudo.labels != probs.argmax(1)).sum())


def test_nearest_neighbours_exclude_the_query_itself():
    bank = F.normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    own = torch.tensor([0, 5, 7])
    near = nearest_neighbours(bank[own], bank, k=4, exclude=own)
    assert near.shape == (3, 4)
    assert all(int(o) not in row.tolist() for o, row in zip(own, near))
    sims = bank[own] @ bank.t()
    sims[torch.arange(3), own] = -2
    assert torch.equal(near, sims.topk(4, dim=1).indices)


def test_aad_loss_has_the_references_gradient():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 5, generator=g, requires_grad=True)
    scores = torch.softmax(torch.randn(6, 3, 5, generator=g), -1)
    alpha = aad_alpha(0.3)
    aad_loss(logits.softmax(1), scores, alpha=alpha).backward()
    ours = logits.grad.clone()
    logits.grad = None
    # AaD's tar_adaptation.py, verbatim but for .cuda(): kl_div on probabilities (no log) is a dot product.
    softmax_out = logits.softmax(1)
    softmax_out_un = softmax_out.unsqueeze(1).expand(-1, 3, -1)
    loss = torch.mean((F.kl_div(softmax_out_un, scores, reduction="none").sum(-1)).sum(1))
    mask = torch.ones((6, 6)) - torch.diag_embed(torch.diag(torch.ones((6, 6))))
    dot_neg = ((softmax_out @ softmax_out.T) * mask).sum(-1)
    (loss + torch.mean(dot_neg) * alpha).backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)
    assert aad_alpha(0.0) == 1.0 and aad_alpha(1.0) == pytest.approx(11.0**-5)


def test_nrc_loss_has_the_references_gradient():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, generator=g, requires_grad=True)
    near = torch.softmax(torch.randn(4, 2, 3, generator=g), -1)
    expanded = torch.softmax(torch.randn(4, 6, 3, generator=g), -1)
    weight = torch.tensor([[1.0, 0.1], [0.1, 0.1], [1.0, 1.0], [0.1, 1.0]])
    nrc_loss(logits.softmax(1), near, weight, expanded).backward()
    ours = logits.grad.clone()
    logits.grad = None
    # NRC's train_tar.py.
    softmax_out = logits.softmax(1)
    output_re = softmax_out.unsqueeze(1).expand(-1, 6, -1)
    weight_kk = torch.full((4, 6), 0.1)
    loss = torch.mean((F.kl_div(output_re, expanded, reduction="none").sum(-1) * weight_kk).sum(1))
    softmax_out_un = softmax_out.unsqueeze(1).expand(-1, 2, -1)
    loss += torch.mean((F.kl_div(softmax_out_un, near, reduction="none").sum(-1) * weight).sum(1))
    msoftmax = softmax_out.mean(dim=0)
    loss += torch.sum(msoftmax * torch.log(msoftmax + 1e-5))
    loss.backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)


def test_reciprocal_weights():
    # Points on a line: 0,1,2 close together, 3 far away. 3's nearest neighbour is 2, but 2's are 1 and 0.
    bank = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    own = torch.tensor([3, 1])
    near = nearest_neighbours(bank[own], bank, k=1, exclude=own)
    assert near.tolist() == [[2], [0]] or near.tolist() == [[2], [2]]
    expanded, weights = reciprocal_weights(near, bank, own, kk=2)
    assert 3 not in expanded[0, 0].tolist() and weights[0, 0].item() == pytest.approx(0.1)  # not reciprocal
    assert 1 in expanded[1, 0].tolist() and weights[1, 0].item() == 1.0  # reciprocal
