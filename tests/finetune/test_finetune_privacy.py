"""DP-SGD: the accountant's ε, real clipping and noise, frozen layers free, incompatible layers named."""

from __future__ import annotations

import math

import pytest
import torch
from finetune_helpers import cfg, changed, snapshot

from xfer.client.finetune.budget import Budget, size_bucket
from xfer.client.finetune.errors import PrivacyError
from xfer.client.finetune.privacy import (
    DPPlan,
    PrivacyConfig,
    PrivateRun,
    default_delta,
    make_compatible,
    plan_dp,
)
from xfer.client.finetune.trainer import finetune


def dp_run(model, card, data, *, seed=0, strategy="full", steps=6, **privacy):
    # One (ε, δ, q, steps) for most tests: the σ solve is cached and shared across them.
    config = PrivacyConfig(**{"epsilon": 3.0, "accountant": "rdp", **privacy})
    return finetune(
        model,
        train=data.train,
        val=None,
        card=card,
        label_names=data.label_names,
        config=cfg(strategy=strategy, steps=steps, batch_size=64, privacy=config, seed=seed),
    )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_reported_epsilon_is_the_accountants(model, card, small_blur, accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    result = dp_run(model, card, small_blur, accountant=accountant)
    p = result.privacy
    n = len(small_blur.train)
    bucket = size_bucket(n)
    # Sample rate and δ come from the size bucket, never from n itself.
    assert p.sample_rate == pytest.approx(1 / math.ceil(bucket / 64))
    assert p.steps == 6
    assert p.delta == pytest.approx(min(1e-5, 1 / bucket**1.1))
    independent = {"rdp": RDPAccountant, "prv": PRVAccountant}[accountant]()
    independent.history = [(p.noise_multiplier, p.sample_rate, p.steps)]
    assert p.epsilon_spent == pytest.approx(independent.get_epsilon(delta=p.delta), rel=1e-9)
    # The noise was solved for the target: spent is at most the target, and close to it.
    assert 2.9 <= p.epsilon_spent <= 3.0 + 1e-6
    # Batches really are Poisson samples at that rate: n·q examples per step on average.
    expected = p.steps * n * p.sample_rate
    spread = math.sqrt(p.steps * n * p.sample_rate * (1 - p.sample_rate))
    assert abs(result.examples_seen - expected) < 5 * spread


def test_poisson_batches_vary_in_size(model, card, small_blur, monkeypatch):
    sizes: list[int] = []
    real = PrivateRun.poisson_batch

    def spy(self, generator):
        batch = real(self, generator)
        sizes.append(len(batch))
        return batch

    monkeypatch.setattr(PrivateRun, "poisson_batch", spy)
    dp_run(model, card, small_blur, strategy="linear-probe")
    assert len(set(sizes)) > 1 and len(sizes) == 6


@pytest.mark.parametrize(("strategy", "steps"), [("lp-ft", 6), ("gradual-unfreeze", 6), ("surgical:auto", 6)])
def test_every_accounted_step_is_an_applied_step(model, card, small_blur, strategy, steps):
    """Every phase composes in one accountant, and every noisy step it counts was applied (no RGN probes)."""
    from opacus.accountants import RDPAccountant

    result = dp_run(model, card, small_blur, strategy=strategy, steps=steps)
    p = result.privacy
    assert p.steps == steps == result.steps_applied
    independent = RDPAccountant()
    independent.history = [(p.noise_multiplier, p.sample_rate, p.steps)]
    assert p.epsilon_spent == pytest.approx(independent.get_epsilon(delta=p.delta), rel=1e-9)
    assert p.epsilon_spent <= 3.0 + 1e-6


def test_default_delta_is_a_function_of_the_bucket():
    assert default_delta(1024) == 1e-5
    assert default_delta(128) == 1e-5
    assert default_delta(131072) == pytest.approx(131072**-1.1)
    # Every n of a bucket gets the δ of the bucket: below 1/n^1.1 for all of them.
    assert all(default_delta(size_bucket(n)) <= n**-1.1 for n in range(65537, 131073, 997))


def test_a_delta_of_one_over_the_bucket_or_more_is_refused():
    budget = Budget(bucket=64, batch_size=16, steps=20, eval_every=10, lr=1e-3, sample_rate=0.25, max_grad_norm=1.0)
    for delta in (0.5, 1 / 64):
        with pytest.raises(PrivacyError, match=r"delta .* is not below 1/64 .*choose a delta below 0.0156"):
            plan_dp(PrivacyConfig(epsilon=2.0, delta=delta), budget=budget)
    assert plan_dp(PrivacyConfig(epsilon=2.0, delta=1e-3, accountant="rdp"), budget=budget).delta == 1e-3


def test_invalid_privacy_config():
    for epsilon in (0, 1e-9, 0.009, 101, 1e9, math.nan, math.inf):
        with pytest.raises(PrivacyError, match="epsilon must be between 0.01 and 100"):
            PrivacyConfig(epsilon=epsilon)
    with pytest.raises(PrivacyError, match="accountant"):
        PrivacyConfig(epsilon=1, accountant="gdp-ish")


def test_unreachable_epsilon_is_a_clear_error(monkeypatch):
    from opacus.accountants import utils

    def refuse(**kwargs):
        raise ValueError("The privacy budget is too low.")

    # The real search takes ~30 s to give up; the message is what this test is about.
    monkeypatch.setattr(utils, "get_noise_multiplier", refuse)
    budget = Budget(bucket=128, batch_size=64, steps=20, eval_every=2, lr=1e-3, sample_rate=0.5, max_grad_norm=1.0)
    with pytest.raises(PrivacyError, match="cannot reach epsilon=0.01.*raise epsilon or train fewer steps"):
        plan_dp(PrivacyConfig(epsilon=0.01, delta=1e-5, accountant="rdp"), budget=budget)


def _plan(noise: float, clip: float) -> DPPlan:
    return DPPlan(
        noise_multiplier=noise,
        sample_rate=0.25,
        steps=1,
        delta=1e-5,
        target_epsilon=1.0,
        max_grad_norm=clip,
        accountant="rdp",
        ghost_clipping=False,
        expected_batch=8,
    )


def _per_example_grads(model, x, y):
    grads = []
    for i in range(len(y)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    return grads


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_dp_step_clips_each_example_and_adds_noise(model, small_blur):
    x, y = small_blur.train.x[:8], small_blur.train.y[:8]
    clip = 0.05
    reference = _per_example_grads(model, x, y)
    norms = [math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values())) for grads in reference]
    assert min(norms) > clip  # so clipping really bites
    clipped_sum = {
        n: sum(g[n] * min(1.0, clip / (norm + 1e-6)) for g, norm in zip(reference, norms)) for n in reference[0]
    }
    for grads, norm in zip(reference, norms):
        scaled = math.sqrt(sum(float((g * min(1.0, clip / (norm + 1e-6))).pow(2).sum()) for g in grads.values()))
        assert scaled <= clip + 1e-6

    def privatised_grad(noise: float, seed: int) -> dict[str, torch.Tensor]:
        run = PrivateRun(_plan(noise, clip), n=32, seed=seed, device=torch.device("cpu"))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        net, dp_opt, crit = run.wrap(model, opt, torch.nn.CrossEntropyLoss())
        dp_opt.zero_grad()
        crit(net(x), y).backward()
        # Opacus' own per-sample gradients agree with the per-example loop.
        for name, p in model.named_parameters():
            assert torch.allclose(p.grad_sample[0], reference[0][name], atol=1e-5)
        dp_opt.pre_step()
        out = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        run.unwrap(net)
        return out

    # Without noise the DP gradient is exactly the mean of clipped per-example gradients.
    exact = privatised_grad(0.0, seed=0)
    for n in exact:
        assert torch.allclose(exact[n], clipped_sum[n] / 8, atol=1e-6), n
    # With noise it differs, by seed, and repeats for the same seed.
    noisy_a, noisy_b, noisy_a2 = privatised_grad(1.0, 0), privatised_grad(1.0, 1), privatised_grad(1.0, 0)
    assert any(not torch.allclose(noisy_a[n], exact[n]) for n in exact)
    assert any(not torch.equal(noisy_a[n], noisy_b[n]) for n in exact)
    assert all(torch.equal(noisy_a[n], noisy_a2[n]) for n in exact)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # unwrap cleans up


