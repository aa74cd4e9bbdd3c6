"""Accountants against the shared reference grid, plus inf handling, state and bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant as OpacusRDP
from scipy.optimize import brentq
from scipy.special import log_ndtr

from secure_fedrl.errors import ConfigError, PrivacyError
from secure_fedrl.privacy import epsilon, noise_multiplier_for
from secure_fedrl.privacy.accountants import (
    RDP_ORDERS,
    GaussianStep,
    PRVAccountant,
    RDPAccountant,
    ZCDPStep,
    _stable_upper,
    make_accountant,
)

REPO = Path(__file__).resolve().parents[2]


def _reference_rows() -> list[dict]:
    """The reference epsilons shipped in the repo (regenerate: bench/make_reference_epsilons.py)."""
    path = Path(__file__).parent / "data" / "dp_epsilons.json"
    return json.loads(path.read_text())["rows"]


ROWS = _reference_rows()


def _finite(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _row_id(r: dict) -> str:
    return f"s{r['sigma']}-q{r['sample_rate']}-T{r['steps']}-d{r['delta']}"


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact eps of a (non-subsampled) Gaussian with sensitivity/sigma = mu (Balle & Wang 2018).

    Independent of Opacus: for q = 1 the composition of T Gaussians is one Gaussian with
    mu = sqrt(T)/sigma, so every valid accountant must report at least this.
    """

    def d(eps: float) -> float:
        return math.exp(log_ndtr(-eps / mu + mu / 2)) - math.exp(eps + log_ndtr(-eps / mu - mu / 2))

    return brentq(lambda e: d(e) - delta, 0.0, 1e5, xtol=1e-10)


# --------------------------------------------------------------------------------------------
# accuracy on every reference row


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_rdp_row(row):
    eps = epsilon(row["sigma"], row["sample_rate"], row["steps"], row["delta"], "rdp")
    opacus63 = _finite(row["eps_opacus_rdp_orders_to_63"])
    lower = _finite(row["eps_opacus_prv_lower"])
    if opacus63 is not None:
        assert eps <= opacus63 * (1 + 1e-12), "above Opacus's own RDP (orders <= 63)"
    if lower is not None:
        assert eps >= lower, "below the PRV lower bound: under-reports"
    if row["sample_rate"] == 1.0:
        assert eps >= exact_gaussian_epsilon(math.sqrt(row["steps"]) / row["sigma"], row["delta"])


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_prv_row(row):
    eps = epsilon(row["sigma"], row["sample_rate"], row["steps"], row["delta"], "prv")
    pld = float(row["eps_dp_accounting_pld"])
    lower = _finite(row["eps_opacus_prv_lower"])
    assert math.isfinite(eps), "PRV must fall back, not give up, where RDP is finite"
    assert abs(eps - pld) <= max(0.02 * pld, 0.02), f"prv {eps} vs PLD {pld}"
    if lower is not None:
        assert eps >= lower, "below the PRV lower bound: under-reports"
    if row["sample_rate"] == 1.0:
        assert eps >= exact_gaussian_epsilon(math.sqrt(row["steps"]) / row["sigma"], row["delta"])


def test_rdp_never_above_opacus_on_heterogeneous_history():
    history = [(0.7, 0.05, 30), (1.3, 0.2, 7), (0.9, 1.0, 3)]
    ours = RDPAccountant()
    theirs = OpacusRDP()
    for sigma, q, n in history:
        ours.step(noise_multiplier=sigma, sample_rate=q, num_steps=n)
        theirs.history.append((sigma, q, n))
    assert ours.get_epsilon(1e-6) <= theirs.get_epsilon(1e-6) * (1 + 1e-12)
    assert set(OpacusRDP.DEFAULT_ALPHAS) <= set(RDP_ORDERS)
    assert max(RDP_ORDERS) >= 256 and min(RDP_ORDERS) < 1.1


