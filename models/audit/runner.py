"""One audit of trained weights: the membership attacks, and for DP training the one-run canary audit."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xfer.models.audit.canary import canary_audit
from xfer.models.audit.config import AuditConfig
from xfer.models.audit.membership import HELD_OUT_METHOD, audit_membership, build_audit
from xfer.models.audit.record import PrivacyAudit
from xfer.models.errors import InvalidCardError
from xfer.models.fit import FitConfig

log = logging.getLogger(__name__)


def audit_trained_model(
    *,
    model: nn.Module,
    make_model: Callable[[], nn.Module],
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    fit_config: FitConfig,
    config: AuditConfig,
    method: str = HELD_OUT_METHOD,
    dp_audit: bool = True,
) -> PrivacyAudit:
    """The audit block for `model`, trained with `fit_config` on `members`; `non_members` it never saw.

    With `fit_config.dp_epsilon` (and `dp_audit`) the recipe is also audited
    with canaries drawn from the members (a separate training run of the same recipe).
    """
    attacks = audit_membership(
        model=model,
        make_model=make_model,
        members=members,
        non_members=non_members,
        fit_config=fit_config,
        config=config,
    )
    dp = None
    if dp_audit and fit_config.dp_epsilon is not None:
        dp = canary_audit(
            make_model=make_model,
            x=members[0],
            y=members[1],
            num_classes=num_classes,
            fit_config=fit_config,
            canaries=config.canaries,
            confidence=config.confidence,
            seed=config.seed,
        ).audit
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
        lines.append(
            f"{a.attack}: AUC {a.auc:.3f} [{a.auc_low:.3f}, {a.auc_high:.3f}], {tprs} "
            f"({a.members} members, {a.non_members} non-members{refs})"
        )
    if audit.dp is not None:
        d = audit.dp
        lines.append(
            f"DP audit: epsilon >= {d.epsilon_lower_bound:.3f} at {d.confidence:.0%} confidence "
            f"(claimed {d.claimed_epsilon:.3f}; {d.correct}/{d.guesses} guesses right, {d.canaries} canaries)"
        )
    return lines


def audit_folder(
    *,
    folder: str | os.PathLike,
    members: tuple[np.ndarray, np.ndarray],
    non_members: tuple[np.ndarray, np.ndarray],
    fit_config: FitConfig,
    config: AuditConfig,
    dp_audit: bool = True,
    write: bool = True,
) -> PrivacyAudit:
    """Audits the model in `folder` (card.json + model.safetensors, as `models.train` writes them).

    `members`/`non_members` are (x, y) arrays already shaped and normalised
    for the card. Reference models (and, for a card that claims DP and with
    `dp_audit`, the canary run) are trained with `fit_config`. With `write`,
    the audit replaces the one in card.json (written atomically; the
    artifacts and their digests are untouched).
    """
    from xfer.models.artifacts import CARD_NAME, SAFETENSORS_NAME
    from xfer.models.card import ModelCard, validate_card
    from xfer.models.files import write_json_atomic
    from xfer.models.weights import load_safetensors, model_from_card

    root = Path(folder)
    card_path = root / CARD_NAME
    try:
        data = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidCardError(f"cannot read {card_path}: {exc}") from None
    card = ModelCard.from_dict(data)
    model = load_safetensors(model_from_card(card), root / SAFETENSORS_NAME)

    def tensors(pair: tuple[np.ndarray, np.ndarray], what: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = pair
        if y is None:
            raise ValueError(f"the {what} need labels: membership inference scores the loss of the true label")
        if len(x) and tuple(x.shape[1:]) != tuple(card.input_shape):
            raise ValueError(f"the {what} have shape {list(x.shape[1:])}, the card needs {list(card.input_shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= card.num_classes):
            raise ValueError(f"the {what} have labels outside 0..{card.num_classes - 1}")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))

    audit = audit_trained_model(
        model=model,
        make_model=lambda: model_from_card(card),
        members=tensors(members, "members"),
        non_members=tensors(non_members, "non-members"),
        num_classes=card.num_classes,
        fit_config=fit_config,
        config=config,
        dp_audit=dp_audit,
        method="members and non-members given to python -m xfer.models.audit",
    )
    if write:
        updated = dataclasses.replace(card, audit=audit)
        validate_card(updated)
        data.update(updated.to_dict())
        write_json_atomic(card_path, data)
    return audit
