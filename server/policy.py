"""The publishing policy: which source models this server accepts, judged on their card's privacy.

`xfer-server --max-dp-epsilon X --require-audit --max-mia-auc Y` refuses
to publish a version that breaks a rule, with FAILED_PRECONDITION naming the
rule (ErrorInfo reason PUBLISH_POLICY, metadata `rule`), before any artifact
byte is stored. The card's DP claim and audit are what is judged: they are
signed with the card when the operator signs, so a client can check the
same numbers.
"""

from __future__ import annotations

import dataclasses
import math

from xfer.models.card import ModelCard
from xfer.server.errors import FailedPrecondition, Reason

RULES = ("max-dp-epsilon", "require-audit", "max-mia-auc")


@dataclasses.dataclass(frozen=True)
class PublishPolicy:
    """Rules every new version must meet; the default accepts everything."""

    #: Refuse versions not trained with DP, or with a larger claimed epsilon (or DP-audit lower bound).
    max_dp_epsilon: float | None = None
    #: Refuse versions whose card has no audit block with at least one membership attack.
    require_audit: bool = False
    #: Refuse versions whose strongest membership attack reached a higher AUC (and versions without an audit).
    max_mia_auc: float | None = None

    def __post_init__(self) -> None:
        if self.max_dp_epsilon is not None and not (math.isfinite(self.max_dp_epsilon) and self.max_dp_epsilon > 0):
            raise ValueError(f"max_dp_epsilon must be positive and finite, got {self.max_dp_epsilon}")
        if self.max_mia_auc is not None and not 0.5 <= self.max_mia_auc <= 1:
            raise ValueError(f"max_mia_auc must be in [0.5, 1] (0.5 is a blind guess), got {self.max_mia_auc}")

    @property
    def active(self) -> bool:
        """Whether any rule is set."""
        return self.max_dp_epsilon is not None or self.require_audit or self.max_mia_auc is not None

    def describe(self) -> str:
        """The rules in words, for the start-up log."""
        rules = []
        if self.max_dp_epsilon is not None:
            rules.append(f"DP epsilon <= {self.max_dp_epsilon:g}")
        if self.require_audit:
            rules.append("a membership-inference audit in the card")
        if self.max_mia_auc is not None:
            rules.append(f"membership-inference AUC <= {self.max_mia_auc:g}")
        return ", ".join(rules) or "none"


def _refuse(rule: str, message: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"publishing policy ({rule}): {message}",
        reason=Reason.PUBLISH_POLICY,
        field="header.card",
        metadata={"rule": rule},
    )


def enforce(policy: PublishPolicy, card: ModelCard) -> None:
    """Raises FailedPrecondition naming the first rule `card` breaks; NaN never passes a comparison."""
    audit = card.audit
    if policy.max_dp_epsilon is not None:
        limit = policy.max_dp_epsilon
        if card.dp_epsilon is None:
            raise _refuse(
                "max-dp-epsilon",
                f"this server publishes only models trained with DP at epsilon <= "
                f"{limit:g}, and the card claims no DP; train with `python -m xfer.models.train "
                f"--dp-epsilon {limit:g}`",
            )
        if not card.dp_epsilon <= limit:
            raise _refuse(
                "max-dp-epsilon",
                f"the card's DP epsilon {card.dp_epsilon:g} is above the server's limit "
                f"{limit:g}; train with a smaller --dp-epsilon",
            )
        bound = audit.epsilon_lower_bound if audit is not None else None
        if bound is not None and not bound <= limit:
            raise _refuse(
                "max-dp-epsilon",
                f"the card's DP audit measured epsilon >= {bound:g}, above the server's "
                f"limit {limit:g} (whatever the accountant claims)",
            )
    has_attacks = audit is not None and bool(audit.attacks)
    if policy.require_audit and not has_attacks:
        raise _refuse(
            "require-audit",
            "this server publishes only models whose card carries a membership-inference "
            "audit; train with `python -m xfer.models.train ... --audit`, or audit the folder with "
            "`python -m xfer.models.audit DIR --members ... --non-members ...`",
        )
    if policy.max_mia_auc is not None:
        if not has_attacks:
            raise _refuse(
                "max-mia-auc",
                f"this server publishes only models audited at membership-inference AUC <= "
                f"{policy.max_mia_auc:g}, and the card has no audit; run one with --audit",
            )
        assert audit is not None
        worst = max(audit.attacks, key=lambda a: a.auc if math.isfinite(a.auc) else math.inf)
        if not worst.auc <= policy.max_mia_auc:
            raise _refuse(
                "max-mia-auc",
                f"the {worst.attack} attack reached AUC {worst.auc:.3f}, above the server's "
                f"limit {policy.max_mia_auc:g}; train with DP (or a smaller epsilon) and audit again",
            )