# --------------------------------------------------------------------------------------------
# inf handling (huge epsilon)


@pytest.mark.parametrize("sigma,q,steps", [(0.3, 1.0, 2000), (0.5, 0.5, 1000), (0.2, 0.9, 500)])
def test_huge_epsilon_is_finite_and_not_under_reported(sigma, q, steps):
    rdp = epsilon(sigma, q, steps, 1e-5, "rdp")
    prv = epsilon(sigma, q, steps, 1e-5, "prv")
    assert rdp > 880 and math.isfinite(prv)
    assert prv <= rdp  # PRV is min(PRV upper, RDP upper)
    if q == 1.0:
        assert prv >= exact_gaussian_epsilon(math.sqrt(steps) / sigma, 1e-5)


def test_stable_upper_agrees_with_opacus_where_opacus_is_finite():
    from opacus.accountants import PRVAccountant as OpacusPRV

    acct = OpacusPRV()
    acct.history = [(1.0, 0.1, 100)]
    dprv = acct._get_dprv(eps_error=0.01, delta_error=1e-8)
    _, _, opacus_upper = dprv.compute_epsilon(1e-5, 1e-8, 0.01)
    ours = _stable_upper(dprv.pmf, dprv.domain.ts, 1e-5 - 1e-8) + 0.01
    assert ours == pytest.approx(opacus_upper, abs=1e-9)


def test_no_steps_spends_nothing():
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    for name in ("rdp", "prv"):
        assert make_accountant(name).get_epsilon(1e-5) == 0.0


# --------------------------------------------------------------------------------------------
# incremental == batch, state round trip


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_incremental_equals_batch(name):
    inc, batch = make_accountant(name), make_accountant(name)
    for _ in range(40):
        inc.step(noise_multiplier=1.1, sample_rate=0.05)
    for _ in range(3):
        inc.step(noise_multiplier=2.0, sample_rate=0.05)
    batch.step(noise_multiplier=1.1, sample_rate=0.05, num_steps=40)
    batch.step(noise_multiplier=2.0, sample_rate=0.05, num_steps=3)
    assert inc.history == batch.history == [GaussianStep(1.1, 0.05, 40), GaussianStep(2.0, 0.05, 3)]
    assert inc.get_epsilon(1e-5) == pytest.approx(batch.get_epsilon(1e-5), rel=1e-12)


def test_prv_per_round_series_matches_fresh_and_is_monotone():
    """Rounds across a horizon boundary (64): the incremental path reuses a cached mesh, and must
    give what a fresh accountant gives, never decreasing round to round."""
    acct = PRVAccountant()
    acct.step(noise_multiplier=0.9, sample_rate=0.05, num_steps=61)
    series = []
    for t in range(62, 67):
        preview = acct.epsilon_after(GaussianStep(0.9, 0.05), 1e-5)
        acct.step(noise_multiplier=0.9, sample_rate=0.05)
        assert acct.get_epsilon(1e-5) == preview
        assert preview == pytest.approx(epsilon(0.9, 0.05, t, 1e-5, "prv"), rel=1e-12)
        series.append(preview)
    assert series == sorted(series)
    assert epsilon(0.9, 0.05, 66, 1e-5, "prv") <= epsilon(0.9, 0.05, 66, 1e-5, "rdp")


def test_prv_heterogeneous_history_is_bracketed():
    """40 distinct sigmas (more than PRV_MAX_DISTINCT): grouped onto a dominating grid, the result
    lies between the all-least-noise and all-most-noise compositions and under RDP."""
    sigmas = np.linspace(2.0, 2.4, 40)
    prv, rdp = PRVAccountant(), RDPAccountant()
    for s in sigmas:
        prv.step(noise_multiplier=float(s), sample_rate=1.0)  # q = 1: RDP is closed-form, fast
        rdp.step(noise_multiplier=float(s), sample_rate=1.0)
    eps = prv.get_epsilon(1e-5)
    assert epsilon(2.4, 1.0, 40, 1e-5, "prv") <= eps <= epsilon(2.0 / 1.01, 1.0, 40, 1e-5, "prv")
    # q = 1: exact value of the heterogeneous composition (mu^2 = sum 1/sigma_i^2)
    assert eps >= exact_gaussian_epsilon(float(np.sqrt(np.sum(sigmas**-2.0))), 1e-5)
    assert eps <= rdp.get_epsilon(1e-5)


