"""The model card on the wire: `ModelCard` <-> `xfer.v1.ModelCard`, once for client and server.

protobuf's Struct carries every number as a double; numbers that are
whole come back as ints, so a card read from the wire equals the card.json
it came from.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import json_format, struct_pb2

from xfer.models.audit.record import DpAudit, MembershipAttack, PrivacyAudit, TprAtFpr
from xfer.models.card import ModelCard, TaskHead
from xfer.models.errors import InvalidCardError
from xfer.v1 import model_pb2


def _plain_numbers(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    return value


def card_from_proto(pb: model_pb2.ModelCard) -> ModelCard:
    """The card a wire message describes; a contradictory privacy block raises InvalidCardError."""
    privacy = pb.source_privacy
    if not privacy.dp and (privacy.epsilon or privacy.delta):
        raise InvalidCardError(
            "source_privacy says dp=false but sets epsilon or delta; set dp=true with both, "
            "or leave epsilon and delta at 0"
        )
    return ModelCard(
        architecture=pb.architecture,
        architecture_config=_plain_numbers(json_format.MessageToDict(pb.architecture_config)),
        input_shape=tuple(int(s) for s in pb.input.shape),
        num_classes=int(pb.output.num_classes),
        blocks=tuple(pb.blocks),
        head=pb.head,
        input_dtype=pb.input.dtype or "float32",
        input_mean=tuple(pb.input.mean),
        input_std=tuple(pb.input.std),
        preprocessing=pb.input.preprocessing,
        label_names=tuple(pb.output.label_names),
        source_task=pb.source_task,
        dp_epsilon=privacy.epsilon if privacy.dp else None,
        dp_delta=privacy.delta if privacy.dp else None,
        license=pb.license,
        framework_versions=dict(pb.framework_versions),
        description=pb.description,
        tasks=tuple(
            TaskHead(
                name=t.name,
                num_classes=int(t.num_classes),
                label_names=tuple(t.label_names),
                loss_weight=float(t.loss_weight),
            )
            for t in pb.tasks
        ),
        training_method=pb.training_method,
        training_settings=dict(pb.training_settings),
        audit=audit_from_proto(pb.audit) if pb.HasField("audit") else None,
    )


def audit_from_proto(pb: model_pb2.PrivacyAudit) -> PrivacyAudit:
    """The audit block a wire message describes (checked with the rest of the card by validate_card)."""
    return PrivacyAudit(
        method=pb.method,
        date=pb.date,
        confidence=pb.confidence,
        tool_versions=dict(pb.tool_versions),
        attacks=tuple(
            MembershipAttack(
                attack=a.attack,
                auc=a.auc,
                auc_low=a.auc_low,
                auc_high=a.auc_high,
                members=int(a.members),
                non_members=int(a.non_members),
                reference_models=int(a.reference_models),
                tpr_at_fpr=tuple(
                    TprAtFpr(fpr=p.fpr, tpr=p.tpr, tpr_low=p.tpr_low, tpr_high=p.tpr_high) for p in a.tpr_at_fpr
                ),
            )
            for a in pb.attacks
        ),
        dp=DpAudit(
            method=pb.dp.method,
            canaries=int(pb.dp.canaries),
            guesses=int(pb.dp.guesses),
            correct=int(pb.dp.correct),
            confidence=pb.dp.confidence,
            delta=pb.dp.delta,
            epsilon_lower_bound=pb.dp.epsilon_lower_bound,
            claimed_epsilon=pb.dp.claimed_epsilon,
        )
        if pb.HasField("dp")
        else None,
    )


def audit_to_proto(audit: PrivacyAudit) -> model_pb2.PrivacyAudit:
    """The wire form of an audit block."""
    dp = audit.dp
    return model_pb2.PrivacyAudit(
        method=audit.method,
        date=audit.date,
        confidence=audit.confidence,
        tool_versions=dict(audit.tool_versions),
        attacks=[
            model_pb2.MembershipAttack(
                attack=a.attack,
                auc=a.auc,
                auc_low=a.auc_low,
                auc_high=a.auc_high,
                members=a.members,
                non_members=a.non_members,
                reference_models=a.reference_models,
                tpr_at_fpr=[
                    model_pb2.TprAtFpr(fpr=p.fpr, tpr=p.tpr, tpr_low=p.tpr_low, tpr_high=p.tpr_high)
                    for p in a.tpr_at_fpr
                ],
            )
            for a in audit.attacks
        ],
        dp=model_pb2.DpAudit(
            method=dp.method,
            canaries=dp.canaries,
            guesses=dp.guesses,
            correct=dp.correct,
            confidence=dp.confidence,
            delta=dp.delta,
            epsilon_lower_bound=dp.epsilon_lower_bound,
            claimed_epsilon=dp.claimed_epsilon,
        )
        if dp is not None
        else None,
    )


def card_to_proto(card: ModelCard) -> model_pb2.ModelCard:
    """The wire form of a card (its architecture config becomes a Struct)."""
    config = struct_pb2.Struct()
    # Through JSON, as to_dict() would do it (tuples become lists), without converting the whole card.
    config.update(json.loads(json.dumps(card.architecture_config)))
    return model_pb2.ModelCard(
        architecture=card.architecture,
        architecture_config=config,
        input=model_pb2.InputSpec(
            shape=list(card.input_shape),
            dtype=card.input_dtype,
            mean=list(card.input_mean),
            std=list(card.input_std),
            preprocessing=card.preprocessing,
        ),
        output=model_pb2.OutputSpec(num_classes=card.num_classes, label_names=list(card.label_names)),
        blocks=list(card.blocks),
        head=card.head,
        source_task=card.source_task,
        source_privacy=model_pb2.PrivacyGuarantee(
            dp=card.dp_epsilon is not None, epsilon=card.dp_epsilon or 0.0, delta=card.dp_delta or 0.0
        ),
        license=card.license,
        framework_versions=dict(card.framework_versions),
        description=card.description,
        tasks=[
            model_pb2.TaskHead(
                name=t.name,
                num_classes=t.num_classes,
                label_names=list(t.label_names),
                loss_weight=float(t.loss_weight),
            )
            for t in card.tasks
        ],
        training_method=card.training_method,
        training_settings=dict(card.training_settings),
        audit=audit_to_proto(card.audit) if card.audit is not None else None,
    )
