"""GAE against a hand-worked trajectory and its lambda = 0 / 1 limits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fedrl.rl.gae import compute_gae


def test_hand_worked_trajectory():
    # obs2 starts a new episode (dones[2] = 1), so step 1 does not bootstrap from values[2].
    rewards = [1.0, 2.0, 3.0]
    values = [0.5, 1.0, 1.5]
    dones = [0.0, 0.0, 1.0]
    adv, ret = compute_gae(rewards, values, dones, next_value=2.0, next_done=0.0, gamma=0.9, lam=0.8)
    # t=2: delta = 3 + 0.9*2.0 - 1.5 = 3.3                     A2 = 3.3
    # t=1: delta = 2 + 0 - 1.0 = 1.0 (episode ended)            A1 = 1.0
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4                      A0 = 1.4 + 0.9*0.8*1.0 = 2.12
    np.testing.assert_allclose(adv, [2.12, 1.0, 3.3], rtol=1e-6)
    np.testing.assert_allclose(ret, [2.62, 2.0, 4.8], rtol=1e-6)


def test_next_done_stops_bootstrap():
    adv, _ = compute_gae([1.0], [0.0], [0.0], next_value=100.0, next_done=1.0, gamma=0.99, lam=0.95)
    np.testing.assert_allclose(adv, [1.0])


def _mc_returns(rewards, gamma, bootstrap):
    out, acc = [], bootstrap
    for r in reversed(rewards):
        acc = r + gamma * acc
        out.append(acc)
    return out[::-1]


@settings(max_examples=40, deadline=None)
@given(
    rewards=st.lists(st.floats(-10, 10), min_size=1, max_size=12),
    gamma=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_lambda_limits(rewards, gamma, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=len(rewards))
    dones = np.zeros(len(rewards))
    nv = float(rng.normal())
    _, ret1 = compute_gae(rewards, values, dones, nv, 0.0, gamma, 1.0)
    np.testing.assert_allclose(ret1, _mc_returns(rewards, gamma, nv), rtol=1e-4, atol=1e-4)
    adv0, _ = compute_gae(rewards, values, dones, nv, 0.0, gamma, 0.0)
    next_values = np.append(values[1:], nv)
    np.testing.assert_allclose(adv0, np.asarray(rewards) + gamma * next_values - values, rtol=1e-4, atol=1e-4)


def test_vectorised_columns_are_independent():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    d = (rng.random((7, 3)) < 0.3).astype(float)
    nv, nd = rng.normal(size=3), np.array([0.0, 1.0, 0.0])
    adv, ret = compute_gae(r, v, d, nv, nd, 0.97, 0.9)
    for j in range(3):
        a_j, r_j = compute_gae(r[:, j], v[:, j], d[:, j], nv[j], nd[j], 0.97, 0.9)
        np.testing.assert_allclose(adv[:, j], a_j, rtol=1e-6)
        np.testing.assert_allclose(ret[:, j], r_j, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rewards=[1.0, 2.0], values=[0.0], dones=[0.0, 0.0]), "shape"),
        (dict(rewards=[1.0], values=[0.0], dones=[0.0], gamma=1.5), "gamma"),
        (dict(rewards=[1.0], values=[0.0], dones=[0.0], lam=-0.1), "lam"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(next_value=0.0, next_done=0.0, gamma=0.9, lam=0.9)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        compute_gae(**args)
