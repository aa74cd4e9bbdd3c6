"""Clipping and central DP-FedAvg (Gaussian noise on the sum of clipped updates)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from secure_fedrl.errors import PrivacyError, UpdateRejected
from secure_fedrl.privacy.central import (
    add_central_noise,
    central_dp_sum,
    clip_and_sum,
)
from secure_fedrl.privacy.clipping import clip_l2

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    vec=arrays(np.float64, st.integers(1, 64), elements=finite),
    c=st.floats(min_value=1e-6, max_value=1e6, allow_nan=False),
)
def test_clip_bound_direction_and_purity(vec: np.ndarray, c: float) -> None:
    before = vec.copy()
    clipped, norm = clip_l2(vec, c)
    assert np.array_equal(vec, before)  # input untouched
    assert norm == pytest.approx(float(np.linalg.norm(vec)))
    assert float(np.linalg.norm(clipped)) <= c
    if norm <= c:
        assert np.array_equal(clipped, vec)
    else:  # same direction, scaled down
        assert np.allclose(clipped * norm / c, vec, rtol=1e-9, atol=1e-9 * norm)


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan"), float("inf"), "one", None])
def test_clip_rejects_bad_norm(c: object) -> None:
    with pytest.raises(PrivacyError, match="clip norm C") as info:
        clip_l2(np.ones(3), c)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_rejects_non_finite_update(bad: float) -> None:
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        clip_l2(np.array([1.0, bad]), 1.0)


def test_clip_and_sum_counts_and_bounds() -> None:
    rng = np.random.default_rng(0)
    ups = [rng.normal(size=50) * s for s in (0.01, 1.0, 10.0)]
    total, n_clipped = clip_and_sum(ups, clip_norm=1.0)
    assert n_clipped == 2
    expected = sum(clip_l2(u, 1.0)[0] for u in ups)
    assert np.allclose(total, expected)
    assert float(np.linalg.norm(total)) <= 3.0
    with pytest.raises(UpdateRejected, match="shape"):
        clip_and_sum([np.ones(3), np.ones(4)], clip_norm=1.0)
    with pytest.raises(UpdateRejected, match="no updates"):
        clip_and_sum([], clip_norm=1.0)


@pytest.mark.parametrize("z,c", [(0.5, 1.0), (1.1, 0.3), (4.0, 2.0)])
def test_central_noise_has_std_z_times_c(z: float, c: float) -> None:
    d = 100_000
    rng = np.random.default_rng(42)
    ups = [rng.normal(size=d) for _ in range(4)]
    total, _ = clip_and_sum(ups, clip_norm=c)
    noised = central_dp_sum(ups, clip_norm=c, noise_multiplier=z, rng=np.random.default_rng(1))
    noise = noised - total
    # two-sided chi-square test of the variance at level 1e-6, and of the mean
    stat = float((noise**2).sum() / (z * c) ** 2)
    assert stats.chi2.ppf(5e-7, d) < stat < stats.chi2.ppf(1 - 5e-7, d)
    assert abs(noise.mean()) < 5 * z * c / math.sqrt(d)


def test_seeded_reproducible_and_unseeded_fresh() -> None:
    s = np.zeros(1000)
    a = add_central_noise(s, clip_norm=1.0, noise_multiplier=1.0, rng=np.random.default_rng(3))
    b = add_central_noise(s, clip_norm=1.0, noise_multiplier=1.0, rng=np.random.default_rng(3))
    assert np.array_equal(a, b)
    c = add_central_noise(s, clip_norm=1.0, noise_multiplier=1.0)
    d = add_central_noise(s, clip_norm=1.0, noise_multiplier=1.0)
    assert not np.array_equal(c, d)  # secrets-seeded: fresh noise each call
    assert np.array_equal(s, np.zeros(1000))


@pytest.mark.parametrize("z", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_noise_multiplier(z: float) -> None:
    with pytest.raises(PrivacyError, match="noise.multiplier"):
        add_central_noise(np.zeros(3), clip_norm=1.0, noise_multiplier=z)


def test_noise_rng_must_be_a_generator() -> None:
    with pytest.raises(PrivacyError, match="Generator"):
        add_central_noise(np.zeros(3), clip_norm=1.0, noise_multiplier=1.0, rng=7)  # type: ignore[arg-type]
