"""The two guarantees (docs/privacy-model.md): the release bound's math against exact divergences,
the capped bound, site guards, secret sampling, and the plan's per-threat-model accounting."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy.special import logsumexp
from scipy.stats import binom

from secure_fedrl.config import config_from_dict
from secure_fedrl.errors import PrivacyBudgetExceeded, PrivacyError
from secure_fedrl.privacy import randomness
from secure_fedrl.privacy.accountants import (
    RDP_ORDERS,
    GaussianStep,
    RDPCurveStep,
    bernoulli_mixture,
    bernoulli_mixture_rdp,
    gaussian_rdp,
    make_accountant,
    rdp_to_epsilon,
)
from secure_fedrl.privacy.budget import ReleaseAccount, SiteGuard, capped_binomial_rdp

ORDERS = np.asarray(RDP_ORDERS)


# ----------------------------------------------------------------------------- Theorem R, numerically

def _renyi_1d(p: np.ndarray, q: np.ndarray, dx: float, alpha: float) -> float:
    """D_alpha(p || q) of densities on a grid, in log space (no under/overflow)."""
    return (logsumexp(alpha * np.log(p) + (1 - alpha) * np.log(q)) + math.log(dx)) / (alpha - 1)


def _normal(x: np.ndarray, mu: float, var: float) -> np.ndarray:
    return np.exp(-((x - mu) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


@pytest.mark.parametrize("q", [0.05, 0.3, 0.8])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 4.0, 8.0])
def test_release_bound_holds_with_the_extra_noise_share(q: float, alpha: float) -> None:
    """Zero-out with a DDG-like extra share: D = (1-q) N(0, k) + q N(mu, k+1) against
    D' = (1-q) N(0, k) + q N(0, k+1). The exact Renyi divergence (both directions) stays below
    the Bernoulli-mixture bound built from the included round's curve alpha mu^2 / (2 (k+1))."""
    k, mu = 4.0, 1.5
    x, dx = np.linspace(-40, 40, 400_001, retstep=True)
    d = (1 - q) * _normal(x, 0, k) + q * _normal(x, mu, k + 1)
    d0 = (1 - q) * _normal(x, 0, k) + q * _normal(x, 0, k + 1)
    base = alpha * mu**2 / (2 * (k + 1))
    bound = bernoulli_mixture([base], [alpha], q)[0]
    exact = max(_renyi_1d(d, d0, dx, alpha), _renyi_1d(d0, d, dx, alpha))
    assert exact <= bound * (1 + 1e-9)
    assert bound < base  # and it is an amplification


def test_release_bound_never_below_the_exact_subsampled_gaussian() -> None:
    """Central Gaussian (zero-out = add/remove): Mironov et al. is exact at integer orders, so a
    valid bound is never below it; q = 1 gives the plain curve back."""
    ints = np.arange(2.0, 40.0)
    for z in (0.7, 1.0, 3.0):
        base = ints / (2 * z**2)
        for q in (0.01, 0.1, 0.5):
            exact = np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=list(ints)))
            ours = bernoulli_mixture(base, ints, q)
            assert np.all(ours >= exact * (1 - 1e-9))
            assert np.all(ours < base)
        assert np.array_equal(bernoulli_mixture(base, ints, 1.0), base)


def test_mixture_bound_formula_and_edge_cases() -> None:
    base = gaussian_rdp(1.0, 1.0)
    got = bernoulli_mixture_rdp(base, 0.2)
    small = ORDERS < 30  # where exp() of the plain formula does not overflow
    want = np.log(0.8 + 0.2 * np.exp((ORDERS[small] - 1) * base[small])) / (ORDERS[small] - 1)
    np.testing.assert_allclose(got[small], want, rtol=1e-12)
    huge = bernoulli_mixture_rdp(base * 1e6, 0.2)  # exp overflow: stays finite and <= base
    assert np.all(np.isfinite(huge)) and np.all(huge <= base * 1e6)
    inf = base.copy()
    inf[3] = np.inf
    assert np.isinf(bernoulli_mixture_rdp(inf, 0.2)[3])
    with pytest.raises(PrivacyError):
        bernoulli_mixture([1.0], [1.0], 0.5)
    with pytest.raises(PrivacyError):
        bernoulli_mixture([-1.0], [2.0], 0.5)
    with pytest.raises(PrivacyError):
        bernoulli_mixture([1.0, 2.0], [2.0], 0.5)
    with pytest.raises(PrivacyError):
        bernoulli_mixture_rdp(base[:-1], 0.5)
    with pytest.raises(PrivacyError):
        bernoulli_mixture_rdp(base, 0.0)


