"""Self-pretraining on the client's unlabelled examples: objectives, the head left alone, DP, and the pipeline."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import cfg, changed, snapshot, tiny_model

from xfer.client.finetune.config import FinetuneConfig, PrivacyConfig, SelfPretrainConfig
from xfer.client.finetune.errors import FinetuneError, PrivacyError
from xfer.client.finetune.pipeline import adapt
from xfer.client.finetune.selfsup import Contrastive, MaskedReconstruction, pretext_pool, self_pretrain, split_privacy
from xfer.client.finetune.trainer import finetune


def test_masks_hide_whole_patches_at_the_asked_ratio():
    model = tiny_model()
    wrapper = MaskedReconstruction(model, example_shape=(1, 8, 8))
    mask = wrapper.mask(5, ratio=0.5, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert mask.shape == (5, 1, 8, 8) and set(mask.unique().tolist()) == {0.0, 1.0}
    # 8x8 on a 7-cell grid: 2x2-pixel patches, a 4x4 grid of them, half hidden in every example.
    assert (mask.flatten(1).mean(1) == 0.5).all()
    patches = mask.view(5, 4, 2, 4, 2)
    assert (patches == patches[:, :, :1, :, :1]).all()
    vector = MaskedReconstruction(model, example_shape=(10,))
    m = vector.mask(3, ratio=0.3, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert (m.sum(1) == 3).all()
    x = torch.randn(2, 1, 8, 8)
    full = torch.ones_like(x)
    assert MaskedReconstruction.loss(x, x, full) == 0
    assert MaskedReconstruction.loss(x + 1, x, mask[:2]) == pytest.approx(1.0)  # only hidden values count


def test_nt_xent_prefers_matching_views():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    same = Contrastive.loss(z, z + 0.01 * torch.randn(8, 16), temperature=0.5)
    shuffled = Contrastive.loss(z, z[torch.randperm(8)], temperature=0.5)
    assert same < shuffled
    wrapper = Contrastive(tiny_model(), example_shape=(1, 8, 8))
    x = torch.randn(4, 1, 8, 8)
    view = wrapper.augment(x, generator=torch.Generator().manual_seed(1))
    assert view.shape == x.shape and not torch.equal(view, x)


@pytest.mark.parametrize("objective", ["masked", "contrastive"])
def test_self_pretraining_trains_a_copy_of_the_body_only_and_lowers_its_loss(blur, objective):
    model = tiny_model()
    before = snapshot(model)
    pool = pretext_pool(blur)
    result = self_pretrain(
        model, data=pool, config=SelfPretrainConfig(steps=60, objective=objective, lr=3e-3), device="cpu", seed=0
    )
    assert result.steps_applied == 60 and result.bucket >= len(pool) > result.bucket // 2
    assert not changed(before, model)  # the pulled model is untouched
    moved = changed(before, result.model)
    assert moved and not any(name.startswith("head") for name in moved)  # the head takes no part
    assert result.losses[-1] < result.losses[0]
    hyper = result.hyperparameters()
    assert hyper["self_pretrain"] == objective and hyper["self_pretrain_bucket"] == str(result.bucket)
    assert str(len(pool)) not in hyper.values()


def test_masked_self_pretraining_runs_under_dp_and_leaves_the_rest_of_epsilon(small_blur):
    privacy = PrivacyConfig(epsilon=4.0)
    pool = pretext_pool(small_blur)
    result = self_pretrain(
        tiny_model(),
        data=pool,
        privacy=privacy,
        device="cpu",
        seed=0,
        config=SelfPretrainConfig(steps=20, objective="masked", epsilon_share=0.25),
    )
    assert result.privacy is not None and 0 < result.privacy.epsilon_spent <= 1.0 + 1e-6
    assert result.finetune_privacy is not None and result.finetune_privacy.epsilon == pytest.approx(3.0)
    assert result.finetune_privacy.delta == pytest.approx(result.privacy.delta)
    first, rest = split_privacy(PrivacyConfig(epsilon=2.0, delta=1e-5), share=0.5, bucket=1024)
    assert (first.epsilon, rest.epsilon, first.delta, rest.delta) == (1.0, 1.0, 5e-6, 5e-6)
    with pytest.raises(PrivacyError, match="use 'masked'"):
        self_pretrain(
            tiny_model(), data=pool, privacy=privacy, config=SelfPretrainConfig(steps=2, objective="contrastive")
        )
    with pytest.raises(PrivacyError, match="couples the examples"):
        FinetuneConfig(privacy=privacy, self_pretrain=SelfPretrainConfig(steps=2, objective="contrastive"))


def test_settings_are_checked():
    with pytest.raises(FinetuneError, match="objective"):
        SelfPretrainConfig(steps=5, objective="rotation")
    with pytest.raises(FinetuneError, match="mask_ratio"):
        SelfPretrainConfig(steps=5, mask_ratio=1.0)
    with pytest.raises(FinetuneError, match="steps"):
        SelfPretrainConfig(steps=0)


def test_adapt_self_pretrains_then_fine_tunes_and_reports_the_settings(small_blur, card):
    config = cfg(strategy="linear-probe", steps=10, self_pretrain=SelfPretrainConfig(steps=10))
    with pytest.raises(FinetuneError, match="unlabelled pool"):
        finetune(tiny_model(), train=small_blur.train, config=config, card=card)
    outcome = adapt(tiny_model(), target=small_blur, config=config, card=card)
    assert outcome.pretext is not None and outcome.pretext.steps_applied == 10
    assert outcome.result.steps_applied == 10
    hyper = outcome.to_run(run_id="r", model_version="models/m/versions/1").hyperparameters
    assert hyper["self_pretrain"] == "masked" and hyper["self_pretrain_steps"] == "10"
    assert "self-pretraining (masked)" in outcome.summary()


def test_adapt_under_dp_counts_both_parts_of_epsilon(small_blur, card):
    config = cfg(
        strategy="linear-probe",
        steps=10,
        privacy=PrivacyConfig(epsilon=4.0),
        self_pretrain=SelfPretrainConfig(steps=5, epsilon_share=0.5),
    )
    outcome = adapt(tiny_model(), target=small_blur, config=config, card=card)
    run = outcome.to_run(run_id="r", model_version="models/m/versions/1")
    spent = outcome.pretext.privacy.epsilon_spent + outcome.result.privacy.epsilon_spent
    assert run.privacy.epsilon_spent == pytest.approx(spent) and spent <= 4.0 + 1e-6
    assert run.hyperparameters["dp_target_epsilon"] == "4"
