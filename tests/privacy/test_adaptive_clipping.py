"""Adaptive clipping (Andrew et al. 2021): noise split and quantile convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secure_fedrl.errors import ConfigError, PrivacyError
from secure_fedrl.privacy.adaptive_clipping import (
    AdaptiveClippingConfig,
    QuantileClipper,
    next_clip,
    noised_fraction,
    update_noise_multiplier,
)


@pytest.mark.parametrize("z,sigma_b", [(1.0, 5.0), (0.7, 1.0), (2.0, 1.01)])
def test_noise_split_composes_to_total(z, sigma_b):
    z_delta = update_noise_multiplier(z, sigma_b)
    assert z_delta > z
    # Gaussian composition: 1/z^2 = 1/z_delta^2 + 1/(2 sigma_b)^2
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2, rel=1e-12)


@pytest.mark.parametrize("z,sigma_b", [(1.0, 0.5), (2.0, 0.9)])
def test_count_noise_too_small(z, sigma_b):
    with pytest.raises(PrivacyError, match="count_noise_std must exceed"):
        update_noise_multiplier(z, sigma_b)


def test_geometric_update_direction():
    assert next_clip(1.0, 0.9, target_quantile=0.5, learning_rate=0.2) == pytest.approx(math.exp(-0.08))
    assert next_clip(1.0, 0.1, target_quantile=0.5, learning_rate=0.2) > 1.0
    assert next_clip(1.0, 0.5, target_quantile=0.5, learning_rate=0.2) == 1.0


def test_noised_fraction_noise_has_stated_std():
    rng = np.random.default_rng(7)
    norms = np.linspace(0.0, 2.0, 100)
    m, sigma_b = 100.0, 5.0
    draws = np.array([noised_fraction(norms, 1.0, expected_clients=m, count_noise_std=sigma_b,
                                      rng=rng) for _ in range(4000)])
    exact = np.count_nonzero(norms <= 1.0) / m
    assert abs(draws.mean() - exact) < 4 * sigma_b / m / math.sqrt(len(draws))
    assert draws.std() == pytest.approx(sigma_b / m, rel=0.05)


@pytest.mark.parametrize("gamma", [0.3, 0.5, 0.8])
def test_clip_converges_to_quantile(gamma):
    """Norms from a fixed log-normal; C should settle where a gamma fraction lies below it."""
    rng = np.random.default_rng(123)
    m = 100
    config = AdaptiveClippingConfig(initial_clip=0.01, target_quantile=gamma, learning_rate=0.2)
    clipper = QuantileClipper(config, noise_multiplier=1.0, expected_clients=m)
    assert clipper.count_noise_std == m / 20  # the paper's default
    tail = []
    for r in range(400):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=m)
        clip = clipper.update(norms, rng=rng)
        if r >= 300:
            tail.append(clip)
    from scipy.stats import lognorm

    true_quantile = lognorm(s=0.5).ppf(gamma)
    settled = float(np.mean(tail))
    assert lognorm(s=0.5).cdf(settled) == pytest.approx(gamma, abs=0.04)
    assert settled == pytest.approx(true_quantile, rel=0.1)
    assert clipper.rounds == 400


def test_seeded_and_state_round_trip():
    config = AdaptiveClippingConfig(initial_clip=1.0, count_noise_std=2.0)

    def run(seed):
        rng = np.random.default_rng(seed)
        c = QuantileClipper(config, noise_multiplier=0.8, expected_clients=30)
        for _ in range(20):
            c.update(rng.exponential(size=30), rng=rng)
        return c

    a, b = run(1), run(1)
    assert a.clip == b.clip and run(2).clip != a.clip
    c = QuantileClipper(config, noise_multiplier=0.8, expected_clients=30)
    c.load_state_dict(a.state_dict())
    assert c.clip == a.clip and c.rounds == 20
    assert a.update_noise_multiplier == pytest.approx(update_noise_multiplier(0.8, 2.0))
    assert a.accounting_noise_multiplier == 0.8


def test_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="target_quantile"):
        AdaptiveClippingConfig(target_quantile=1.0)
    with pytest.raises(PrivacyError, match="initial_clip"):
        AdaptiveClippingConfig(initial_clip=0.0)
    with pytest.raises(PrivacyError, match="clip must be finite and > 0"):
        noised_fraction([1.0], -1.0, expected_clients=1, count_noise_std=1.0, rng=rng)
    with pytest.raises(PrivacyError, match="norms must be"):
        noised_fraction([float("nan")], 1.0, expected_clients=1, count_noise_std=1.0, rng=rng)
    with pytest.raises(PrivacyError, match="rng must be"):
        noised_fraction([1.0], 1.0, expected_clients=1, count_noise_std=1.0, rng=0)
    with pytest.raises(PrivacyError, match="noise_multiplier"):
        QuantileClipper(AdaptiveClippingConfig(), noise_multiplier=0.0, expected_clients=10)


def test_noised_fraction_counts_centred_bits():
    """Sensitivity 1/2 (what the z_Delta split assumes) needs the count of b_i - 1/2."""
    from secure_fedrl.privacy.adaptive_clipping import noised_fraction

    norms = [0.1, 0.2, 0.3] + [5.0] * 7  # 3 of 10 under the clip, 20 clients expected
    rng = np.random.default_rng(0)
    got = noised_fraction(norms, 1.0, expected_clients=20, count_noise_std=0.0, rng=rng)
    assert got == pytest.approx((3 - 10 / 2) / 20 + 0.5)
