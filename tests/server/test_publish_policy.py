"""The publishing policy, as a function of the card (the e2e test runs it through a real server)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tests.models.test_audit_record import make_audit, make_card
from xfer.server.errors import FailedPrecondition
from xfer.server.policy import PublishPolicy, enforce


def refusal(policy: PublishPolicy, card) -> str | None:
    try:
        enforce(policy, card)
    except FailedPrecondition as exc:
        assert exc.metadata["rule"] in str(exc)
        return exc.metadata["rule"]
    return None


def test_the_default_policy_accepts_everything():
    assert refusal(PublishPolicy(), make_card()) is None


def test_each_rule_names_itself():
    dp4 = make_card(dp_epsilon=4.0, dp_delta=1e-5, audit=make_audit(auc=0.55))
    assert refusal(PublishPolicy(max_dp_epsilon=4), dp4) is None
    assert refusal(PublishPolicy(max_dp_epsilon=2), dp4) == "max-dp-epsilon"
    assert refusal(PublishPolicy(max_dp_epsilon=8), make_card()) == "max-dp-epsilon"
    assert refusal(PublishPolicy(require_audit=True), make_card()) == "require-audit"
    assert refusal(PublishPolicy(require_audit=True), dp4) is None
    assert refusal(PublishPolicy(max_mia_auc=0.6), dp4) is None
    assert refusal(PublishPolicy(max_mia_auc=0.52), dp4) == "max-mia-auc"
    assert refusal(PublishPolicy(max_mia_auc=0.9), make_card()) == "max-mia-auc"


def test_a_dp_audit_that_disproves_the_limit_is_refused():
    card = make_card(dp_epsilon=1.0, dp_delta=1e-5, audit=make_audit(dp_bound=3.0))
    assert refusal(PublishPolicy(max_dp_epsilon=2), card) == "max-dp-epsilon"


def test_nan_never_passes():
    card = make_card(dp_epsilon=1.0, dp_delta=1e-5, audit=make_audit())
    nan_card = dataclasses.replace(card, dp_epsilon=math.nan)
    assert refusal(PublishPolicy(max_dp_epsilon=2), nan_card) == "max-dp-epsilon"


@pytest.mark.parametrize(
    "kwargs", [{"max_dp_epsilon": 0}, {"max_dp_epsilon": math.inf}, {"max_mia_auc": 0.3}, {"max_mia_auc": math.nan}]
)
def test_bad_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        PublishPolicy(**kwargs)
