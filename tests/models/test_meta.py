"""Episodes and meta-learned sources: the sampler, ProtoNet / FOMAML / Reptile, and what the card records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xfer import models
from xfer.models.card import ModelCard
from xfer.models.episodes import EpisodeError, EpisodeSampler, EpisodeShape
from xfer.models.meta import (
    MetaConfig,
    episodic_accuracy,
    inner_adapt,
    meta_train,
    prototype_logits,
    set_prototype_head,
    squared_distances,
)
from xfer.models.train import main, train_source_model


def test_episodes_have_disjoint_support_and_query_and_shuffled_labels():
    labels = np.repeat(np.arange(8), 30)
    sampler = EpisodeSampler(labels, shape=EpisodeShape(5, 2, 3), seed=0)
    orders = set()
    for _ in range(20):
        e = sampler.sample()
        assert len(e.support) == 10 and len(e.query) == 15 and not set(e.support) & set(e.query)
        assert e.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        # episode label j is original class e.classes[j], for support and query alike
        assert (labels[e.support] == e.classes[e.support_y]).all() and (labels[e.query] == e.classes[e.query_y]).all()
        orders.add(tuple(e.classes))
    assert len(orders) > 10  # classes and their order vary
    again = EpisodeSampler(labels, shape=EpisodeShape(5, 2, 3), seed=0).sample()
    first = EpisodeSampler(labels, shape=EpisodeShape(5, 2, 3), seed=0).sample()
    assert (again.support == first.support).all()  # seeded


def test_sampler_says_which_classes_are_too_small():
    labels = np.array([0] * 30 + [1] * 30 + [2] * 4)
    with pytest.raises(EpisodeError, match=r"3 classes with at least 8.*\{2: 4\}.*lower --ways"):
        EpisodeSampler(labels, shape=EpisodeShape(3, 5, 3), seed=0)
    EpisodeSampler(labels, shape=EpisodeShape(2, 5, 3), seed=0)  # two big classes are enough for 2 ways
    with pytest.raises(EpisodeError, match="at least 2 ways"):
        EpisodeShape(1, 1, 1)


def test_prototype_logits_are_negative_squared_distances_to_support_means():
    emb = torch.nn.Identity()
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    ys = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    logits = prototype_logits(emb, support=support, support_y=ys, query=query, ways=2)
    torch.testing.assert_close(logits, -torch.tensor([[0.0, 26.0], [26.0, 0.0]]))
    torch.testing.assert_close(squared_distances(query, query), torch.tensor([[0.0, 26.0], [26.0, 0.0]]))


def test_prototype_head_is_the_nearest_prototype_classifier():
    torch.manual_seed(0)
    model = models.create_model("mlp", in_features=4, hidden=[3], num_classes=2)
    x = torch.randn(40, 4)
    y = (x[:, 0] > 0).long().numpy()
    set_prototype_head(model, x=x, y=y)
    f = model.forward_features(x).detach()
    protos = torch.stack([f[torch.from_numpy(y == c)].mean(0) for c in (0, 1)])
    want = (-squared_distances(f, protos)).argmax(1)
    assert torch.equal(model(x).argmax(1), want)


def test_inner_adapt_trains_a_copy_only():
    torch.manual_seed(0)
    model = models.create_model("mlp", in_features=4, hidden=[3], num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    fast = inner_adapt(model, params, x=x, y=y, steps=3, lr=0.5)
    assert any(not torch.equal(fast[k], params[k]) for k in fast)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "maml"}, "unknown meta-learning method"),
        ({"method": "protonet", "episodes": 0}, "episodes"),
        ({"method": "reptile", "inner_lr": -1.0}, "inner_lr"),
        ({"method": "fomaml", "ways": 1}, "at least 2 ways"),
    ],
)
def test_meta_config_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaConfig(**kwargs)


def _blobs(seed: int, *, classes: int = 6, per_class: int = 40):
    """Clusters in 4 of 16 dimensions, loud noise in the other 12: an embedding has to learn which ones matter."""
    rng = np.random.default_rng(seed)
    centres = np.concatenate([rng.normal(0, 2, (classes, 4)), np.zeros((classes, 12))], axis=1)
    y = np.repeat(np.arange(classes), per_class)
    noise = np.concatenate([rng.normal(0, 0.5, (len(y), 4)), rng.normal(0, 2.5, (len(y), 12))], axis=1)
    return torch.from_numpy((centres[y] + noise).astype(np.float32)), y


@pytest.mark.parametrize(
    "method, settings",
    [
        ("protonet", {"episodes": 200, "inner_steps": 3, "inner_lr": 0.1}),
        ("fomaml", {"episodes": 200, "inner_steps": 3, "inner_lr": 0.1}),
        # Reptile moves θ only part of the way to each adapted φ: it needs more tasks and a bolder inner loop.
        pytest.param("reptile", {"episodes": 600, "inner_steps": 5, "inner_lr": 0.5}, marks=pytest.mark.slow),
    ],
)
def test_each_method_learns_episodes_of_held_out_examples(method, settings):
    torch.manual_seed(0)
    x, y = _blobs(0)
    config = MetaConfig(method=method, ways=3, shots=3, queries=5, lr=1e-2, meta_batch=2, **settings)
    classes = config.head_classes or 6
    model = models.create_model("mlp", in_features=16, hidden=[16], num_classes=classes)
    before, _ = episodic_accuracy(model, x=x[1::2], y=y[1::2], config=config, episodes=100)
    result = meta_train(model, x=x[::2], y=y[::2], config=config, heldout=(x[1::2], y[1::2]))
    assert result.heldout_episodes == 100 and result.heldout_accuracy > before + 0.1
    if method != "reptile":  # Reptile's logged loss is before adapting, at chance by design (shuffled labels)
        assert len(result.losses) >= 2 and result.losses[-1] < result.losses[0]


def test_maml_family_needs_a_head_per_way():
    model = models.create_model("mlp", in_features=16, hidden=[16], num_classes=6)
    x, y = _blobs(0)
    with pytest.raises(ValueError, match="3 outputs"):
        meta_train(model, x=x, y=y, config=MetaConfig(method="reptile", ways=3, shots=1, queries=1))


def test_meta_trained_sources_record_method_and_settings(tmp_path):
    for method in ("protonet", "reptile"):
        out = tmp_path / method
        result = train_source_model(
            out_dir=out,
            arch="convnet",
            config={"width": 8, "depth": 2},
            classes=range(5),
            meta=MetaConfig(method=method, episodes=8, shots=2, queries=2, meta_batch=2, inner_steps=1),
        )
        card = ModelCard.from_dict(json.loads((out / "card.json").read_text()))
        assert card.training_method == method and card.training_settings["ways"] == "5"
        assert f"meta-trained with {method}" in card.source_task and result.meta is not None
        if method == "protonet":
            assert card.label_names == ("0", "1", "2", "3", "4") and "distance" in card.training_settings
        else:
            assert card.label_names == () and card.num_classes == 5 and card.training_settings["inner_steps"] == "1"


def test_meta_refuses_dp_and_bad_shapes_on_the_command_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--meta", "protonet", "--dp-epsilon", "2"]) == 2
    assert "per-example clipping" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--meta", "protonet", "--classes", "0-2", "--ways", "5"]) == 2
    assert "lower --ways" in capsys.readouterr().err
