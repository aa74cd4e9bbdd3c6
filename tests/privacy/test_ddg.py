"""Distributed Discrete Gaussian (Kairouz, Liu, Steinke 2021): encoding, decoding, accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy import stats

from secure_fedrl.errors import ConfigError, PrivacyError, UpdateRejected
from secure_fedrl.privacy.clipping import clip_l2
from secure_fedrl.privacy.ddg import (
    AggregateOverflow,
    DDGEncoder,
    DDGParams,
    attestation_for,
    conditional_round,
    ddg_parameters,
    ddg_round_privacy,
    decode_sum,
    fwht,
    rotate,
    rotation_signs,
    rounded_l2_norm_bound,
    unrotate,
    verify_attestation,
)
from secure_fedrl.privacy.discrete_gaussian import discrete_gaussian_variance
from secure_fedrl.secagg.encoding import centered_lift

SEED = bytes(range(32))
ORDERS = np.array([1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 128, 256], dtype=float)


def ring_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    """What secure aggregation releases: the sum mod 2^bits (uint32)."""
    total = np.zeros_like(vectors[0], dtype=np.uint64)
    for v in vectors:
        total = (total + v.astype(np.uint64)) & np.uint64((1 << bits) - 1)
    return total.astype(np.uint32)


def params_with_stddev(*, scaled_stddev: float, bits: int = 24, dim: int = 100, n: int = 8,
                       clip: float = 1.0) -> DDGParams:
    """Hand-built params with a chosen per-site integer-grid std s (gamma fixed by the 2^bits fit)."""
    base = ddg_parameters(clip_norm=clip, dim=dim, expected_sites=n, bits=bits,
                          noise_multiplier=1.0, compensate_rounding=False)
    return DDGParams(clip_norm=clip, dim=dim, bits=bits, local_stddev=scaled_stddev * base.gamma,
                     gamma=base.gamma, expected_sites=n, max_sites=n, noise_multiplier=1.0)


# ----------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("d", [1, 2, 4, 8, 16, 32, 64])
def test_fwht_matches_hadamard_matrix(d: int) -> None:
    x = np.random.default_rng(d).normal(size=(3, d))
    assert np.allclose(fwht(x), x @ scipy.linalg.hadamard(d).T)


def test_fwht_rejects_non_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        fwht(np.ones(12))


@settings(max_examples=50, deadline=None)
@given(log_d=st.integers(0, 12), seed=st.integers(0, 2**32 - 1))
def test_rotation_round_trip_and_isometry(log_d: int, seed: int) -> None:
    d = 1 << log_d
    x = np.random.default_rng(seed).normal(size=d) * 10
    signs = rotation_signs(seed.to_bytes(4, "little") * 4, d)
    y = rotate(x, signs)
    assert np.allclose(unrotate(y, signs), x, atol=1e-9 * (1 + np.abs(x).max()))
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)


def test_rotation_signs_are_shared_and_seed_bound() -> None:
    a = rotation_signs(SEED, 4096)
    assert np.array_equal(a, rotation_signs(SEED, 4096))
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert abs(a.sum()) < 5 * math.sqrt(4096)
    b = rotation_signs(SEED[::-1], 4096)
    assert not np.array_equal(a, b)
    with pytest.raises(PrivacyError, match="seed"):
        rotation_signs(b"short", 8)


# ----------------------------------------------------------------------------- rounding


@settings(max_examples=100, deadline=None)
@given(
    z=arrays(np.float64, st.integers(1, 200),
             elements=st.floats(-50, 50, allow_nan=False, allow_infinity=False)),
    beta=st.sampled_from([0.0, 1e-6, 0.1, math.exp(-0.5), 0.9]),
    seed=st.integers(0, 2**32 - 1),
)
def test_conditional_rounding_bound_holds(z: np.ndarray, beta: float, seed: int) -> None:
    norm = max(float(np.linalg.norm(z)), 1e-9)
    bound = rounded_l2_norm_bound(norm, beta, z.size)
    r = conditional_round(z, bound, rng=np.random.default_rng(seed))
    assert r.dtype == np.int64
    assert float(np.linalg.norm(r.astype(float))) <= bound
    assert np.all((r == np.floor(z)) | (r == np.ceil(z)))


def test_rounding_is_unbiased_and_retries_when_needed() -> None:
    z = np.full(64, 0.5)
    rng = np.random.default_rng(0)
    mean = np.mean([conditional_round(z, 100.0, rng=rng) for _ in range(4000)], axis=0)
    assert np.all(np.abs(mean - 0.5) < 5 * 0.5 / math.sqrt(4000))
    # A tight bound forces redraws: every accepted draw respects it.
    tight = math.sqrt(32.0)  # ~half the draws have more than 32 ones
    for _ in range(50):
        r = conditional_round(z, tight, rng=rng)
        assert r.sum() <= 32
    with pytest.raises(PrivacyError, match="conditional rounding"):
        conditional_round(np.full(8, 3.0), 1.0, rng=rng)


# ----------------------------------------------------------------------------- round trip


def test_encode_sum_decode_recovers_clipped_sum_within_noise() -> None:
    n, dim = 10, 4000
    p = ddg_parameters(clip_norm=1.0, dim=dim, expected_sites=n, bits=20, noise_multiplier=0.8)
    enc = DDGEncoder(p, rotation_seed=SEED)
    rng = np.random.default_rng(1)
    ups = [rng.normal(size=dim) * scale for scale in np.linspace(0.001, 0.1, n)]
    out = decode_sum(ring_sum([enc.encode(u, rng=rng) for u in ups], p.bits),
                     num_survivors=n, params=p, rotation_seed=SEED)
    true = sum(clip_l2(u, 1.0)[0] for u in ups)
    err2 = float(((out - true) ** 2).sum())
    # per-coordinate error variance in [n sigma^2 * (dgauss var ratio), n (sigma^2 + gamma^2/4)]
    lo_var = n * discrete_gaussian_variance(p.scaled_stddev**2) * p.gamma**2
    hi_var = n * (p.local_stddev**2 + p.gamma**2 / 4)
    assert stats.chi2.ppf(1e-6, dim) * lo_var < err2 < stats.chi2.ppf(1 - 1e-6, dim) * hi_var


def test_low_noise_decode_is_the_clipped_sum() -> None:
    n, dim = 5, 700
    p = ddg_parameters(clip_norm=3.0, dim=dim, expected_sites=n, bits=32, noise_multiplier=1e-3)
    enc = DDGEncoder(p, rotation_seed=SEED)
    rng = np.random.default_rng(4)
    ups = [rng.normal(size=dim) * s for s in (0.01, 0.05, 0.1, 0.5, 1.0)]
    out = decode_sum(ring_sum([enc.encode(u, rng=rng) for u in ups], p.bits),
                     num_survivors=n, params=p, rotation_seed=SEED)
    true = sum(clip_l2(u, 3.0)[0] for u in ups)
    bound = math.sqrt(stats.chi2.ppf(1 - 1e-9, dim) * n * (p.local_stddev**2 + p.gamma**2 / 4))
    assert float(np.linalg.norm(out - true)) < bound < 0.05 * float(np.linalg.norm(true))
    missing_one = true - clip_l2(ups[0], 3.0)[0]
    assert float(np.linalg.norm(out - missing_one)) > bound


@pytest.mark.parametrize("scaled_stddev", [0.6, 2.0, 50.0])
def test_summed_noise_shares_have_intended_variance(scaled_stddev: float) -> None:
    """The headline statistical test: n zero updates -> the lifted ring sum is pure noise with
    variance n * Var[N_Z(0, s^2)] per coordinate (two-sided chi-square at level 1e-6)."""
    n = 12
    p = params_with_stddev(scaled_stddev=scaled_stddev, dim=4096, n=n)
    enc = DDGEncoder(p, rotation_seed=SEED)
    rng = np.random.default_rng(int(scaled_stddev * 10))
    samples = []
    for _ in range(24):  # ~98k coordinates: detects a ~2.5% variance error
        total = ring_sum([enc.encode(np.zeros(p.dim), rng=rng) for _ in range(n)], p.bits)
        samples.append(centered_lift(total, p.bits))
    noise = np.concatenate(samples).astype(np.float64)
    var = n * discrete_gaussian_variance(scaled_stddev**2)
    stat = float((noise**2).sum() / var)
    assert stats.chi2.ppf(5e-7, noise.size) < stat < stats.chi2.ppf(1 - 5e-7, noise.size)
    assert abs(noise.mean()) < 5 * math.sqrt(var / noise.size)


def test_modular_wrap_around_is_harmless_in_range() -> None:
    n = 6
    p = ddg_parameters(clip_norm=2.0, dim=300, expected_sites=n, bits=12, noise_multiplier=1.0)
    enc = DDGEncoder(p, rotation_seed=SEED)
    rng = np.random.default_rng(7)
    encs = [enc.encode(rng.normal(size=300), rng=rng) for _ in range(n)]
    # every site's vector has negative coordinates, i.e. wrapped around 2^bits
    assert all((e >= (1 << (p.bits - 1))).any() for e in encs)
    assert all(int(e.max()) < (1 << p.bits) for e in encs)
    wrapped = centered_lift(ring_sum(encs, p.bits), p.bits)
    exact = np.sum([centered_lift(e, p.bits) for e in encs], axis=0)  # int64, no wrap
    assert np.array_equal(wrapped, exact)
    decode_sum(ring_sum(encs, p.bits), num_survivors=n, params=p, rotation_seed=SEED)


def test_overflow_refused_at_setup_and_detected_at_decode() -> None:
    with pytest.raises(ConfigError, match="bits") as info:
        ddg_parameters(clip_norm=1.0, dim=64, expected_sites=100, bits=3, noise_multiplier=1.0)
    assert "\n" not in str(info.value)
    ok = ddg_parameters(clip_norm=1.0, dim=64, expected_sites=10, bits=16, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="needs"):
        DDGParams(clip_norm=1.0, dim=64, bits=16, local_stddev=ok.local_stddev, gamma=ok.gamma / 8,
                  expected_sites=10, max_sites=10, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="max_sites"):
        decode_sum(np.zeros(64, np.uint32), num_survivors=11, params=ok, rotation_seed=SEED)
    # A sum that wrapped (here: garbage spread over the whole ring) is refused, not decoded.
    garbage = np.random.default_rng(0).integers(0, 1 << 16, size=64, dtype=np.uint32)
    with pytest.raises(AggregateOverflow, match="wrap-around"):
        decode_sum(garbage, num_survivors=10, params=ok, rotation_seed=SEED)
    # Sites that encoded on a 4x finer grid than the federation's overflow the same way.
    fine = DDGParams(clip_norm=1.0, dim=64, bits=16, local_stddev=ok.local_stddev / 4,
                     gamma=ok.gamma / 4, expected_sites=1, max_sites=1, noise_multiplier=1.0)
    rng = np.random.default_rng(2)
    e = DDGEncoder(fine, rotation_seed=SEED)
    encs = [e.encode(np.ones(64), rng=rng) for _ in range(10)]
    with pytest.raises(AggregateOverflow):
        decode_sum(ring_sum(encs, 16), num_survivors=10, params=ok, rotation_seed=SEED)


# ----------------------------------------------------------------------------- accounting


def _eps(rdp: np.ndarray, delta: float = 1e-5) -> float:
    eps, _ = opacus_rdp.get_privacy_spent(orders=list(ORDERS), rdp=list(rdp), delta=delta)
    return float(eps)


@pytest.mark.parametrize("q", [1.0, 0.1])
def test_fewer_survivors_means_more_epsilon(q: float) -> None:
    p = ddg_parameters(clip_norm=1.0, dim=10_000, expected_sites=20, bits=18,
                       noise_multiplier=1.0, max_sites=30)
    eps, zs = [], []
    for n in (30, 20, 15, 10, 5, 2, 1):
        pr = ddg_round_privacy(p, num_survivors=n)
        zs.append(pr.effective_noise_multiplier)
        eps.append(_eps(pr.release_rdp(ORDERS, q) * 50))
    assert all(a < b for a, b in zip(eps, eps[1:])), eps
    assert all(a > b for a, b in zip(zs, zs[1:])), zs
    # untrusted survivors are not counted as noise
    assert ddg_round_privacy(p, num_survivors=20, untrusted_sites=10).rho == pytest.approx(
        ddg_round_privacy(p, num_survivors=10).rho)


def test_large_noise_limit_is_the_gaussian_with_inflated_sensitivity() -> None:
    p = ddg_parameters(clip_norm=1.0, dim=1000, expected_sites=16, bits=32,
                       noise_multiplier=1.3, compensate_rounding=False)
    pr = ddg_round_privacy(p, num_survivors=16)
    assert pr.tau < 1e-300
    z = math.sqrt(16) * p.scaled_stddev / p.l2_bound_scaled
    assert np.allclose(pr.rdp(ORDERS), ORDERS / (2 * z**2), rtol=1e-12)
    assert pr.effective_noise_multiplier == pytest.approx(z, rel=1e-12)
    assert p.sensitivity_inflation > 1.0  # rounding is charged, even when tiny
    assert z < 1.3


def test_tau_term_is_charged_for_small_noise_shares() -> None:
    p = params_with_stddev(scaled_stddev=0.55, n=40, dim=64)
    pr = ddg_round_privacy(p, num_survivors=40)
    assert pr.tau > 1e-3
    l2 = pr.l2_sensitivity / (math.sqrt(40) * 0.55)
    assert np.all(pr.rdp(ORDERS) > ORDERS * l2**2 / 2)
    assert np.all(pr.rdp(ORDERS) <= ORDERS * pr.rho + 1e-12)


@pytest.mark.parametrize("q", [0.01, 0.1, 0.5])
def test_release_rdp_between_gaussian_and_unsampled(q: float) -> None:
    p = ddg_parameters(clip_norm=1.0, dim=4096, expected_sites=20, bits=20, noise_multiplier=1.1)
    pr = ddg_round_privacy(p, num_survivors=20)
    ints = np.arange(2.0, 65.0)
    sub = pr.release_rdp(ints, q)
    gauss = opacus_rdp.compute_rdp(q=q, noise_multiplier=pr.effective_noise_multiplier, steps=1,
                                   orders=list(ints))
    plain = pr.rdp(ints)
    assert np.all(sub < plain)  # amplification for q < 1 ...
    # ... never below the exact subsampled Gaussian (integer orders: Mironov et al. is exact there)
    assert np.all(sub >= np.asarray(gauss) * (1 - 1e-9))
    assert _eps(pr.release_rdp(ORDERS, q) * 100) < _eps(pr.rdp(ORDERS) * 100)


def test_compensated_parameters_meet_the_planned_noise_multiplier() -> None:
    for bits, d in ((16, 1 << 14), (20, 5000), (32, 100)):
        p = ddg_parameters(clip_norm=0.5, dim=d, expected_sites=20, bits=bits, noise_multiplier=0.9,
                           max_sites=25)
        assert ddg_round_privacy(p, num_survivors=20).effective_noise_multiplier >= 0.9
        p.check_fits(25)
        with pytest.raises(ConfigError):
            p.check_fits(1000)
    raw = ddg_parameters(clip_norm=0.5, dim=1 << 14, expected_sites=20, bits=16,
                         noise_multiplier=0.9, compensate_rounding=False)
    assert ddg_round_privacy(raw, num_survivors=20).effective_noise_multiplier < 0.9


# ----------------------------------------------------------------------------- attestation, errors


def test_attestation_mismatch_refused() -> None:
    p = ddg_parameters(clip_norm=1.0, dim=100, expected_sites=10, bits=20, noise_multiplier=1.0)
    expected = attestation_for(p, rotation_seed=SEED)
    verify_attestation(DDGEncoder(p, rotation_seed=SEED).attestation(), expected)
    other_seed = DDGEncoder(p, rotation_seed=SEED[::-1]).attestation()
    with pytest.raises(PrivacyError, match="rotation_commitment"):
        verify_attestation(other_seed, expected)
    weaker = ddg_parameters(clip_norm=1.0, dim=100, expected_sites=10, bits=20, noise_multiplier=0.5)
    with pytest.raises(PrivacyError, match="local_stddev") as info:
        verify_attestation(DDGEncoder(weaker, rotation_seed=SEED).attestation(), expected)
    assert "\n" not in str(info.value)
    bigger_c = ddg_parameters(clip_norm=2.0, dim=100, expected_sites=10, bits=20, noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="clip_norm"):
        verify_attestation(DDGEncoder(bigger_c, rotation_seed=SEED).attestation(), expected)
    with pytest.raises(PrivacyError, match="DDGAttestation"):
        verify_attestation(expected.to_dict(), expected)  # type: ignore[arg-type]
    assert SEED.hex() not in str(expected.to_dict())


BAD_PARAMS = [
    (dict(clip_norm=0.0), PrivacyError, "clip norm"),
    (dict(clip_norm=-1.0), PrivacyError, "clip norm"),
    (dict(noise_multiplier=0.0), PrivacyError, "noise multiplier"),
    (dict(noise_multiplier=float("nan")), PrivacyError, "noise multiplier"),
    (dict(bits=33), ConfigError, "bits"),
    (dict(bits=1), ConfigError, "bits"),
    (dict(dim=0), ConfigError, "dim"),
    (dict(expected_sites=0), ConfigError, "expected_sites"),
    (dict(max_sites=5), ConfigError, "max_sites"),
    (dict(beta=1.0), ConfigError, "beta"),
    (dict(beta=-0.1), ConfigError, "beta"),
    (dict(bits=8, noise_multiplier=0.01), PrivacyError, "sigma/gamma"),
]


@pytest.mark.parametrize("override,exc,msg", BAD_PARAMS)
def test_bad_parameters(override: dict, exc: type[Exception], msg: str) -> None:
    kw = dict(clip_norm=1.0, dim=100, expected_sites=10, bits=20, noise_multiplier=1.0)
    kw.update(override)
    with pytest.raises(exc, match=msg) as info:
        ddg_parameters(**kw)
    assert "\n" not in str(info.value)


def test_bad_runtime_inputs() -> None:
    p = ddg_parameters(clip_norm=1.0, dim=100, expected_sites=10, bits=20, noise_multiplier=1.0)
    enc = DDGEncoder(p, rotation_seed=SEED)
    with pytest.raises(UpdateRejected, match="length 100"):
        enc.encode(np.zeros(99), rng=np.random.default_rng(0))
    with pytest.raises(UpdateRejected, match="NaN"):
        enc.encode(np.full(100, np.nan), rng=np.random.default_rng(0))
    with pytest.raises(PrivacyError, match="seed"):
        DDGEncoder(p, rotation_seed=b"abc")
    with pytest.raises(PrivacyError, match="num_survivors"):
        ddg_round_privacy(p, num_survivors=0)
    with pytest.raises(PrivacyError, match="no trusted noise share"):
        ddg_round_privacy(p, num_survivors=3, untrusted_sites=3)
    with pytest.raises(UpdateRejected, match="length 128"):
        decode_sum(np.zeros(100, np.uint32), num_survivors=3, params=p, rotation_seed=SEED)
    with pytest.raises(PrivacyError, match="sample rate"):
        ddg_round_privacy(p, num_survivors=3).release_rdp([2.0], 0.0)
    with pytest.raises(PrivacyError, match="orders"):
        ddg_round_privacy(p, num_survivors=3).release_rdp([1.0], 0.5)
    # production path: rng=None draws fresh randomness from secrets
    a, b = enc.encode(np.zeros(100)), enc.encode(np.zeros(100))
    assert a.dtype == np.uint32 and not np.array_equal(a, b)


@pytest.mark.parametrize("q", [0.001, 0.05, 0.3])
def test_release_bound_formula_at_order_two(q: float) -> None:
    """At alpha = 2: log(1 - q + q e^eps(2)) (Theorem R), above Mironov's log(1 + q^2 (e^(1/z^2) - 1))."""
    p = ddg_parameters(clip_norm=1.0, dim=1000, expected_sites=16, bits=32, noise_multiplier=1.3)
    pr = ddg_round_privacy(p, num_survivors=16)
    assert pr.tau < 1e-300
    z = pr.effective_noise_multiplier
    ours = pr.release_rdp([2.0], q)[0]
    assert ours == pytest.approx(math.log(1 - q + q * math.exp(1 / z**2)), rel=1e-12)
    assert ours > math.log1p(q**2 * math.expm1(1 / z**2))


