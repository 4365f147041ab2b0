"""Privacy audits of trained weights: membership inference and one-run DP canary audits.

`import xfer.models.audit` is light (plain data and exact statistics); the
attacks, which train reference models with torch, live in
`xfer.models.audit.membership` and `xfer.models.audit.canary`, and
`python -m xfer.models.audit` audits a model folder.
"""

from xfer.models.audit.record import DpAudit, MembershipAttack, PrivacyAudit, TprAtFpr

__all__ = ["DpAudit", "MembershipAttack", "PrivacyAudit", "TprAtFpr"]
