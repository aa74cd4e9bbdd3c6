"""Moments, shape and exactness of the discrete Gaussian samplers (CKS 2020)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from secure_fedrl.errors import PrivacyError
from secure_fedrl.privacy.discrete_gaussian import (
    discrete_gaussian_pmf,
    discrete_gaussian_variance,
    sample_discrete_gaussian,
    sample_discrete_gaussian_exact,
)

N = 200_000
Z = 5.0  # standard errors allowed: a false failure has probability ~6e-7 per check


@pytest.mark.parametrize("sigma", [0.5, 1.0, 5.0, 100.0, 1e4])
def test_moments(sigma: float) -> None:
    rng = np.random.default_rng(int(sigma * 1000) + 7)
    x = sample_discrete_gaussian(sigma**2, N, rng)
    assert x.dtype == np.int64 and x.shape == (N,)
    var = discrete_gaussian_variance(sigma**2)
    assert var <= sigma**2 + 1e-12
    if sigma >= 1:
        assert var == pytest.approx(sigma**2, rel=1e-3)
    assert abs(x.mean()) <= Z * math.sqrt(var / N)
    # Var of the sample variance ~ (kurtosis - 1) var^2 / N, kurtosis <= 3 for these laws.
    assert abs(x.var() / var - 1.0) <= Z * math.sqrt(2.0 / N)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 5.0])
def test_symmetry(sigma: float) -> None:
    rng = np.random.default_rng(11)
    x = sample_discrete_gaussian(sigma**2, N, rng)
    pos, neg = int((x > 0).sum()), int((x < 0).sum())
    assert stats.binomtest(pos, pos + neg, 0.5).pvalue > 1e-6
    for k in range(1, int(3 * sigma) + 1):
        a, b = int((x == k).sum()), int((x == -k).sum())
        if a + b >= 100:
            assert stats.binomtest(a, a + b, 0.5).pvalue > 1e-6, k


def _chi2_pvalue(x: np.ndarray, sigma2: float) -> float:
    half = int(math.ceil(4 * math.sqrt(sigma2))) + 1
    support = np.arange(-half, half + 1)
    probs = discrete_gaussian_pmf(sigma2, support)
    counts = np.array([(x == k).sum() for k in support], dtype=float)
    tail_p = 1.0 - probs.sum()
    tail_c = x.size - counts.sum()
    observed = np.append(counts, tail_c)
    expected = np.append(probs, tail_p) * x.size
    keep = expected >= 5
    observed = np.append(observed[keep], observed[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    if expected[-1] < 5:  # fold a tiny remainder into the last kept cell
        observed[-2] += observed[-1]
        expected[-2] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


@pytest.mark.parametrize("sigma2", [0.25, 1.0, 2.5, 9.0])
def test_fast_sampler_matches_pmf(sigma2: float) -> None:
    x = sample_discrete_gaussian(sigma2, 100_000, np.random.default_rng(3))
    assert _chi2_pvalue(x, sigma2) > 1e-6


@pytest.mark.parametrize("sigma2", [1.0, Fraction(5, 2)])
def test_exact_sampler_matches_pmf(sigma2: float | Fraction) -> None:
    x = sample_discrete_gaussian_exact(sigma2, 2_000, np.random.default_rng(5))
    assert x.dtype == np.int64
    assert _chi2_pvalue(x, float(sigma2)) > 1e-6


def test_exact_and_fast_agree_in_distribution() -> None:
    rng = np.random.default_rng(9)
    exact = sample_discrete_gaussian_exact(4.0, 2_000, rng)
    fast = sample_discrete_gaussian(4.0, 20_000, rng)
    assert stats.ks_2samp(exact, fast).pvalue > 1e-6  # conservative for discrete data


def test_reproducible_and_shaped() -> None:
    a = sample_discrete_gaussian(7.3, (3, 4), np.random.default_rng(1))
    b = sample_discrete_gaussian(7.3, (3, 4), np.random.default_rng(1))
    assert a.shape == (3, 4) and np.array_equal(a, b)
    assert sample_discrete_gaussian(1.0, 0, np.random.default_rng(1)).shape == (0,)


@settings(max_examples=40, deadline=None)
@given(
    sigma2=st.floats(min_value=1e-3, max_value=1e10, allow_nan=False),
    size=st.integers(min_value=0, max_value=300),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_integer_valued_any_sigma(sigma2: float, size: int, seed: int) -> None:
    x = sample_discrete_gaussian(sigma2, size, np.random.default_rng(seed))
    assert x.dtype == np.int64 and x.shape == (size,)
    # 12 sigma: never exceeded in practice (probability ~1e-32 per sample)
    assert np.all(np.abs(x) <= 12 * math.sqrt(sigma2) + 1)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "x", None])
def test_bad_sigma2(bad: object) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(PrivacyError, match="sigma") as info:
        sample_discrete_gaussian(bad, 10, rng)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    with pytest.raises(PrivacyError):
        sample_discrete_gaussian_exact(bad, 3, rng)  # type: ignore[arg-type]


def test_bad_size_and_rng() -> None:
    with pytest.raises(PrivacyError, match="size"):
        sample_discrete_gaussian(1.0, -1, np.random.default_rng(0))
    with pytest.raises(PrivacyError, match="Generator"):
        sample_discrete_gaussian(1.0, 3, 42)  # type: ignore[arg-type]
