"""The Gaussian accountant against independent computations: numerical integration and Opacus."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from xfer.client.onnxhead.accounting import (
    GaussianAccountant,
    GaussianRelease,
    delta_for,
    epsilon_for,
    mu_for,
    split_budget,
)
from xfer.client.onnxhead.errors import HeadPrivacyError


def delta_by_integration(mu: float, epsilon: float) -> float:
    """δ(ε) = E_P[(1 − e^{ε−L})₊], L ~ N(μ²/2, μ²) the privacy loss of a μ-GDP mechanism, by quadrature."""
    grid = np.linspace(mu**2 / 2 - 40 * mu, mu**2 / 2 + 40 * mu, 2_000_001)
    density = np.exp(-((grid - mu**2 / 2) ** 2) / (2 * mu**2)) / (mu * math.sqrt(2 * math.pi))
    integrand = np.clip(1.0 - np.exp(np.minimum(epsilon - grid, 700.0)), 0.0, None) * density
    return float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(grid)))


@pytest.mark.parametrize("mu,epsilon", [(0.25, 0.5), (0.5, 1.0), (1.0, 3.0), (2.0, 6.0), (0.1, 0.2)])
def test_delta_matches_numerical_integration_of_the_privacy_loss(mu, epsilon):
    exact, numeric = delta_for(mu, epsilon), delta_by_integration(mu, epsilon)
    assert exact == pytest.approx(numeric, rel=1e-5, abs=1e-15)


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0, 10.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-8])
def test_mu_and_epsilon_invert_each_other_and_round_towards_privacy(epsilon, delta):
    mu = mu_for(epsilon, delta)
    assert delta_for(mu, epsilon) <= delta  # μ rounded down: the target holds
    assert delta_for(mu * (1 + 1e-6), epsilon) > delta  # and it is the largest such μ
    back = epsilon_for(mu, delta)
    assert back <= epsilon * (1 + 1e-9) and back == pytest.approx(epsilon, rel=1e-7)
    assert delta_for(mu, back) <= delta  # ε rounded up: δ(ε) at the returned ε is within the target


def _opacus_epsilon(accountant: str, sigma: float, steps: int, delta: float) -> float:
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(sigma, 1.0, steps)]  # sample rate 1: full batches, no amplification
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (5.0, 100), (20.0, 100), (0.8, 4), (3.0, 10)])
def test_matches_opacus_prv_and_is_below_opacus_rdp(sigma, steps):
    delta = 1e-5
    ours = GaussianAccountant()
    ours.record(GaussianRelease("steps", sigma, steps))
    epsilon = ours.epsilon(delta)
    prv = _opacus_epsilon("prv", sigma, steps, delta)
    rdp = _opacus_epsilon("rdp", sigma, steps, delta)
    # PRV is a numerical upper bound within its eps_error (0.01 by default) of the exact value.
    assert prv - 0.02 <= epsilon <= prv + 1e-9
    # RDP's conversion is a looser upper bound: never below the exact ε.
    assert epsilon <= rdp
    assert epsilon == pytest.approx(prv, rel=0.01)


def test_composition_of_different_releases_is_exact():
    acc = GaussianAccountant()
    acc.record(GaussianRelease("sums", 2.0))
    acc.record(GaussianRelease("counts", 4.0))
    acc.record(GaussianRelease("steps", 10.0, repetitions=25))
    assert acc.mu == pytest.approx(math.sqrt(1 / 4 + 1 / 16 + 25 / 100))
    # One Gaussian with the composed μ has exactly this ε (PLDs of Gaussians compose into a Gaussian).
    assert acc.epsilon(1e-6) == pytest.approx(epsilon_for(acc.mu, 1e-6))
    assert GaussianAccountant().epsilon(1e-6) == 0.0


def test_split_budget_spends_exactly_the_target():
    noise = split_budget(epsilon=2.0, delta=1e-5, shares={"a": (0.3, 1), "b": (0.7, 50)})
    acc = GaussianAccountant()
    acc.record(GaussianRelease("a", noise["a"]))
    acc.record(GaussianRelease("b", noise["b"], repetitions=50))
    assert acc.epsilon(1e-5) == pytest.approx(2.0, rel=1e-9)
    assert (1 / noise["a"] ** 2) / (50 / noise["b"] ** 2) == pytest.approx(0.3 / 0.7)


@pytest.mark.parametrize(
    "call",
    [
        lambda: mu_for(0.0, 1e-5),
        lambda: mu_for(float("nan"), 1e-5),
        lambda: mu_for(1.0, 0.0),
        lambda: mu_for(1.0, 1.5),
        lambda: epsilon_for(float("nan"), 1e-5),
        lambda: GaussianRelease("x", 0.0),
        lambda: GaussianRelease("x", 1.0, repetitions=0),
        lambda: split_budget(epsilon=1.0, delta=1e-5, shares={"a": (0.5, 1)}),
    ],
)
def test_bad_privacy_parameters_raise_clear_errors(call):
    with pytest.raises(HeadPrivacyError):
        call()


def test_extreme_values_stay_finite():
    assert delta_for(1e-3, 800.0) == 0.0  # e^ε overflows alone; the product does not
    assert epsilon_for(50.0, 1e-10) > 100
    assert epsilon_for(1e-5, 1e-5) == 0.0  # almost no information: δ(0) = 2Φ(μ/2) − 1 is already below δ