def test_release_bound_is_the_plain_curve_at_q_one() -> None:
    p = ddg_parameters(clip_norm=1.0, dim=1000, expected_sites=16, bits=20, noise_multiplier=1.0)
    pr = ddg_round_privacy(p, num_survivors=10)
    assert np.array_equal(pr.release_rdp(ORDERS, 1.0), pr.rdp(ORDERS))
    frac = pr.release_rdp([1.01, 2.5, 7.2], 0.2)  # real orders: no rounding to integers needed
    assert np.all(frac < pr.rdp([1.01, 2.5, 7.2]))


def test_rounded_norm_bound_known_values() -> None:
    # c = 10, d = 16, beta = e^-0.5: min(10 + 4, sqrt(100 + 4 + 1 * (10 + 2))) = sqrt(116)
    assert rounded_l2_norm_bound(10.0, math.exp(-0.5), 16) == pytest.approx(math.sqrt(116.0))
    assert rounded_l2_norm_bound(10.0, 0.0, 16) == pytest.approx(14.0)
    # tiny beta: the deterministic bound c + sqrt(d) takes over
    assert rounded_l2_norm_bound(1.0, 1e-300, 4) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="beta"):
        rounded_l2_norm_bound(1.0, 1.0, 4)


def test_unconditional_rounding_exceeds_bound_at_most_beta_often() -> None:
    """Kairouz et al., Lemma: P(||round(z)|| > bound) <= beta, so redraws are rare."""
    beta, d, trials = 0.1, 256, 2000
    rng = np.random.default_rng(8)
    z = rng.normal(size=d)
    z *= 20.0 / np.linalg.norm(z)
    bound = rounded_l2_norm_bound(20.0, beta, d)
    fl = np.floor(z)
    draws = fl + (rng.random((trials, d)) < (z - fl))
    frac = float((np.linalg.norm(draws, axis=1) > bound).mean())
    assert frac <= beta + 5 * math.sqrt(beta * (1 - beta) / trials)


