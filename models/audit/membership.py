"""Membership inference against trained weights: the loss threshold and offline RMIA.

- **loss-threshold** (Yeom et al. 2018): a low loss on an example says it
  was trained on. Needs nothing but the model.
- **rmia-offline** (Zarifzadeh, Liu, Chang & Shokri, ICML 2024): compares
  the target's probability of the true label, Pr(y|x, theta), with what
  reference models that did *not* train on x give it. Reference models come
  in pairs trained on the two disjoint halves of the audit pool (members and
  non-members together), so every example is out of exactly one model per
  pair, and those are the ones averaged (the offline variant). Pr(x) is
  RMIA's offline estimate 1/2 ((1 + a) mean_out + (1 - a)); the score is the
  likelihood ratio Pr(y|x, theta) / Pr(x). RMIA's pairwise test against
  population samples z, Pr_z[ratio(x) / ratio(z) > gamma], is a
  non-decreasing function of that ratio for a fixed population, so ROC, AUC
  and TPR at a fixed FPR are computed on the ratio itself (gamma only picks
  one operating point).

The reference models are trained with the same loop and recipe as the
target (`xfer.models.fit`), DP included, as the attack assumes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import platform
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from xfer.models.audit import stats
from xfer.models.audit.config import AuditConfig
from xfer.models.audit.record import DpAudit, MembershipAttack, PrivacyAudit, TprAtFpr
from xfer.models.fit import FitConfig, fit

log = logging.getLogger(__name__)

ATTACKS = ("loss-threshold", "rmia-offline")
#: What the card's `method` says about how members and non-members were chosen, by default.
HELD_OUT_METHOD = "members: training examples; non-members: a held-out split of the same pool"


@dataclasses.dataclass(frozen=True)
class ExampleScores:
    """Per-example loss and probability of the true label under one model."""

    loss: np.ndarray
    p_true: np.ndarray


def example_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> ExampleScores:
    """Cross-entropy and softmax probability of the true label for every example, in eval mode."""
    model.eval()
    losses, probs = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size]).double()
            labels = y[start : start + batch_size]
            log_p = torch.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
            losses.append((-log_p).numpy())
            probs.append(log_p.exp().numpy())
    return ExampleScores(loss=np.concatenate(losses), p_true=np.concatenate(probs))


def attack_result(
    *,
    attack: str,
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    config: AuditConfig,
    reference_models: int = 0,
) -> MembershipAttack:
    """AUC (DeLong interval) and TPR at each FPR (Clopper-Pearson interval) of one attack's scores."""
    auc = stats.roc_auc(member_scores, non_member_scores, confidence=config.confidence)
    points = []
    for fpr in config.fprs:
        point = stats.tpr_at_fpr(member_scores, non_member_scores, fpr=fpr, confidence=config.confidence)
        points.append(TprAtFpr(fpr=fpr, tpr=point.tpr.value, tpr_low=point.tpr.low, tpr_high=point.tpr.high))
    return MembershipAttack(
        attack=attack,
        auc=auc.value,
        auc_low=auc.low,
        auc_high=auc.high,
        tpr_at_fpr=tuple(points),
        members=len(member_scores),
        non_members=len(non_member_scores),
        reference_models=reference_models,
    )


def rmia_scores(*, target_p: np.ndarray, out_p: np.ndarray, a: float) -> np.ndarray:
    """log of RMIA's offline likelihood ratio Pr(y|x, target) / Pr(x), Pr(x) from the mean out-model probability."""
    pr_x = 0.5 * ((1.0 + a) * out_p + (1.0 - a))
    tiny = np.finfo(np.float64).tiny
    return np.log(np.maximum(target_p, tiny)) - np.log(np.maximum(pr_x, tiny))