def test_two_seeds_differ_same_seed_repeats(model, card, small_blur):
    a = dp_run(model, card, small_blur, seed=1, steps=6)
    b = dp_run(model, card, small_blur, seed=2, steps=6)
    a2 = dp_run(model, card, small_blur, seed=1, steps=6)
    sa, sb, sa2 = a.model.state_dict(), b.model.state_dict(), a2.model.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(sa[k], sa2[k]) for k in sa)


def test_frozen_blocks_stay_frozen_and_are_not_privatised(model, card, small_blur, monkeypatch):
    hooked: list[set[str]] = []
    original = PrivateRun.wrap

    def spy(self, module, optimizer, criterion):
        out = original(self, module, optimizer, criterion)
        hooked.append(
            {
                type(m).__name__ + ":" + n
                for n, m in module.named_modules()
                if any(p.requires_grad for p in m.parameters(recurse=False))
            }
        )
        trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert trainable == {id(p) for p in module.head.parameters()}
        return out

    monkeypatch.setattr(PrivateRun, "wrap", spy)
    before = snapshot(model)
    result = dp_run(model, card, small_blur, strategy="linear-probe", steps=6)
    assert changed(before, result.model) == {"head.weight", "head.bias"}
    assert hooked == [{"Linear:head"}]