def test_plugs_into_the_federation_rdp_accountant() -> None:
    from secure_fedrl.privacy.accountants import RDP_ORDERS, RDPAccountant, RDPCurveStep

    p = ddg_parameters(clip_norm=1.0, dim=5000, expected_sites=20, bits=20, noise_multiplier=1.0,
                       max_sites=30)
    eps = []
    for survivors in (20, 12, 6):
        acct = RDPAccountant()
        pr = ddg_round_privacy(p, num_survivors=survivors)
        acct.apply(RDPCurveStep(tuple(pr.release_rdp(np.asarray(RDP_ORDERS), 0.1)), 100))
        eps.append(acct.get_epsilon(1e-5))
    assert 0 < eps[0] < eps[1] < eps[2] < math.inf


@pytest.mark.parametrize("s, n, dim", [(0.55, 40, 64), (0.7, 3, 16), (2.0, 10, 100)])
def test_rdp_curve_equals_the_theorem_term_by_term(s: float, n: int, dim: int) -> None:
    """Kairouz et al. Thm 1 / Prop 14 written out independently: every term, tau, D1 and rho."""
    p = params_with_stddev(scaled_stddev=s, n=n, dim=dim)
    pr = ddg_round_privacy(p, num_survivors=n)
    d = p.padded_dim
    tau = 10 * sum(math.exp(-2 * math.pi**2 * s**2 * k / (k + 1)) for k in range(1, n))
    assert pr.tau == pytest.approx(tau, rel=1e-12, abs=1e-300)
    d2 = p.l2_bound_scaled
    d1 = d2 * min(math.sqrt(d), d2)
    assert pr.l1_sensitivity == pytest.approx(d1, rel=1e-12) and pr.l2_sensitivity == d2
    l2, l1 = d2 / (math.sqrt(n) * s), d1 / (math.sqrt(n) * s)
    for a in (1.5, 2.0, 7.0, 64.0):
        want = min(a / 2 * l2**2 + tau * d, a / 2 * (l2**2 + 2 * l1 * tau + tau**2 * d),
                   a / 2 * (l2 + math.sqrt(d) * tau) ** 2)
        assert pr.rdp([a])[0] == pytest.approx(want, rel=1e-12)
        q = 0.3
        y = (a - 1) * want  # log(1 - q + q e^y) without overflow
        rel = (y + math.log(q + (1 - q) * math.exp(-y))) / (a - 1)
        assert pr.release_rdp([a], q)[0] == pytest.approx(rel, rel=1e-9)
    rho = 0.5 * min(l2**2 + 2 * l1 * tau + tau**2 * d, (l2 + math.sqrt(d) * tau) ** 2)
    assert pr.rho == pytest.approx(rho, rel=1e-12)
    assert pr.effective_noise_multiplier == pytest.approx(1 / math.sqrt(2 * rho), rel=1e-12)
    assert pr.num_noise_shares == n and pr.dim == d and pr.scaled_stddev == pytest.approx(s)
