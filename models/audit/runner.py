"""One audit of trained weights: the membership attacks, and for DP training the one-run canary audit."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from xfer.models.audit.canary import canary_audit
from xfer.models.audit.config import AuditConfig
from xfer.models.audit.membership import HELD_OUT_METHOD, audit_membership, build_audit
from xfer.models.audit.record import PrivacyAudit
from xfer.models.fit import FitConfig

log = logging.getLogger(__name__)


def audit_trained_model(*, model: nn.Module, make_model: Callable[[], nn.Module],
                        members: tuple[torch.Tensor, torch.Tensor], non_members: tuple[torch.Tensor, torch.Tensor],
                        num_classes: int, fit_config: FitConfig, config: AuditConfig,
                        method: str = HELD_OUT_METHOD) -> PrivacyAudit:
    """The audit block for `model`, trained with `fit_config` on `members`; `non_members` it never saw.

    With `fit_config.dp_epsilon` the recipe is also audited with canaries
    drawn from the members (a separate training run of the same recipe).
    """
    attacks = audit_membership(model=model, make_model=make_model, members=members, non_members=non_members,
                               fit_config=fit_config, config=config)
    dp = None
    if fit_config.dp_epsilon is not None:
        dp = canary_audit(make_model=make_model, x=members[0], y=members[1], num_classes=num_classes,
                          fit_config=fit_config, canaries=config.canaries, confidence=config.confidence,
                          seed=config.seed).audit
    audit = build_audit(attacks=attacks, dp=dp, config=config, method=method)
    for attack in audit.attacks:
        log.info("%s: AUC %.3f [%.3f, %.3f]", attack.attack, attack.auc, attack.auc_low, attack.auc_high)
    return audit


def summary_lines(audit: PrivacyAudit) -> list[str]:
    """One line per attack (and for the DP audit), for CLIs."""
    lines = []
    for a in audit.attacks:
        tprs = ", ".join(f"TPR@{p.fpr:g} FPR {p.tpr:.4f} [{p.tpr_low:.4f}, {p.tpr_high:.4f}]" for p in a.tpr_at_fpr)
        refs = f", {a.reference_models} reference models" if a.reference_models else ""
        lines.append(f"{a.attack}: AUC {a.auc:.3f} [{a.auc_low:.3f}, {a.auc_high:.3f}], {tprs} "
                     f"({a.members} members, {a.non_members} non-members{refs})")
    if audit.dp is not None:
        d = audit.dp
        lines.append(f"DP audit: epsilon >= {d.epsilon_lower_bound:.3f} at {d.confidence:.0%} confidence "
                     f"(claimed {d.claimed_epsilon:.3f}; {d.correct}/{d.guesses} guesses right, {d.canaries} canaries)")
    return lines