def test_epsilon_after_does_not_mutate_and_matches_step():
    acct = RDPAccountant()
    acct.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=10)
    before = acct.get_epsilon(1e-5)
    preview = acct.epsilon_after(GaussianStep(1.0, 0.1), 1e-5)
    assert acct.get_epsilon(1e-5) == before and acct.total_steps == 10
    acct.step(noise_multiplier=1.0, sample_rate=0.1)
    assert acct.get_epsilon(1e-5) == pytest.approx(preview, rel=1e-12)
    assert preview > before


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_state_dict_round_trip(name):
    acct = make_accountant(name)
    acct.step(noise_multiplier=0.9, sample_rate=0.02, num_steps=25)
    acct.step(noise_multiplier=1.4, sample_rate=0.2, num_steps=2)
    if name == "rdp":
        acct.step_zcdp(0.01, num_steps=3)
    state = json.loads(json.dumps(acct.state_dict()))  # must be JSON-serialisable
    again = make_accountant(name)
    again.load_state_dict(state)
    assert again.history == acct.history
    assert again.get_epsilon(1e-5) == pytest.approx(acct.get_epsilon(1e-5), rel=1e-12)
    other = make_accountant("prv" if name == "rdp" else "rdp")
    with pytest.raises(ConfigError, match="state_dict"):
        other.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# generic mechanisms (distributed discrete Gaussian enters as zCDP or an RDP curve)


def test_zcdp_matches_full_batch_gaussian():
    sigma = 1.7
    a = RDPAccountant()
    a.step_zcdp(1.0 / (2 * sigma**2), num_steps=20)  # Gaussian, q = 1: RDP(alpha) = alpha/(2 s^2)
    b = RDPAccountant()
    b.step(noise_multiplier=sigma, sample_rate=1.0, num_steps=20)
    c = RDPAccountant()
    c.step_rdp(lambda alpha: alpha / (2 * sigma**2), num_steps=20)
    d = RDPAccountant()
    d.step_rdp(lambda alpha: math.log(math.exp(alpha / (2 * sigma**2))), num_steps=20)  # scalar-only
    eps = b.get_epsilon(1e-5)
    for other in (a, c, d):
        assert other.get_epsilon(1e-5) == pytest.approx(eps, rel=1e-9)


def test_prv_refuses_non_gaussian_mechanisms():
    prv = PRVAccountant()
    with pytest.raises(ConfigError, match="only Poisson-subsampled Gaussian"):
        prv.step_zcdp(0.1)
    with pytest.raises(ConfigError, match="only Poisson-subsampled Gaussian"):
        prv.step_rdp(lambda a: a * 0.1)
    with pytest.raises(ConfigError, match="only Poisson-subsampled Gaussian"):
        prv.epsilon_after(ZCDPStep(0.1), 1e-5)
    assert prv.history == []


@pytest.mark.parametrize("name", ["gdp", "GDP", "pld", "", None])
def test_unknown_accountant(name):
    with pytest.raises(ConfigError, match="accountant must be one of"):
        make_accountant(name)


# --------------------------------------------------------------------------------------------
# calibration


@pytest.mark.parametrize(
    "accountant,target,q,steps",
    [("rdp", 8.0, 0.1, 200), ("rdp", 3.0, 1.0, 50), ("prv", 4.0, 0.05, 300)],
)
def test_noise_multiplier_for_round_trip(accountant, target, q, steps):
    sigma = noise_multiplier_for(target, 1e-5, q, steps, accountant)
    assert epsilon(sigma, q, steps, 1e-5, accountant) <= target
    # within tolerance: 0.1% less noise no longer meets the target
    assert epsilon(sigma * (1 - 1e-3), q, steps, 1e-5, accountant) > target