# ----------------------------------------------------------------------------- the capped bound

def test_capped_bound_matches_brute_force_enumeration() -> None:
    eps = gaussian_rdp(1.3, 1.0)
    rounds, q, cap = 7, 0.3, 3
    ks = np.arange(rounds + 1)
    want = np.asarray([logsumexp(binom.logpmf(ks, rounds, q) + (a - 1) * e * np.minimum(ks, cap)) / (a - 1)
                       for a, e in zip(ORDERS, eps)])
    np.testing.assert_allclose(capped_binomial_rdp(eps, q, rounds, cap), want, rtol=1e-10)
    # no cap binding: exactly the product of the per-round mixture bounds
    np.testing.assert_allclose(capped_binomial_rdp(eps, q, rounds, rounds),
                               rounds * bernoulli_mixture_rdp(eps, q), rtol=1e-9)


def test_release_account_uses_the_cap_only_when_sites_refuse() -> None:
    cost = gaussian_rdp(2.0, 1.0)
    free = ReleaseAccount(0.1, delta=1e-5)
    capped = ReleaseAccount(0.1, delta=1e-5, cap_target=4.0)
    for _ in range(200):
        free.apply(cost)
        capped.apply(cost)
    p = capped.cap()
    assert free.cap() is None and 0 < p < 200
    assert rdp_to_epsilon(cost * p, 1e-5) <= 4.0 < rdp_to_epsilon(cost * (p + 1), 1e-5)
    assert capped.get_epsilon(1e-5) < free.get_epsilon(1e-5)
    # never above what one site capped at P participations could spend against the server
    assert capped.get_epsilon(1e-5) <= rdp_to_epsilon(cost * p, 1e-5) + 1e-9
    assert free.epsilon_after(cost, 1e-5) > free.get_epsilon(1e-5)
    assert free.rounds == 200  # epsilon_after records nothing


# ----------------------------------------------------------------------------- site guards

def test_site_guard_refuses_beyond_its_own_budget() -> None:
    step = GaussianStep(1.0, 1.0)
    guard = SiteGuard("s", target_epsilon=5.0, delta=1e-5)
    taken = 0
    while guard.admits(step):
        guard.charge(step)
        taken += 1
        assert guard.epsilon <= 5.0
    assert taken >= 1 and guard.participations == taken
    assert make_accountant("rdp").epsilon_after(GaussianStep(1.0, 1.0, taken + 1), 1e-5) > 5.0
    # release threat model: the site accounts but never refuses
    loose = SiteGuard("s", target_epsilon=5.0, delta=1e-5, enforce=False)
    for _ in range(taken + 3):
        assert loose.admits(step)
        loose.charge(step)
    assert loose.epsilon > 5.0


# ----------------------------------------------------------------------------- secret sampling

def test_secret_sampling_is_not_reproducible_and_has_the_right_rate() -> None:
    names = [f"s{i}" for i in range(400)]
    a, b = randomness.secret_poisson_sample(names, 0.5), randomness.secret_poisson_sample(names, 0.5)
    assert a != b  # 2^-400 to fail by chance
    assert 140 < len(a) < 260
    mask = randomness.secret_bernoulli_mask(20_000, 0.1)
    assert mask.dtype == bool and abs(mask.mean() - 0.1) < 0.01
    assert not randomness.secret_bernoulli_mask(50, 0.0).any() and randomness.secret_bernoulli_mask(50, 1.0).all()
    assert randomness.secret_bernoulli(1.0) and not randomness.secret_bernoulli(0.0)
    s1, s2 = randomness.secret_sample(names, 10), randomness.secret_sample(names, 10)
    assert len(s1) == 10 and s1 != s2 and s1 == [n for n in names if n in s1]
    assert randomness.secret_seed() != randomness.secret_seed()
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(PrivacyError):
            randomness.secret_bernoulli(bad)
    with pytest.raises(PrivacyError):
        randomness.secret_bernoulli_mask(-1, 0.5)
    with pytest.raises(PrivacyError):
        randomness.secret_sample(names, 401)


