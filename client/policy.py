"""The client's privacy policy for source models: what a model's card must attest before it is used.

    policy = ModelPolicy(max_epsilon=4, max_mia_auc=0.6)
    client.load_torch("fashion-convnet", policy=policy)   # PolicyError unless the card meets it
    xfer models --max-epsilon 4 --max-mia-auc 0.6          # lists only models that do
    xfer pull fashion-convnet --max-epsilon 4              # exit 16 (failed_precondition) if it does not

Judged on the card the server sends (and that a signed manifest covers, so
with `--require-signed` the numbers are the operator's). Plain data, no
torch: the edge client uses it.
"""

from __future__ import annotations

import dataclasses
import math

from xfer.errors import EXIT_CODES, XferError
from xfer.models.card import ModelCard


class PolicyError(XferError, ValueError):
    """A model whose card does not meet the client's stated privacy policy (CLI exit code 16)."""

    exit_code = EXIT_CODES["failed_precondition"]


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
    """Rules a source model's card must meet; the default accepts everything."""

    #: Only models trained with DP at this epsilon or below (the DP audit's lower bound counts too).
    max_epsilon: float | None = None
    #: Only audited models whose strongest membership attack reached at most this AUC.
    max_mia_auc: float | None = None
    #: Only models whose card carries a membership-inference audit.
    require_audit: bool = False

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and not (math.isfinite(self.max_epsilon) and self.max_epsilon > 0):
            raise ValueError(f"max_epsilon must be positive and finite, got {self.max_epsilon}")
        if self.max_mia_auc is not None and not 0.5 <= self.max_mia_auc <= 1:
            raise ValueError(f"max_mia_auc must be in [0.5, 1] (0.5 is a blind guess), got {self.max_mia_auc}")

    @property
    def active(self) -> bool:
        """Whether any rule is set."""
        return self.max_epsilon is not None or self.max_mia_auc is not None or self.require_audit

    def violations(self, card: ModelCard | None) -> list[str]:
        """Every rule `card` breaks, in words (empty: it meets the policy). NaN never passes a comparison."""
        if not self.active:
            return []
        if card is None:
            return ["the model has no card to judge"]
        problems = []
        audit = card.audit
        if self.max_epsilon is not None:
            if card.dp_epsilon is None:
                problems.append(f"not trained with DP (the policy asks for epsilon <= {self.max_epsilon:g})")
            elif not card.dp_epsilon <= self.max_epsilon:
                problems.append(f"DP epsilon {card.dp_epsilon:g} is above {self.max_epsilon:g}")
            bound = audit.epsilon_lower_bound if audit is not None else None
            if bound is not None and not bound <= self.max_epsilon:
                problems.append(f"its DP audit measured epsilon >= {bound:g}, above {self.max_epsilon:g}")
        has_attacks = audit is not None and bool(audit.attacks)
        if (self.require_audit or self.max_mia_auc is not None) and not has_attacks:
            problems.append("its card carries no membership-inference audit")
        elif self.max_mia_auc is not None and audit is not None:
            worst = max(audit.attacks, key=lambda a: a.auc if math.isfinite(a.auc) else math.inf)
            if not worst.auc <= self.max_mia_auc:
                problems.append(
                    f"membership-inference AUC {worst.auc:.3f} ({worst.attack}) is above {self.max_mia_auc:g}"
                )
        return problems

    def allows(self, card: ModelCard | None) -> bool:
        """Whether `card` meets every rule."""
        return not self.violations(card)

    def enforce(self, card: ModelCard | None, *, what: str) -> None:
        """Raises PolicyError listing every rule `card` (of model `what`) breaks."""
        problems = self.violations(card)
        if problems:
            raise PolicyError(
                f"{what} does not meet your privacy policy: {'; '.join(problems)}. Choose another "
                "model (`xfer models` with the same options lists those that do) or relax the policy"
            )
