"""Source-free strategies through the engine: what each one trains, what it refuses, how it stays label-free."""

from __future__ import annotations

import math

import pytest
import torch
from finetune_helpers import cfg, changed, snapshot, tiny_model

from xfer.client.finetune import PrivacyConfig, finetune
from xfer.client.finetune.data import TargetData, TensorData, load_target
from xfer.client.finetune.errors import DataError, DPUnsupportedError, FinetuneError, PrivacyError, StrategyError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.sfda import adapt_source_free
from xfer.client.finetune.sfda_strategies import SOURCE_FREE, Shot, Tent, normalisation_affines
from xfer.client.finetune.strategies import get_strategy
from xfer.errors import EXIT_CODES
from xfer.models import create_model


@pytest.fixture(scope="module")
def unlabelled(session_card) -> TargetData:
    """digits under a strong blur, training and validation labels hidden (test keeps them for scoring)."""
    return load_target("digits:shift=blur,severity=5,unlabeled", card=session_card, seed=0)


def run(model, card, data, strategy, **fields):
    return adapt_source_free(
        model,
        train=data.train,
        val=data.val,
        card=card,
        label_names=data.label_names,
        config=cfg(strategy=strategy, **{"steps": 6, "batch_size": 32, **fields}),
    )


def test_unlabelled_spec_hides_train_and_val_labels(unlabelled):
    assert unlabelled.train.y is None and unlabelled.val.y is None and unlabelled.test.y is not None


def test_tent_trains_only_normalisation_affines(model, card, unlabelled):
    before = snapshot(model)
    result = run(model, card, unlabelled, "tent")
    moved = changed(before, result.model)
    affines = {name for name, _ in normalisation_affines(model)}
    assert moved and moved <= affines  # everything else (convs, head) is bit-identical
    assert {n for n in affines if n.endswith(".weight")} & moved  # scales move, not only shifts
    assert not changed(before, model)  # the caller's model is untouched
    assert result.steps_applied == 6 and result.hyperparameters["labels"] == "none"


@pytest.mark.parametrize(
    "arch, config, kinds",
    [
        ("convnet", {"width": 8, "depth": 2}, {"GroupNorm"}),
        ("vit_tiny", {"image_size": 8, "patch_size": 4, "dim": 16, "depth": 1, "heads": 2}, {"LayerNorm"}),
        ("efficientnet_lite", {"image_size": 32, "num_classes": 3}, {"ChannelAffine"}),
    ],
)
def test_normalisation_affines_per_architecture(arch, config, kinds):
    model = create_model(arch, **config)
    found = normalisation_affines(model)
    modules = dict(model.named_modules())
    assert found and {type(modules[name.rsplit(".", 1)[0]]).__name__ for name, _ in found} == kinds
    head = {id(p) for p in model.head_layer.parameters()}
    assert not head & {id(p) for _, p in found}


def test_tent_on_efficientnet_touches_only_the_folded_affines():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite", image_size=32, num_classes=3, drop_rate=0.0)
    x = torch.randn(12, 3, 32, 32)
    data = TensorData(x, None, torch.arange(12))
    before = snapshot(model)
    result = adapt_source_free(model, train=data, config=cfg(strategy="tent", steps=2, batch_size=6))
    moved = changed(before, result.model)
    affines = {name for name, _ in normalisation_affines(model)}
    assert moved and moved <= affines and any(".bn" in n for n in moved)


def test_tent_refuses_a_model_without_normalisation(unlabelled):
    mlp = create_model("mlp", in_features=64, hidden=[16])
    data = TensorData(unlabelled.train.x.reshape(len(unlabelled.train), -1), None, unlabelled.train.index)
    with pytest.raises(StrategyError, match="normalisation layers.*shot, aad or nrc"):
        adapt_source_free(mlp, train=data, config=cfg(strategy="tent", steps=2))


def test_tent_resets_to_the_source_every_reset_every_steps(model, card, unlabelled):
    base = dict(strategy=Tent(reset_every=4), steps=6, batch_size=32)
    reset = adapt_source_free(model, train=unlabelled.train, card=card, config=cfg(**base))
    assert reset.label_free["resets"] == 1
    # After the reset at step 4 the last two steps start again from the source weights.
    never = adapt_source_free(
        model, train=unlabelled.train, card=card, config=cfg(**{**base, "strategy": Tent(reset_every=None)})
    )
    assert never.label_free["resets"] == 0

    def drift(adapted):
        return sum(float((p - q).detach().abs().sum()) for p, q in zip(adapted.parameters(), model.parameters()))

    assert drift(reset.model) < drift(never.model)


