"""check_update and weighted_mean."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fedrl.errors import UpdateRejected
from secure_fedrl.fl.updates import VectorError, WeightedSum, check_update, weighted_mean


def test_check_update_accepts_good_vector_and_returns_it():
    v = np.arange(4, dtype=np.float32)
    assert check_update(v, dim=4, site="a") is v


@pytest.mark.parametrize(
    ("vec", "needle"),
    [
        (np.array([0.0, np.nan, 1.0, 2.0], dtype=np.float32), "1 NaN"),
        (np.array([0.0, np.inf, -np.inf, 2.0], dtype=np.float32), "2 Inf"),
        (np.zeros(3, dtype=np.float32), "length 3, expected 4"),
        (np.zeros(5, dtype=np.float32), "length 5, expected 4"),
        (np.zeros((2, 2), dtype=np.float32), "shape (2, 2)"),
        (np.zeros(4, dtype=np.float64), "dtype is float64"),
        (np.zeros(4, dtype=np.int32), "dtype is int32"),
        ([0.0, 0.0, 0.0, 0.0], "is a list"),
    ],
)
def test_check_update_rejects_with_one_line_naming_site(vec, needle):
    with pytest.raises(UpdateRejected) as ei:
        check_update(vec, dim=4, site="hospital-7")
    msg = str(ei.value)
    assert "hospital-7" in msg and needle in msg and "\n" not in msg


def test_check_update_norm_bound():
    v = np.array([3.0, 4.0], dtype=np.float32)  # norm 5
    assert check_update(v, dim=2, site="a", max_norm=5.0) is v
    with pytest.raises(UpdateRejected, match="site 'a': update L2 norm 5 exceeds the bound 4.99"):
        check_update(v, dim=2, site="a", max_norm=4.99)
    with pytest.raises(VectorError, match="max_norm"):
        check_update(v, dim=2, site="a", max_norm=0.0)


def test_check_update_bad_dim_is_caller_bug():
    with pytest.raises(VectorError):
        check_update(np.zeros(1, np.float32), dim=0, site="a")


def test_weighted_mean_by_hand():
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([3.0, 4.0], dtype=np.float32)
    # uniform: ([1,2] + [3,4]) / 2
    np.testing.assert_allclose(weighted_mean([a, b]), [2.0, 3.0])
    # weights 1 and 3 (e.g. env steps): (1·[1,2] + 3·[3,4]) / 4 = [2.5, 3.5]
    out = weighted_mean([a, b], [1, 3])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [2.5, 3.5], rtol=1e-7)
    # a zero weight drops the update
    np.testing.assert_allclose(weighted_mean([a, b], [0.0, 2.0]), b)


def test_weighted_mean_does_not_modify_inputs():
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = a.copy()
    weighted_mean([a, a], [1, 2])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("updates", "weights", "needle"),
    [
        ([], None, "at least one"),
        ([np.zeros(2, np.float32)], [1.0, 2.0], "1 updates but 2 weights"),
        ([np.zeros(2, np.float32)], [-1.0], "weight 0"),
        ([np.zeros(2, np.float32)], [float("nan")], "weight 0"),
        ([np.zeros(2, np.float32)], [0.0], "sum to zero"),
        ([np.zeros(2, np.float32), np.zeros(3, np.float32)], None, "update 1 has length 3"),
        ([np.zeros(2, np.float64)], None, "float32"),
    ],
)
def test_weighted_mean_validation(updates, weights, needle):
    with pytest.raises(VectorError, match=needle):
        weighted_mean(updates, weights)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    dim=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_weighted_mean_matches_numpy_average(n, dim, seed):
    rng = np.random.default_rng(seed)
    ups = [rng.normal(size=dim).astype(np.float32) for _ in range(n)]
    w = rng.uniform(0.1, 10.0, size=n)
    want = np.average(np.stack(ups).astype(np.float64), axis=0, weights=w)
    np.testing.assert_allclose(weighted_mean(ups, list(w)), want, rtol=1e-5, atol=1e-6)


def test_weighted_sum_streams_to_the_same_mean():
    rng = np.random.default_rng(0)
    ups = [rng.normal(size=9).astype(np.float32) for _ in range(5)]
    w = [1.0, 2.0, 0.0, 4.0, 0.5]
    acc = WeightedSum(9)
    with pytest.raises(VectorError, match="no update"):
        acc.mean()
    for u, wi in zip(ups, w):
        acc.add(u, wi)
    assert acc.count == 5 and acc.total_weight == 7.5
    np.testing.assert_allclose(acc.mean(), weighted_mean(ups, w), rtol=1e-5, atol=1e-7)
    with pytest.raises(VectorError, match="length 3, expected 9"):
        acc.add(np.zeros(3, np.float32))
    with pytest.raises(VectorError, match="weight"):
        acc.add(ups[0], -1.0)
