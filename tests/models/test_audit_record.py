"""The audit block of the card: plain data, validated, round-trips through card.json and the wire."""

from __future__ import annotations

import dataclasses
import math

import pytest

from xfer.models.audit.record import DpAudit, MembershipAttack, PrivacyAudit, TprAtFpr
from xfer.models.card import ModelCard, validate_card
from xfer.models.errors import InvalidCardError


def make_audit(*, auc: float = 0.55, dp_bound: float | None = 0.4) -> PrivacyAudit:
    attack = MembershipAttack(
        attack="rmia-offline",
        auc=auc,
        auc_low=max(0.0, auc - 0.05),
        auc_high=min(1.0, auc + 0.05),
        tpr_at_fpr=(
            TprAtFpr(fpr=0.01, tpr=0.02, tpr_low=0.01, tpr_high=0.04),
            TprAtFpr(fpr=0.001, tpr=0.0, tpr_low=0.0, tpr_high=0.003),
        ),
        members=1200,
        non_members=300,
        reference_models=2,
    )
    dp = (
        None
        if dp_bound is None
        else DpAudit(
            method="one-run",
            canaries=200,
            guesses=20,
            correct=15,
            confidence=0.95,
            delta=1e-5,
            epsilon_lower_bound=dp_bound,
            claimed_epsilon=4.0,
        )
    )
    return PrivacyAudit(
        method="held-out split",
        date="2026-12-01T04:36:13Z",
        attacks=(attack,),
        dp=dp,
        tool_versions={"torch": "2.13.0"},
    )


def make_card(**fields) -> ModelCard:
    return ModelCard(
        architecture="mlp",
        architecture_config={"in_features": 64, "hidden": [8], "num_classes": 3},
        input_shape=(64,),
        num_classes=3,
        blocks=("layer0", "head"),
        **fields,
    )


def test_a_card_with_an_audit_round_trips_through_card_json():
    card = make_card(dp_epsilon=4.0, dp_delta=1e-5, audit=make_audit())
    validate_card(card)
    assert ModelCard.from_dict(card.to_dict()) == card
    assert card.audit.max_auc == 0.55 and card.audit.epsilon_lower_bound == 0.4


def test_a_card_without_an_audit_keeps_its_old_form():
    card = make_card()
    assert "audit" not in card.to_dict()
    assert ModelCard.from_dict(card.to_dict()).audit is None


def test_the_audit_round_trips_through_the_wire():
    from xfer.models.card_proto import card_from_proto, card_to_proto

    card = make_card(dp_epsilon=4.0, dp_delta=1e-5, audit=make_audit())
    back = card_from_proto(card_to_proto(card))
    assert back == card
    assert card_from_proto(card_to_proto(make_card())).audit is None
    no_dp = make_card(audit=make_audit(dp_bound=None))
    assert card_from_proto(card_to_proto(no_dp)) == no_dp


def test_the_signed_manifest_covers_the_audit():
    from xfer.client import signing

    card = make_card(audit=make_audit())
    changed = dataclasses.replace(card, audit=make_audit(auc=0.51))
    one = signing.manifest_bytes(model="m", card=card, artifacts={})
    assert one != signing.manifest_bytes(model="m", card=changed, artifacts={})
    assert b'"audit"' in one and b'"auc":0.55' in one


def test_the_manifest_of_an_audited_card_survives_the_wire_and_the_catalog():
    """What the operator signs (card.json) is what a client recomputes from the wire (integral floats included)."""
    import json

    from xfer.client import signing
    from xfer.models.card_proto import card_from_proto, card_to_proto

    audit = make_audit()
    point = dataclasses.replace(audit.attacks[0].tpr_at_fpr[1], tpr=0.0, tpr_low=0.0)
    attack = dataclasses.replace(
        audit.attacks[0], auc=1.0, auc_low=0.9, auc_high=1.0, tpr_at_fpr=(audit.attacks[0].tpr_at_fpr[0], point)
    )
    card = make_card(dp_epsilon=4.0, dp_delta=1e-5, audit=dataclasses.replace(audit, attacks=(attack,)))
    signed = signing.manifest_bytes(model="m", card=card, artifacts={})
    stored = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))  # the catalog's card_json
    wire = card_from_proto(card_to_proto(stored))
    assert signing.manifest_bytes(model="m", card=wire, artifacts={}) == signed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"date": "yesterday"}, "RFC 3339"),
        ({"method": "bell\x07"}, "printable"),
        ({"attacks": (), "dp": None}, "at least one"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_audits_are_refused(change, message):
    audit = dataclasses.replace(make_audit(), **change)
    with pytest.raises(InvalidCardError, match=message):
        validate_card(make_card(audit=audit))


@pytest.mark.parametrize("auc", [math.nan, 1.5, -0.1])
def test_an_auc_outside_zero_one_or_nan_is_refused(auc):
    attack = dataclasses.replace(make_audit().attacks[0], auc=auc, auc_low=0.0, auc_high=1.0)
    with pytest.raises(InvalidCardError, match="auc"):
        validate_card(make_card(audit=dataclasses.replace(make_audit(), attacks=(attack,))))


def test_unknown_audit_keys_are_refused():
    data = make_card(audit=make_audit()).to_dict()
    data["audit"]["attacks"][0]["secret"] = 1
    with pytest.raises(InvalidCardError, match="unknown field"):
        ModelCard.from_dict(data)


def test_the_audit_block_and_the_client_policy_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, xfer.models.audit, xfer.models.card, xfer.client.policy, xfer.server.policy; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