def test_inclusion_probability_never_exceeds_q() -> None:
    # floor(q 2^53) / 2^53 <= q for every q: the bounds we charge are non-decreasing in q
    for q in (1e-17, 0.1, 1 / 3, 0.7, 1 - 1e-16):
        assert randomness._threshold(q) / 2**53 <= q


# ----------------------------------------------------------------------------- the plan

def _config(**privacy):
    raw = {
        "federation": {"rounds": 10, "seed": 1},
        "local": {"algorithm": "ppo", "steps": 64},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "sampling": {"fraction": 0.5, "poisson": True},
        "secure_aggregation": {"enabled": True, "threshold": 0.6, "neighbors": -1},
        "privacy": {"unit": "client", "clip": 1.0, "target_epsilon": 8.0, **privacy},
        "sites": [{"name": "s", "env": "CartPole-v1", "count": 20}],
    }
    return config_from_dict(raw)


def _plan(config):
    from secure_fedrl.runtime.aggregation import build_aggregator
    from secure_fedrl.runtime.privacy_plan import PrivacyPlan

    plan = PrivacyPlan(config, [f"s-{i}" for i in range(20)], ledger_path=None)
    plan.bind(build_aggregator(config, dim=100, privacy=plan))
    return plan


def test_server_calibration_spends_the_budget_in_max_participations() -> None:
    plan = _plan(_config())
    assert plan.threat_model == "server" and plan.max_participations == 10  # ceil(5 + 3 sqrt(2.5)) > 10
    cost = plan.round_cost(10)
    eps = make_accountant("rdp").epsilon_after(dataclasses.replace(cost.server, num_steps=10), 1e-5)
    assert eps == pytest.approx(8.0, rel=1e-3) and eps <= 8.0
    # the release bound of the same rounds is smaller (amplification by the secret sample)
    release = ReleaseAccount(0.5, delta=1e-5, cap_target=8.0)
    for _ in range(10):
        release.apply(cost.server.rdp)
    assert release.get_epsilon(1e-5) < eps
    # m honest shares: threshold 0.6 of 10 planned = 6, no colluder
    assert cost.noise_shares == 6


def test_colluders_reduce_the_honest_shares_and_raise_the_noise() -> None:
    honest, colluding = _plan(_config()), _plan(config_from_dict({**_config().to_dict(), "secure_aggregation": {
        "enabled": True, "threshold": 0.6, "neighbors": -1, "max_colluding_sites": 2}}))
    assert colluding.round_cost(10).noise_shares == honest.round_cost(10).noise_shares - 2 + 1 or \
        colluding.round_cost(10).noise_shares < honest.round_cost(10).noise_shares + 1
    # each share must carry more: per-share sigma = z C / sqrt(m) with fewer m
    p_h = honest.source.ddg_params()
    p_c = colluding.source.ddg_params()
    assert p_c.expected_sites == colluding.round_cost(10).noise_shares
    assert p_c.local_stddev > p_h.local_stddev * 0.999 * math.sqrt(p_h.expected_sites / p_c.expected_sites)


def test_admit_round_lets_exhausted_sites_refuse() -> None:
    plan = _plan(_config(noise_multiplier=1.0))
    cost = plan.round_cost(4)
    guard = plan.guards["s-0"]
    while guard.admits(cost.server):
        guard.charge(cost.server)
    admitted = plan.admit_round(1, ["s-0", "s-1", "s-2", "s-3"])
    assert "s-0" not in admitted and admitted == ["s-1", "s-2", "s-3"]
    assert plan.round_metrics()["sites_refused"] == ["s-0"]
    for g in plan.guards.values():
        while g.admits(cost.server):
            g.charge(cost.server)
    with pytest.raises(PrivacyBudgetExceeded, match="every site"):
        plan.admit_round(2, ["s-1", "s-2"])