def test_noise_multiplier_for_unreachable():
    with pytest.raises(PrivacyError, match="unreachable at max_sigma"):
        noise_multiplier_for(0.01, 1e-5, 1.0, 10_000, max_sigma=5.0)


def test_noise_multiplier_for_min_sigma_already_enough():
    assert noise_multiplier_for(1e4, 1e-5, 0.001, 1, min_sigma=0.05) == 0.05


# --------------------------------------------------------------------------------------------
# bad inputs: which exception, and the message names the parameter

GOOD = dict(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("noise_multiplier", 0.0, "noise_multiplier must be > 0.*no privacy"),
        ("noise_multiplier", -1.0, "noise_multiplier must be > 0"),
        ("noise_multiplier", float("nan"), "noise_multiplier must not be NaN"),
        ("noise_multiplier", float("inf"), "noise_multiplier must be finite"),
        ("noise_multiplier", "1.0", "noise_multiplier must be a real number"),
        ("sample_rate", 0.0, r"sample_rate must be in \(0, 1\]"),
        ("sample_rate", 1.5, r"sample_rate must be in \(0, 1\]"),
        ("steps", -1, "steps must be >= 0"),
        ("steps", 2.5, "steps must be an integer"),
        ("steps", True, "steps must be an integer"),
        ("delta", 0.0, r"delta must be in \(0, 1\)"),
        ("delta", 1.0, r"delta must be in \(0, 1\)"),
    ],
)
def test_epsilon_bad_input(field, value, needle):
    kwargs = dict(GOOD, **{field: value})
    with pytest.raises(PrivacyError, match=needle):
        epsilon(**kwargs)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(target_epsilon=0.0), "target_epsilon must be finite and > 0"),
        (dict(target_epsilon=-2.0), "target_epsilon must be finite and > 0"),
        (dict(target_epsilon=float("inf")), "target_epsilon must be finite and > 0"),
        (dict(delta=2.0), r"delta must be in \(0, 1\)"),
        (dict(sample_rate=0.0), r"sample_rate must be in \(0, 1\]"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(max_sigma=0.0), "noise_multiplier must be > 0"),
    ],
)
def test_noise_multiplier_for_bad_input(kwargs, needle):
    args = dict(target_epsilon=5.0, delta=1e-5, sample_rate=0.1, steps=10)
    args.update(kwargs)
    with pytest.raises(PrivacyError, match=needle):
        noise_multiplier_for(**args)


def test_accountant_step_bad_input():
    acct = RDPAccountant()
    with pytest.raises(PrivacyError, match="noise_multiplier must be > 0"):
        acct.step(noise_multiplier=0.0, sample_rate=0.1)
    with pytest.raises(PrivacyError, match="rho must be finite"):
        acct.step_zcdp(-0.1)
    with pytest.raises(PrivacyError, match="rdp curve values"):
        acct.step_rdp(lambda a: -1.0)
    assert acct.history == [] and acct.get_epsilon(1e-5) == 0.0


# --------------------------------------------------------------------------------------------
# properties


@settings(max_examples=8, deadline=None)
@given(
    sigma=st.floats(0.6, 4.0),
    q=st.sampled_from([0.003, 0.02, 0.3, 1.0]),
    steps=st.integers(1, 300),
    extra=st.integers(1, 300),
)
def test_rdp_monotone_in_steps_and_sigma(sigma, q, steps, extra):
    e = epsilon(sigma, q, steps, 1e-5)
    assert epsilon(sigma, q, steps + extra, 1e-5) >= e
    assert epsilon(sigma * 1.25, q, steps, 1e-5) <= e
    assert np.isfinite(e) and e > 0
