"""The client's privacy policy on cards (unit); the e2e test runs it through a real server."""

from __future__ import annotations

import pytest

from tests.models.test_audit_record import make_audit, make_card
from xfer.client.policy import ModelPolicy, PolicyError
from xfer.errors import EXIT_CODES


def test_policy_judges_epsilon_audit_and_auc():
    private = make_card(dp_epsilon=2.0, dp_delta=1e-5, audit=make_audit(auc=0.52))
    plain = make_card()
    policy = ModelPolicy(max_epsilon=4, max_mia_auc=0.6)
    assert policy.allows(private)
    assert not policy.allows(plain)
    assert any("not trained with DP" in v for v in policy.violations(plain))
    assert not ModelPolicy(max_mia_auc=0.51).allows(private)
    assert not ModelPolicy(require_audit=True).allows(make_card(dp_epsilon=1.0, dp_delta=1e-5))
    assert ModelPolicy().allows(plain) and ModelPolicy().allows(None)


def test_enforce_raises_policy_error_with_exit_code_16():
    with pytest.raises(PolicyError, match="not trained with DP") as info:
        ModelPolicy(max_epsilon=1).enforce(make_card(), what="m:1")
    assert info.value.exit_code == EXIT_CODES["failed_precondition"] == 16


def test_a_dp_audit_above_the_limit_fails_the_policy():
    card = make_card(dp_epsilon=1.0, dp_delta=1e-5, audit=make_audit(dp_bound=5.0))
    assert "measured epsilon" in " ".join(ModelPolicy(max_epsilon=4).violations(card))


@pytest.mark.parametrize("kwargs", [{"max_epsilon": -1}, {"max_mia_auc": 1.2}])
def test_bad_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        ModelPolicy(**kwargs)
