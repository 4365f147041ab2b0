"""The audit block of a model card: plain data (no torch), checked like every other card field.

A `PrivacyAudit` attests what an audit measured against the published
weights: membership-inference attacks (AUC and TPR at fixed FPRs, with
confidence intervals from the number of examples) and, for DP-trained
sources, a one-run canary audit's lower bound on epsilon. It travels in the
card (card.json, the wire's `ModelCard.audit`, the catalog) and so in the
signed manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from xfer.models.errors import InvalidCardError

#: Printable ASCII only: the audit's text is shown by `xfer show` and signed; no control characters.
_TEXT = re.compile(r"[ -~]{0,200}")
#: An RFC 3339 UTC timestamp, e.g. 2026-12-01T04:36:13Z.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
MAX_ATTACKS = 8
MAX_TPR_POINTS = 8


def _fail(message: str) -> InvalidCardError:
    return InvalidCardError(f"card audit: {message}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"{name} must be a number, got {value!r}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise _fail(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _unit(name: str, value: float, *, open_low: bool = False, open_high: bool = False) -> None:
    # `not (... )` so that NaN fails.
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        raise _fail(f"{name} must be in {'(' if open_low else '['}0, 1{')' if open_high else ']'}, got {value}")


def _text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not _TEXT.fullmatch(value):
        raise _fail(f"{name} must be printable ASCII text of at most 200 characters, got {str(value)[:40]!r}")


def _keys(data: Any, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise _fail(f"{where} must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise _fail(f"unknown field(s) {unknown} in {where}; valid: {sorted(names)}")
    return dict(data)


@dataclasses.dataclass(frozen=True)
class TprAtFpr:
    """True-positive rate of an attack while at most `fpr` of the non-members are flagged."""

    fpr: float
    tpr: float
    tpr_low: float
    tpr_high: float

    @classmethod
    def from_dict(cls, data: Any) -> TprAtFpr:
        """From card.json; every value is a number."""
        values = _keys(data, cls, "tpr_at_fpr")
        return cls(**{k: _number(f"tpr_at_fpr.{k}", values.get(k)) for k in ("fpr", "tpr", "tpr_low", "tpr_high")})

    def validate(self) -> None:
        """Raises InvalidCardError unless every rate is in [0, 1] and the interval holds the estimate."""
        _unit("tpr_at_fpr.fpr", self.fpr, open_low=True, open_high=True)
        for name in ("tpr", "tpr_low", "tpr_high"):
            _unit(f"tpr_at_fpr.{name}", getattr(self, name))
        if not self.tpr_low <= self.tpr <= self.tpr_high:
            raise _fail(f"tpr_at_fpr interval [{self.tpr_low}, {self.tpr_high}] does not hold tpr {self.tpr}")


@dataclasses.dataclass(frozen=True)
class MembershipAttack:
    """One membership-inference attack against the published weights."""

    #: "loss-threshold" or "rmia-offline" (see xfer.models.audit.membership).
    attack: str
    auc: float
    auc_low: float
    auc_high: float
    tpr_at_fpr: tuple[TprAtFpr, ...]
    members: int
    non_members: int
    #: Reference models the attack used (0 for the loss threshold).
    reference_models: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> MembershipAttack:
        """From card.json."""
        values = _keys(data, cls, "attack")
        try:
            points = tuple(TprAtFpr.from_dict(p) for p in values.get("tpr_at_fpr") or ())
        except TypeError:
            raise _fail("tpr_at_fpr must be a list") from None
        return cls(
            attack=values.get("attack", ""),
            auc=_number("auc", values.get("auc")),
            auc_low=_number("auc_low", values.get("auc_low")),
            auc_high=_number("auc_high", values.get("auc_high")),
            tpr_at_fpr=points,
            members=_count("members", values.get("members")),
            non_members=_count("non_members", values.get("non_members")),
            reference_models=_count("reference_models", values.get("reference_models", 0)),
        )

    def validate(self) -> None:
        """Raises InvalidCardError naming the field that is wrong."""
        _text("attack", self.attack)
        if not self.attack:
            raise _fail("attack must name the attack, e.g. 'loss-threshold'")
        for name in ("auc", "auc_low", "auc_high"):
            _unit(name, getattr(self, name))
        if not self.auc_low <= self.auc <= self.auc_high:
            raise _fail(f"AUC interval [{self.auc_low}, {self.auc_high}] does not hold the AUC {self.auc}")
        if self.members < 1 or self.non_members < 1 or self.reference_models < 0:
            raise _fail("an attack needs at least one member and one non-member")
        if len(self.tpr_at_fpr) > MAX_TPR_POINTS:
            raise _fail(f"at most {MAX_TPR_POINTS} tpr_at_fpr points")
        for point in self.tpr_at_fpr:
            point.validate()


@dataclasses.dataclass(frozen=True)
class DpAudit:
    """A one-run canary audit (Steinke, Nasr & Jagielski 2023) of the DP training that made the weights."""

    method: str
    canaries: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    epsilon_lower_bound: float
    #: The accountant's epsilon the audit is compared with.
    claimed_epsilon: float

    @classmethod
    def from_dict(cls, data: Any) -> DpAudit:
        """From card.json."""
        values = _keys(data, cls, "dp")
        return cls(
            method=values.get("method", ""),
            canaries=_count("canaries", values.get("canaries")),
            guesses=_count("guesses", values.get("guesses")),
            correct=_count("correct", values.get("correct")),
            confidence=_number("confidence", values.get("confidence")),
            delta=_number("dp.delta", values.get("delta")),
            epsilon_lower_bound=_number("epsilon_lower_bound", values.get("epsilon_lower_bound")),
            claimed_epsilon=_number("claimed_epsilon", values.get("claimed_epsilon")),
        )

    def validate(self) -> None:
        """Raises InvalidCardError naming the field that is wrong."""
        _text("dp.method", self.method)
        if not 0 <= self.correct <= self.guesses <= self.canaries or self.canaries < 1:
            raise _fail("dp audit needs 0 <= correct <= guesses <= canaries and at least one canary")
        _unit("dp.confidence", self.confidence, open_low=True, open_high=True)
        _unit("dp.delta", self.delta, open_high=True)
        for name in ("epsilon_lower_bound", "claimed_epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise _fail(f"dp.{name} must be a finite number >= 0, got {value}")


@dataclasses.dataclass(frozen=True)
class PrivacyAudit:
    """What was measured about the weights' privacy, when, and with which tools."""

    #: How members and non-members were chosen, e.g. "held-out split of the source pool".
    method: str
    #: RFC 3339 UTC time of the audit.
    date: str
    attacks: tuple[MembershipAttack, ...] = ()
    dp: DpAudit | None = None
    #: Confidence level of every interval and of the epsilon lower bound.
    confidence: float = 0.95
    tool_versions: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, as in card.json."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Any) -> PrivacyAudit:
        """From card.json (the `audit` object), rejecting unknown keys."""
        values = _keys(data, cls, "audit")
        try:
            attacks = tuple(MembershipAttack.from_dict(a) for a in values.get("attacks") or ())
            versions = dict(values.get("tool_versions") or {})
        except InvalidCardError:
            raise
        except (TypeError, ValueError):
            raise _fail("attacks must be a list and tool_versions an object") from None
        dp = values.get("dp")
        return cls(
            method=values.get("method", ""),
            date=values.get("date", ""),
            attacks=attacks,
            dp=DpAudit.from_dict(dp) if dp is not None else None,
            confidence=_number("confidence", values.get("confidence", 0.95)),
            tool_versions=versions,
        )

    def validate(self) -> None:
        """Raises InvalidCardError naming the field that is wrong."""
        _text("method", self.method)
        if not isinstance(self.date, str) or not _DATE.fullmatch(self.date):
            raise _fail(f"date must be an RFC 3339 time such as 2026-12-01T04:36:13Z, got {str(self.date)[:40]!r}")
        if not self.attacks and self.dp is None:
            raise _fail("an audit needs at least one membership attack or a DP audit")
        if len(self.attacks) > MAX_ATTACKS:
            raise _fail(f"at most {MAX_ATTACKS} attacks")
        for attack in self.attacks:
            attack.validate()
        if self.dp is not None:
            self.dp.validate()
        _unit("confidence", self.confidence, open_low=True, open_high=True)
        if len(self.tool_versions) > 16:
            raise _fail("at most 16 tool_versions")
        for key, value in self.tool_versions.items():
            _text("tool_versions", key)
            _text("tool_versions", value)

    @property
    def max_auc(self) -> float | None:
        """The highest AUC any attack reached (the strongest attack decides), or None without attacks."""
        return max((a.auc for a in self.attacks), default=None)

    @property
    def epsilon_lower_bound(self) -> float | None:
        """The DP audit's measured lower bound on epsilon, or None."""
        return self.dp.epsilon_lower_bound if self.dp is not None else None