def test_tent_default_budget_is_one_pass_and_never_past_a_reset(model, card, unlabelled):
    result = adapt_source_free(model, train=unlabelled.train, card=card, config=cfg(strategy="tent"))
    b = result.budget
    assert b.steps == math.ceil(b.bucket / b.batch_size) == result.steps_applied
    assert result.label_free["resets"] == 0


def test_shot_keeps_the_classifier_bit_identical(model, card, unlabelled):
    before = snapshot(model)
    result = run(model, card, unlabelled, "shot")
    moved = changed(before, result.model)
    assert moved and not any(name.startswith("head.") for name in moved)
    assert torch.equal(result.model.head.weight, model.head.weight)
    assert torch.equal(result.model.head.bias, model.head.bias)
    assert any(name.startswith("stem.") for name in moved)  # the whole feature extractor trains


def test_shot_recomputes_pseudo_labels_every_pass_with_the_current_model(model, card, unlabelled, monkeypatch):
    import xfer.client.finetune.sfda_strategies as sfda_strategies

    seen = []
    original = sfda_strategies.centroid_pseudo_labels

    def spy(features, probs, **kw):
        seen.append(features.clone())
        return original(features, probs, **kw)

    monkeypatch.setattr(sfda_strategies, "centroid_pseudo_labels", spy)
    n = len(unlabelled.train)
    batch = 128
    steps = 2 * math.ceil(n / batch) + 1  # three passes begin
    result = run(model, card, unlabelled, "shot", steps=steps, batch_size=batch)
    assert len(seen) == 3 == result.label_free["pseudo_label_refreshes"]
    # Each refresh reads the features of the model as trained so far, not the source's.
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_aad_and_nrc_train_everything_from_a_bank(model, card, unlabelled):
    for name in ("aad", "nrc"):
        before = snapshot(model)
        result = run(model, card, unlabelled, name)
        moved = changed(before, result.model)
        assert any(n.startswith("head.") for n in moved) and any(n.startswith("stem.") for n in moved)
        assert math.isfinite(result.history[-1].train_loss)


@pytest.mark.parametrize("name", ["shot", "aad", "nrc"])
def test_dp_is_refused_for_losses_that_are_not_per_example(model, card, unlabelled, name):
    with pytest.raises(DPUnsupportedError) as info:
        run(model, card, unlabelled, name, privacy=PrivacyConfig(epsilon=2.0))
    message = str(info.value)
    assert name in message and "per-example" in message and "tent" in message
    reason = {"shot": "diversity term", "aad": "bank", "nrc": "bank"}[name]
    assert reason in message
    assert info.value.exit_code == EXIT_CODES["invalid_argument"] == 3
    assert isinstance(info.value, PrivacyError)