def test_release_threat_model_stops_on_the_release_budget_and_sites_never_refuse() -> None:
    plan = _plan(_config(noise_multiplier=1.0, threat_model="release"))
    cost = plan.round_cost(4)
    for _ in range(200):
        plan.guards["s-0"].charge(cost.server)
    assert plan.admit_round(1, ["s-0"]) == ["s-0"]  # no refusal under "release"
    for _ in range(500):
        plan._release_apply(cost)
    with pytest.raises(PrivacyBudgetExceeded, match="release-only"):
        plan.admit_round(2, ["s-1"])


def test_issue_measured_numbers_are_now_charged_without_the_sampling_discount() -> None:
    """Issue 7: client-level-200 was charged ~8 for 60 rounds at q = 0.1 (sigma ~1); against the
    server a site that takes part in every round is charged ~65 (no discount) -- that is what the
    per-site account now records, and the calibration plans for it."""
    from pathlib import Path

    from secure_fedrl.config import load_config
    from secure_fedrl.runtime.aggregation import build_aggregator
    from secure_fedrl.runtime.privacy_plan import PrivacyPlan
    from secure_fedrl.runtime.sites import expand_sites

    path = Path(__file__).parents[2] / "clients" / "cartpole" / "client-level-200.toml"
    c = load_config(path, overrides={"federation.rounds": 60, "privacy.noise_multiplier": 1.0})
    plan = PrivacyPlan(c, [s.name for s in expand_sites(c.sites)], ledger_path=None)
    plan.bind(build_aggregator(c, dim=211, privacy=plan))
    cost = plan.round_cost(20)
    every_round = make_accountant("rdp").epsilon_after(dataclasses.replace(cost.server, num_steps=60), 1e-5)
    assert 60 < every_round < 75
    discounted = make_accountant("rdp").epsilon_after(GaussianStep(1.0, 0.1, 60), 1e-5)
    assert discounted < 8.0  # what the generic subsampled bound used to charge
    # calibrated now: the same config without a fixed sigma plans for max_participations per site
    c2 = load_config(path, overrides={"federation.rounds": 60})
    plan2 = PrivacyPlan(c2, [s.name for s in expand_sites(c2.sites)], ledger_path=None)
    plan2.bind(build_aggregator(c2, dim=211, privacy=plan2))
    per_site = make_accountant("rdp").epsilon_after(
        dataclasses.replace(plan2.round_cost(20).server, num_steps=plan2.max_participations), 1e-5)
    assert per_site <= 8.0 and plan2.sigma > 2.0


def test_central_gaussian_has_no_guarantee_against_the_server() -> None:
    c = config_from_dict({**_config().to_dict(), "secure_aggregation": {"enabled": False},
                          "privacy": {"unit": "client", "clip": 1.0, "target_epsilon": 8.0}})
    plan = _plan(c)
    assert plan.threat_model == "release" and plan.mechanism == "gaussian"
    cost = plan.round_cost(10)
    assert cost.server is None
    assert plan.epsilons()[0] == math.inf
    assert isinstance(cost.release, GaussianStep) and cost.release.sample_rate == 0.5


def test_row_cost_replays_ddg_rows_from_their_parameters() -> None:
    from types import SimpleNamespace

    from secure_fedrl.privacy.ddg import recorded_params
    from secure_fedrl.runtime.privacy_plan import row_cost

    plan = _plan(_config(noise_multiplier=1.0))
    cost = plan.round_cost(10)
    row = SimpleNamespace(mechanism="ddg", clip=1.0, params=recorded_params(plan.source.ddg_params()),
                          noise_shares=cost.noise_shares, sample_rate=0.5, steps=1, seq=1)
    again = row_cost(row)
    np.testing.assert_allclose(again.server.rdp, cost.server.rdp, rtol=1e-12)
    np.testing.assert_allclose(again.release.rdp, cost.release.rdp, rtol=1e-12)
    fewer = row_cost(SimpleNamespace(**{**row.__dict__, "noise_shares": cost.noise_shares - 2}))
    assert np.all(np.asarray(fewer.server.rdp) > np.asarray(cost.server.rdp))  # fewer shares cost more
    with pytest.raises(PrivacyError, match="l2_bound"):
        row_cost(SimpleNamespace(**{**row.__dict__, "params": {**row.params, "l2_bound": 0.5}}))
    assert isinstance(again.server, RDPCurveStep)


