"""Client sampling: seeded, right sizes, right inclusion rates, strict validation."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fedrl.errors import ConfigError
from secure_fedrl.fl.sampling import fixed_sample_size, sample_clients

SITES = [f"site-{i}" for i in range(10)]


def test_same_seed_same_sample_and_input_order_kept():
    a = sample_clients(SITES, rng=np.random.default_rng(3), count=4)
    b = sample_clients(SITES, rng=np.random.default_rng(3), count=4)
    assert a == b and len(a) == 4 and len(set(a)) == 4
    assert a == [s for s in SITES if s in a]
    draws = {tuple(sample_clients(SITES, rng=np.random.default_rng(s), count=4)) for s in range(20)}
    assert len(draws) > 10  # the seed matters


def test_fraction_size_is_floor_with_at_least_one():
    rng = np.random.default_rng(0)
    assert len(sample_clients(SITES, rng=rng, fraction=0.35)) == 3
    assert len(sample_clients(SITES, rng=rng, fraction=0.01)) == 1
    assert sample_clients(SITES, rng=rng, fraction=1.0) == SITES
    assert fixed_sample_size(100, 0.29) == 29  # 0.29·100 = 28.999… in floats


def test_fixed_size_sampling_is_uniform():
    rng = np.random.default_rng(1)
    sites = ["a", "b", "c", "d", "e"]
    counts = dict.fromkeys(sites, 0)
    rounds = 4000
    for _ in range(rounds):
        for s in sample_clients(sites, rng=rng, count=2):
            counts[s] += 1
    for s in sites:  # each site in 2/5 of the rounds; sd = sqrt(4000·0.4·0.6) ≈ 31
        assert abs(counts[s] - 0.4 * rounds) < 5 * 31


def test_poisson_inclusion_rate_and_random_size():
    rng = np.random.default_rng(2)
    rounds, q = 3000, 0.3
    sizes = [len(sample_clients(SITES, rng=rng, fraction=q, poisson=True)) for _ in range(rounds)]
    # mean size n·q = 3, sd of the mean = sqrt(10·0.3·0.7/3000) ≈ 0.026
    assert abs(np.mean(sizes) - 3.0) < 5 * 0.026
    assert 0 in sizes and max(sizes) >= 7  # round size really varies, empty rounds happen


@pytest.mark.parametrize(
    ("site_ids", "kwargs", "needle"),
    [
        (SITES, {}, "exactly one of count or fraction"),
        (SITES, {"count": 2, "fraction": 0.5}, "exactly one of count or fraction"),
        (SITES, {"count": 0}, "count must be in [1, 10]"),
        (SITES, {"count": 11}, "count must be in [1, 10]"),
        (SITES, {"count": 2.0}, "count must be an integer"),
        (SITES, {"count": True}, "count must be an integer"),
        (SITES, {"fraction": 0.0}, "fraction must be in (0, 1]"),
        (SITES, {"fraction": 1.5}, "fraction must be in (0, 1]"),
        (SITES, {"fraction": float("nan")}, "fraction must be in (0, 1]"),
        (SITES, {"fraction": "0.5"}, "fraction must be a number"),
        (SITES, {"count": 3, "poisson": True}, "poisson sampling takes a fraction"),
        ([], {"count": 1}, "site_ids is empty"),
        (["a", "b", "a"], {"count": 1}, "duplicate site ids: a"),
        (["a", ""], {"count": 1}, "non-empty strings"),
        ("abc", {"count": 1}, "not a single string"),
    ],
)
def test_validation(site_ids, kwargs, needle):
    with pytest.raises(ConfigError) as ei:
        sample_clients(site_ids, rng=np.random.default_rng(0), **kwargs)
    assert needle in str(ei.value)


def test_rng_must_be_a_generator():
    with pytest.raises(ConfigError, match="numpy.random.Generator"):
        sample_clients(SITES, rng=np.random.RandomState(0), count=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="numpy.random.Generator"):
        sample_clients(SITES, rng=42, count=2)  # type: ignore[arg-type]