def _tool_versions() -> dict[str, str]:
    versions = {"torch": torch.__version__.split("+")[0], "python": platform.python_version(), "numpy": np.__version__}
    try:
        import opacus

        versions["opacus"] = opacus.__version__
    except ImportError:  # pragma: no cover  (DP training needs it; a plain audit does not)
        pass
    try:
        from importlib.metadata import version

        versions["xfer"] = version("xfer")
    except Exception:  # noqa: BLE001  (a source tree that is not installed)
        versions["xfer"] = "unknown"
    return versions


def audit_membership(
    *,
    model: nn.Module,
    make_model: Callable[[], nn.Module],
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    fit_config: FitConfig,
    config: AuditConfig,
) -> tuple[MembershipAttack, ...]:
    """Runs the loss-threshold attack and (with reference pairs) offline RMIA against `model`.

    `members` are (x, y) the model trained on, `non_members` (x, y) it never
    saw, from the same distribution. `make_model()` returns a freshly
    initialised module of the target's architecture, trained here with
    `fit_config` (the target's recipe) on halves of members + non-members.
    """
    x_in, y_in = members
    x_out, y_out = non_members
    if len(x_in) < 2 or len(x_out) < 2:
        raise ValueError(f"an audit needs at least 2 members and 2 non-members, got {len(x_in)} and {len(x_out)}")
    rng = np.random.default_rng(config.seed)
    if config.max_members is not None and len(x_in) > config.max_members:
        keep = torch.from_numpy(np.sort(rng.choice(len(x_in), config.max_members, replace=False)))
        x_in, y_in = x_in[keep], y_in[keep]
    x_all, y_all = torch.cat([x_in, x_out]), torch.cat([y_in, y_out])
    is_member = np.r_[np.ones(len(x_in), bool), np.zeros(len(x_out), bool)]
    target = example_scores(model, x_all, y_all)
    attacks = [
        attack_result(
            attack="loss-threshold",
            member_scores=-target.loss[is_member],
            non_member_scores=-target.loss[~is_member],
            config=config,
        )
    ]
    if config.reference_pairs:
        out_sum = np.zeros(len(x_all))
        out_count = np.zeros(len(x_all))
        for pair in range(config.reference_pairs):
            order = rng.permutation(len(x_all))
            halves = (order[: len(order) // 2], order[len(order) // 2 :])
            for half, rows in enumerate(halves):
                torch.manual_seed(config.seed * 1000 + 2 * pair + half + 1)
                reference = make_model()
                recipe = dataclasses.replace(fit_config, seed=fit_config.seed * 1000 + 2 * pair + half + 1)
                index = torch.from_numpy(np.sort(rows))
                trained = fit(reference, x_all[index], y_all[index], recipe).model
                out_rows = np.setdiff1d(np.arange(len(x_all)), rows)
                scores = example_scores(trained, x_all[torch.from_numpy(out_rows)], y_all[torch.from_numpy(out_rows)])
                out_sum[out_rows] += scores.p_true
                out_count[out_rows] += 1
                log.info("reference model %d of %d trained", 2 * pair + half + 1, 2 * config.reference_pairs)
        ratio = rmia_scores(target_p=target.p_true, out_p=out_sum / out_count, a=config.rmia_a)
        attacks.append(
            attack_result(
                attack="rmia-offline",
                member_scores=ratio[is_member],
                non_member_scores=ratio[~is_member],
                config=config,
                reference_models=2 * config.reference_pairs,
            )
        )
    return tuple(attacks)


def utc_now() -> str:
    """The current UTC time in RFC 3339, to the second."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_audit(
    *, attacks: tuple[MembershipAttack, ...], dp: DpAudit | None, config: AuditConfig, method: str = HELD_OUT_METHOD
) -> PrivacyAudit:
    """The card's audit block, dated now, with the tool versions."""
    audit = PrivacyAudit(
        method=method,
        date=utc_now(),
        attacks=attacks,
        dp=dp,
        confidence=config.confidence,
        tool_versions=_tool_versions(),
    )
    audit.validate()
    return audit