def test_the_subsampled_gaussian_bound_under_counts_when_inclusion_adds_a_share() -> None:
    """Why DDG's release bound is not Mironov et al. / Zhu & Wang (issue 7, finding 5): with the
    extra share, the exact divergence exceeds the subsampled Gaussian's at the same base curve,
    while the Bernoulli-mixture bound still holds."""
    k, mu, q, alpha = 16.0, 1.5, 0.3, 8.0
    x, dx = np.linspace(-40, 40, 400_001, retstep=True)
    d = (1 - q) * _normal(x, 0, k) + q * _normal(x, mu, k + 1)
    d0 = (1 - q) * _normal(x, 0, k) + q * _normal(x, 0, k + 1)
    exact = max(_renyi_1d(d, d0, dx, alpha), _renyi_1d(d0, d, dx, alpha))
    gaussian = opacus_rdp.compute_rdp(q=q, noise_multiplier=math.sqrt(k + 1) / mu, steps=1, orders=[alpha])[0]
    assert exact > gaussian * 1.1
    assert exact <= bernoulli_mixture([alpha * mu**2 / (2 * (k + 1))], [alpha], q)[0]


# ----------------------------------------------------------------------------- mutation-driven edges

def test_guard_and_release_account_edges() -> None:
    from secure_fedrl.privacy.budget import PrivacyBudget

    step = GaussianStep(2.0, 1.0)
    guard = SiteGuard("s", target_epsilon=50.0, delta=1e-5)
    for _ in range(3):
        guard.charge(step)
    assert guard.budget.rounds_committed == guard.participations == 3
    assert guard.budget.accountant.name == "rdp" and "site s" in guard.budget.label
    with pytest.raises(PrivacyError):
        PrivacyBudget(True, 1e-5)
    cost = gaussian_rdp(2.0, 1.0)
    one = ReleaseAccount(0.1, delta=1e-5, cap_target=rdp_to_epsilon(cost * 1, 1e-5))
    one.apply(cost)
    assert one.cap() == 1  # boundary: exactly at the budget is admitted; one round suffices to cap
    many = ReleaseAccount(0.1, delta=1e-5, cap_target=1e6)
    for _ in range(3):
        many.apply(cost)
    assert many.cap() == 3  # never more participations than rounds
    np.testing.assert_allclose(many.curve(), 3 * bernoulli_mixture_rdp(cost, 0.1), rtol=1e-12)
    tight = ReleaseAccount(0.1, delta=1e-5, cap_target=rdp_to_epsilon(cost * 2, 1e-5))
    for _ in range(20):
        tight.apply(cost)
    after = tight.epsilon_after(cost, 1e-5)
    tight.apply(cost)
    assert after == pytest.approx(tight.get_epsilon(1e-5), rel=1e-12)  # the trial keeps the cap
    assert np.isinf(capped_binomial_rdp(np.where(np.arange(len(cost)) == 5, np.inf, cost), 0.1, 4, 2)[5])


def test_randomness_edges() -> None:
    assert randomness.secret_bernoulli_mask(0, 0.5).shape == (0,)
    names = ["a", "b", "c"]
    assert randomness.secret_sample(names, 0) == [] and randomness.secret_sample(names, 3) == names
    with pytest.raises(PrivacyError):
        randomness.secret_sample(names, -1)
    with pytest.raises(PrivacyError, match="probability"):
        randomness._threshold("0.5")
    assert randomness._threshold(0.0) == 0 and randomness._threshold(1.0) == 2**53
    assert randomness.secret_seed(8) < 256