def test_tent_runs_under_dp_with_the_ledger(model, card, unlabelled, tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    before = snapshot(model)
    result = adapt_source_free(
        model,
        train=unlabelled.train,
        val=unlabelled.val,
        card=card,
        label_names=unlabelled.label_names,
        ledger=ledger,
        dataset_id="digits-target",
        config=cfg(strategy="tent", steps=4, privacy=PrivacyConfig(epsilon=3.0, accountant="rdp")),
    )
    assert result.privacy is not None and 0 < result.privacy.epsilon_spent <= 3.0 + 1e-9
    assert result.privacy.steps == 4
    assert ledger.status("digits-target").spent == pytest.approx(result.privacy.epsilon_spent)
    assert changed(before, result.model) <= {name for name, _ in normalisation_affines(model)}


def test_ghost_clipping_is_refused_for_tent(model, card, unlabelled):
    with pytest.raises(PrivacyError, match="ghost-clipping"):
        run(model, card, unlabelled, "tent", privacy=PrivacyConfig(epsilon=2.0, ghost_clipping=True))


@pytest.mark.parametrize("strategy", ["lp-ft", "linear-probe", "full"])
def test_supervised_strategies_on_unlabelled_data_name_the_source_free_ones(model, card, unlabelled, strategy):
    with pytest.raises(DataError) as info:
        finetune(
            model,
            train=unlabelled.train,
            val=unlabelled.val,
            card=card,
            label_names=unlabelled.label_names,
            config=cfg(strategy=strategy, steps=2),
        )
    assert all(name in str(info.value) for name in SOURCE_FREE) and strategy in str(info.value)


def test_finetune_dispatches_source_free_strategies(model, card, unlabelled):
    result = finetune(
        model,
        train=unlabelled.train,
        val=unlabelled.val,
        card=card,
        label_names=unlabelled.label_names,
        config=cfg(strategy="shot", steps=3, batch_size=32),
    )
    assert result.strategy == "shot" and result.steps_applied == 3 and result.val_metrics is None


def test_labels_given_to_a_source_free_run_are_never_read(model, card, session_card):
    labelled = load_target("digits:shift=blur", card=session_card, seed=0)
    wrong = TensorData(labelled.train.x, torch.full_like(labelled.train.y, 10_000), labelled.train.index)
    wrong_val = TensorData(labelled.val.x, torch.full_like(labelled.val.y, -3), labelled.val.index)
    a = adapt_source_free(
        model, train=labelled.train, val=labelled.val, card=card, config=cfg(strategy="shot", steps=4, batch_size=32)
    )
    b = adapt_source_free(
        model, train=wrong, val=wrong_val, card=card, config=cfg(strategy="shot", steps=4, batch_size=32)
    )
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), name
    assert a.label_free == b.label_free


def test_source_free_keeps_the_source_classes(model, card, session_card):
    other = load_target("digits:classes=5-9,unlabeled", card=session_card, seed=0)
    with pytest.raises(DataError, match="share the source's classes"):
        adapt_source_free(
            model, train=other.train, card=card, label_names=other.label_names, config=cfg(strategy="shot", steps=2)
        )
    with pytest.raises(StrategyError, match="reinit-head"):
        adapt_source_free(model, train=other.train, card=card, config=cfg(strategy="shot", steps=2, reinit_head=True))


def test_checkpoint_is_the_best_label_free_score(model, card, unlabelled):
    result = run(model, card, unlabelled, "shot", steps=12, eval_every=3, criterion="im")
    scores = [r.label_free["im"] for r in result.history]
    best = max(range(len(scores)), key=scores.__getitem__)
    assert result.best_step == result.history[best].step == int(result.hyperparameters["checkpoint_step"])
    assert result.label_free["best"]["im"] == scores[best]
    assert set(result.history[0].label_free) == {"im", "snd", "entropy"}


def test_patience_stops_on_the_label_free_criterion(model, card, unlabelled):
    # A huge LR wrecks the features: the criterion stops improving and the run stops early.
    result = run(model, card, unlabelled, "shot", steps=60, eval_every=2, lr=3.0, patience=2, schedule="constant")
    assert result.steps_applied < 60
    with pytest.raises(FinetuneError, match="validation split"):
        adapt_source_free(model, train=unlabelled.train, card=card, config=cfg(strategy="shot", steps=4, patience=2))


def test_every_source_free_strategy_is_registered():
    for name in SOURCE_FREE:
        assert get_strategy(name).name == name
    assert isinstance(get_strategy("shot"), Shot)
    assert Shot().cls_weight == 0.3 and Shot().im_weight == 1.0
    with pytest.raises(StrategyError):
        Tent(reset_every=0)


def test_source_free_converges_on_the_tiny_task(card, session_card):
    """A weak source (trained on clean digits) gains accuracy on blurred digits from SHOT, without labels."""
    clean = load_target("digits", card=session_card, seed=0)
    source = finetune(
        tiny_model(),
        train=clean.train,
        val=clean.val,
        card=card,
        label_names=clean.label_names,
        config=cfg(strategy="full", steps=150, lr=3e-3),
    ).model
    target = load_target("digits:shift=blur,severity=5,unlabeled", card=session_card, seed=0)
    from xfer.client.finetune.metrics import evaluate

    before = evaluate(source, target.test.x, target.test.y, label_names=target.label_names).accuracy
    after = adapt_source_free(
        source, train=target.train, val=target.val, card=card, config=cfg(strategy="shot", steps=100)
    ).model
    gained = evaluate(after, target.test.x, target.test.y, label_names=target.label_names).accuracy
    assert gained > before