@pytest.mark.parametrize("strategy", ["full", "surgical:auto"])
def test_ghost_clipping_trains(model, card, small_blur, strategy):
    result = dp_run(model, card, small_blur, steps=6, ghost_clipping=True, strategy=strategy)
    assert result.privacy.ghost_clipping and result.privacy.epsilon_spent > 0
    assert changed(snapshot(model), result.model)


def test_dp_works_for_mlp(card, small_blur):
    from xfer.models import card_for_model, create_model

    m = create_model("mlp", hidden=(32,))
    c = card_for_model(m, label_names=card.label_names, input_mean=(0.3,), input_std=(0.4,))
    assert dp_run(m, c, small_blur, steps=6).privacy.epsilon_spent > 0


def _unbatched_lookup(self, x):
    """An embedding lookup without a batch axis: Opacus gets no per-example gradient from it."""
    tokens = self.patchify(x).flatten(2).transpose(1, 2)
    cls = self.cls_token(self.token_ids[:1]).expand(x.shape[0], 1, -1)
    return torch.cat([cls, tokens], dim=1) + self.positions(self.token_ids)


def test_vit_tiny_trains_fully_under_dp(card, small_blur):
    from xfer.models import card_for_model, create_model

    m = create_model("vit_tiny", dim=16, depth=1)
    c = card_for_model(m, label_names=card.label_names, input_mean=(0.3,), input_std=(0.4,))
    result = dp_run(m, c, small_blur, steps=6, strategy="full")
    assert result.privacy.epsilon_spent > 0
    assert changed(snapshot(m), result.model)


def test_layer_without_per_example_gradients_is_named(card, small_blur):
    import types

    from xfer.models import card_for_model, create_model

    m = create_model("vit_tiny", dim=16, depth=1)
    m.stem.forward = types.MethodType(_unbatched_lookup, m.stem)
    c = card_for_model(m, label_names=card.label_names, input_mean=(0.3,), input_std=(0.4,))
    with pytest.raises(PrivacyError, match=r"stem\.cls_token\.weight, stem\.positions\.weight"):
        dp_run(m, c, small_blur, steps=6)
    # Freezing the offending block is the documented way out.
    assert dp_run(m, c, small_blur, steps=6, strategy="linear-probe").privacy.epsilon_spent > 0


class BatchNormNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)


def test_incompatible_layer_is_named():
    with pytest.raises(PrivacyError, match=r"bn \(BatchNorm2d\)"):
        make_compatible(BatchNormNet())


def test_frozen_incompatible_layer_is_fine():
    net = BatchNormNet()
    net.bn.requires_grad_(False)
    assert make_compatible(net) is net


def test_an_empty_poisson_batch_is_still_a_noise_step(model, card, small_blur, monkeypatch):
    calls = {"n": 0}
    real = PrivateRun.poisson_batch

    def sometimes_empty(self, generator):
        calls["n"] += 1
        batch = real(self, generator)
        return batch[:0] if calls["n"] == 1 else batch

    monkeypatch.setattr(PrivateRun, "poisson_batch", sometimes_empty)
    before = snapshot(model)
    result = dp_run(model, card, small_blur, strategy="linear-probe", steps=6)
    assert result.privacy.steps == 6 == result.steps_applied  # the empty step was accounted
    assert changed(before, result.model) == {"head.weight", "head.bias"}
