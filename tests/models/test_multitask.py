"""Multi-task sources: --tasks parsing, the card's heads (file, wire, server-side checks), select_head, training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from xfer import models
from xfer.models.card import ModelCard, TaskHead, validate_card
from xfer.models.card_proto import card_from_proto, card_to_proto
from xfer.models.errors import InvalidCardError
from xfer.models.multitask import (
    MultiHeadNet,
    attach_task_heads,
    multitask_loss,
    parse_tasks,
    select_head,
    task_targets,
    used_classes,
)
from xfer.models.train import train_source_model
from xfer.models.weights import load_safetensors, model_from_card, save_safetensors, tensor_specs

NAMES = tuple(str(i) for i in range(10))


def test_parse_tasks_reads_lists_groups_labels_and_weights():
    tasks = parse_tasks("items=0-4; parity=even:0,2,4|odd:1,3@0.5", label_names=NAMES)
    assert [t.name for t in tasks] == ["items", "parity"]
    assert tasks[0].groups == ((0,), (1,), (2,), (3,), (4,)) and tasks[0].label_names == NAMES[:5]
    assert tasks[0].weight == 1.0
    assert tasks[1].groups == ((0, 2, 4), (1, 3)) and tasks[1].label_names == ("even", "odd")
    assert tasks[1].weight == 0.5
    unnamed = parse_tasks("a=0,1;b=0,1|2,3", label_names=NAMES)[1]
    assert unnamed.label_names == ("0+1", "2+3")
    assert used_classes(tasks) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "text, message",
    [
        ("items=0-4", "at least two tasks"),
        ("Items=0-4;b=1,2", "must match"),
        ("a=0-4;a=1,2", "names must differ"),
        ("a=0-4;b=1", "at least two"),
        ("a=0-4;b=1,1", "appears twice"),
        ("a=0-4;b=0,1|1,2", "appears twice"),
        ("a=0-4;b=3,12", "classes must be 0-9"),
        ("a=0-4;b=1,2@heavy", "not a number"),
        ("a=0-4;b=1,2@-1", ">= 0"),
        ("a=0-4@0;b=1,2@0", "weight 0"),
        ("a=0-4;b", "NAME=CLASSES"),
    ],
)
def test_parse_tasks_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tasks(text, label_names=NAMES)


def test_task_targets_mark_unlisted_classes_minus_one():
    tasks = parse_tasks("items=0-2;pair=x:0,3|y:1", label_names=NAMES)
    targets = task_targets(np.array([0, 1, 2, 3, 4]), tasks)
    assert targets.tolist() == [[0, 0], [1, 1], [2, -1], [-1, 0], [-1, -1]]


def test_multitask_loss_is_the_weighted_sum_of_task_losses_when_every_task_labels_every_example():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    targets = torch.tensor([[0, 1], [1, 0], [2, 1], [0, 0], [1, 1], [2, 0]])
    got = multitask_loss(logits, targets, sizes=[3, 2], weights=[1.0, 0.25])
    want = torch.nn.functional.cross_entropy(logits[:, :3], targets[:, 0]) + 0.25 * torch.nn.functional.cross_entropy(
        logits[:, 3:], targets[:, 1]
    )
    torch.testing.assert_close(got, want)
    # An unlabelled task contributes nothing for that example.
    masked = targets.clone()
    masked[0, 1] = -1
    per_example = torch.nn.functional.cross_entropy(logits[0:1, 3:], targets[0:1, 1], reduction="sum")
    torch.testing.assert_close(
        multitask_loss(logits, masked, sizes=[3, 2], weights=[1.0, 0.25]), got - 0.25 * per_example / 6
    )


@pytest.fixture
def multitask_card():
    model = models.create_model("convnet", width=8, depth=2, num_classes=3)
    heads = (TaskHead("items", 3, ("a", "b", "c")), TaskHead("coarse", 2, ("x", "y"), 0.5))
    return models.card_for_model(
        model, label_names=("a", "b", "c"), tasks=heads, training_method="multitask", training_settings={"epochs": "1"}
    )


def test_card_with_heads_round_trips_through_json_and_the_wire(multitask_card):
    validate_card(multitask_card)
    again = ModelCard.from_dict(json.loads(json.dumps(multitask_card.to_dict())))
    assert again == multitask_card and isinstance(again.tasks[1], TaskHead)
    assert card_from_proto(card_to_proto(multitask_card)) == multitask_card
    assert multitask_card.task("coarse").num_classes == 2
    with pytest.raises(InvalidCardError, match="no head 'fine'.*items, coarse"):
        multitask_card.task("fine")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks": (TaskHead("items", 3, ("a", "b", "c")),)}, "2 to 16"),
        ({"tasks": (TaskHead("items", 3, ("a", "b", "c")), TaskHead("items", 2))}, "distinct"),
        ({"tasks": (TaskHead("items", 3, ("a", "b", "c")), TaskHead("Bad.name", 2))}, "must match"),
        ({"tasks": (TaskHead("items", 3, ("a", "b", "c")), TaskHead("one", 1))}, ">= 2"),
        ({"tasks": (TaskHead("items", 3, ("a", "b", "c")), TaskHead("w", 2, (), float("nan")))}, "loss_weight"),
        ({"tasks": (TaskHead("items", 4), TaskHead("w", 2))}, "first task head"),
        ({"training_method": "Meta Learning"}, "training_method"),
        ({"training_method": "", "training_settings": {"ways": "5"}}, "need a training_method"),
        ({"training_settings": {"Bad Key": "1"}}, "key"),
    ],
)
def test_card_checks_heads_and_training(multitask_card, change, message):
    with pytest.raises(InvalidCardError, match=message):
        validate_card(dataclasses.replace(multitask_card, **change))


def test_old_cards_without_the_new_fields_still_load(multitask_card):
    data = multitask_card.to_dict()
    for key in ("tasks", "training_method", "training_settings"):
        data.pop(key)
    card = ModelCard.from_dict(data)
    assert card.tasks == () and card.training_method == "" and card.training_settings == {}
    with pytest.raises(InvalidCardError, match="unknown task head field"):
        ModelCard.from_dict({**multitask_card.to_dict(), "tasks": [{"name": "a", "num_classes": 2, "x": 1}] * 2})


def test_model_from_card_attaches_the_extra_heads_and_loads_strictly(tmp_path, multitask_card):
    model = model_from_card(multitask_card)
    specs = tensor_specs(model)  # what the server checks an upload against
    assert specs["task_heads.coarse.weight"] == ("F32", (2, model.feature_dim))
    assert "task_heads.items.weight" not in specs  # the first head is the architecture's own
    save_safetensors(model, tmp_path / "w.safetensors")
    again = load_safetensors(model_from_card(multitask_card), tmp_path / "w.safetensors")
    torch.testing.assert_close(again.task_heads["coarse"].weight, model.task_heads["coarse"].weight)
    single = dataclasses.replace(multitask_card, tasks=(), training_method="", training_settings={})
    with pytest.raises(Exception, match="unexpected"):
        load_safetensors(model_from_card(single), tmp_path / "w.safetensors")
    assert model.block_of_parameter()["task_heads.coarse.weight"] == "head"


def test_select_head_gives_a_plain_model_and_leaves_the_source_alone(multitask_card):
    torch.manual_seed(0)
    model = model_from_card(multitask_card)
    x = torch.randn(4, 1, 8, 8)
    chosen = select_head(model, card=multitask_card, head="coarse")
    assert chosen.head == "coarse" and not hasattr(chosen.model, "task_heads")
    torch.testing.assert_close(chosen.model(x), model.task_heads["coarse"](model.forward_features(x)))
    assert chosen.card.num_classes == 2 and chosen.card.label_names == ("x", "y") and chosen.card.tasks == ()
    validate_card(chosen.card)
    model_from_card(chosen.card)  # the selected card describes the selected module
    assert hasattr(model, "task_heads") and model.num_classes == 3  # the source is untouched
    first = select_head(model, card=multitask_card)
    assert first.head == "items" and first.model.num_classes == 3
    torch.testing.assert_close(first.model(x), model(x))
    plain = models.create_model("convnet", width=8, depth=2, num_classes=3)
    assert select_head(plain, card=None).model is plain
    with pytest.raises(InvalidCardError, match="single head"):
        select_head(plain, card=None, head="coarse")
    with pytest.raises(InvalidCardError, match="no head"):
        select_head(model, card=multitask_card, head="fine")


def test_training_with_tasks_writes_every_head_to_card_and_weights(tmp_path):
    result = train_source_model(
        out_dir=tmp_path,
        arch="convnet",
        config={"width": 8, "depth": 2},
        epochs=2,
        seed=0,
        tasks="items=0-4;parity=even:0,2,4,6,8|odd:1,3,5,7,9@0.5",
    )
    card = ModelCard.from_dict(json.loads((tmp_path / "card.json").read_text()))
    assert card.training_method == "multitask" and [t.name for t in card.tasks] == ["items", "parity"]
    assert card.tasks[1].loss_weight == 0.5 and card.label_names == ("0", "1", "2", "3", "4")
    assert "parity" in card.source_task
    model = load_safetensors(model_from_card(card), tmp_path / "model.safetensors")
    assert set(result.task_accuracies) == {"items", "parity"}
    assert result.task_accuracies["items"] > 0.5 and result.task_accuracies["parity"] > 0.6  # chance: 0.2, 0.5
    assert result.test_accuracy == result.task_accuracies["items"]
    wrapped = MultiHeadNet(model)
    assert wrapped(torch.randn(2, 1, 8, 8)).shape == (2, 5 + 2)


def test_multitask_training_runs_under_dp(tmp_path):
    result = train_source_model(out_dir=tmp_path, arch="mlp", epochs=1, dp_epsilon=4.0, seed=0, tasks="a=0-4;b=5-9")
    assert 0 < result.dp_epsilon <= 4.0 + 1e-6
    assert result.card.private and len(result.card.tasks) == 2


def test_tasks_refuse_classes_and_meta(tmp_path):
    from xfer.models.meta import MetaConfig

    with pytest.raises(ValueError, match="leave out --classes"):
        train_source_model(out_dir=tmp_path, tasks="a=0-4;b=5-9", classes=[0, 1])
    with pytest.raises(ValueError, match="choose one"):
        train_source_model(out_dir=tmp_path, tasks="a=0-4;b=5-9", meta=MetaConfig(method="protonet"))


def test_attach_task_heads_matches_the_head_device_and_width():
    model = models.create_model("mlp", hidden=[6])
    attach_task_heads(model, [TaskHead("x", 3)])
    assert model.task_heads["x"].in_features == model.feature_dim == 6


def test_single_head_cards_keep_their_old_dict_form_and_the_wire_numbers_leave_13_free(multitask_card):
    from xfer.v1 import model_pb2

    single = dataclasses.replace(multitask_card, tasks=(), training_method="", training_settings={})
    data = single.to_dict()
    assert not {"tasks", "training_method", "training_settings"} & set(data)  # signed manifests stay as before
    assert ModelCard.from_dict(data) == single
    assert {"tasks", "training_method", "training_settings"} <= set(multitask_card.to_dict())
    numbers = {f.name: f.number for f in model_pb2.ModelCard.DESCRIPTOR.fields}
    assert numbers["tasks"] == 12 and numbers["training_settings"] == 14 and numbers["training_method"] == 15
