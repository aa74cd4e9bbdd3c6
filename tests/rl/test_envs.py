"""Per-site overrides really change the dynamics; bad overrides fail with one clear line."""

import gymnasium as gym
import numpy as np
import pytest

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.envs import apply_overrides, make_site_env, sample_overrides, validate_site_env


def _next_state(env_id, overrides, state, action):
    """Put the unwrapped env in ``state``, take ``action``, return the next observation."""
    env = gym.make(env_id)
    apply_overrides(env, overrides, env_id=env_id)
    env.reset(seed=0)
    env.unwrapped.state = np.array(state, dtype=np.float64)
    obs, *_ = env.step(action)
    env.close()
    return np.asarray(obs, dtype=np.float64)


CASES = [
    ("CartPole-v1", [0.0, 0.1, 0.05, -0.1], 1, {"length": 0.25}),
    ("CartPole-v1", [0.0, 0.1, 0.05, -0.1], 1, {"masspole": 0.5}),
    ("CartPole-v1", [0.0, 0.1, 0.05, -0.1], 1, {"force_mag": 15.0}),
    ("CartPole-v1", [0.0, 0.1, 0.05, -0.1], 1, {"gravity": 12.0}),
    ("Pendulum-v1", [0.5, 0.2], np.array([1.0], dtype=np.float32), {"g": 7.0}),
    ("Pendulum-v1", [0.5, 0.2], np.array([1.0], dtype=np.float32), {"m": 1.25}),
    ("Pendulum-v1", [0.5, 0.2], np.array([1.0], dtype=np.float32), {"l": 0.75}),
    ("Acrobot-v1", [0.3, -0.2, 0.1, 0.4], 2, {"LINK_MASS_1": 1.25}),
    ("Acrobot-v1", [0.3, -0.2, 0.1, 0.4], 2, {"link_length_1": 0.75}),
    ("MountainCar-v0", [-0.5, 0.01], 2, {"force": 0.002}),
]


@pytest.mark.parametrize("env_id, state, action, overrides", CASES)
def test_override_changes_dynamics(env_id, state, action, overrides):
    base = _next_state(env_id, {}, state, action)
    changed = _next_state(env_id, overrides, state, action)
    assert not np.allclose(base, changed, atol=1e-7), f"{overrides} did not change {env_id}'s dynamics"


def test_cartpole_derived_constants_are_recomputed():
    env = make_site_env("CartPole-v1", overrides={"masspole": 0.5, "length": 0.75, "masscart": 2.0},
                        num_envs=2, seed=0, site="s")
    for sub in env.env.envs:
        u = sub.unwrapped
        assert u.total_mass == pytest.approx(2.5)
        assert u.polemass_length == pytest.approx(0.375)
    env.close()


def test_cartpole_override_equals_hand_computed_euler_step():
    # CartPole's Euler step written out with the overridden constants: proves the stale
    # total_mass / polemass_length of __init__ are not used.
    g, mc, mp, half, force, tau = 9.8, 1.0, 0.4, 0.3, 10.0, 0.02
    x, x_dot, th, th_dot = 0.0, 0.1, 0.05, -0.1
    total, pml = mc + mp, mp * half
    temp = (force + pml * th_dot**2 * np.sin(th)) / total
    th_acc = (g * np.sin(th) - np.cos(th) * temp) / (half * (4.0 / 3.0 - mp * np.cos(th) ** 2 / total))
    x_acc = temp - pml * th_acc * np.cos(th) / total
    expected = [x + tau * x_dot, x_dot + tau * x_acc, th + tau * th_dot, th_dot + tau * th_acc]
    got = _next_state("CartPole-v1", {"masspole": mp, "length": half}, [x, x_dot, th, th_dot], 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_setting_on_the_wrapper_would_not_work_but_ours_does():
    env = gym.make("CartPole-v1")
    env.length = 5.0  # the gymnasium 1.x trap: lands on the wrapper only
    assert env.unwrapped.length == 0.5
    apply_overrides(env, {"length": 5.0})
    assert env.unwrapped.length == 5.0
    env.close()


def test_pendulum_max_torque_updates_action_space():
    env = make_site_env("Pendulum-v1", overrides={"max_torque": 1.0}, num_envs=2, seed=0)
    assert env.single_action_space.high[0] == pytest.approx(1.0)
    env.close()


def test_all_copies_overridden_and_seeded():
    a = make_site_env("CartPole-v1", overrides={"force": 12.0}, num_envs=3, seed=7, site="a")
    b = make_site_env("CartPole-v1", overrides={"force": 12.0}, num_envs=3, seed=7, site="a")
    assert all(e.unwrapped.force_mag == 12.0 for e in a.env.envs)
    np.testing.assert_array_equal(a.last_obs, b.last_obs)
    acts = np.array([0, 1, 1])
    for _ in range(30):
        oa, ra, *_ = a.step(acts)
        ob, rb, *_ = b.step(acts)
        np.testing.assert_array_equal(oa, ob)
    c = make_site_env("CartPole-v1", overrides={}, num_envs=3, seed=8)
    assert not np.array_equal(c.last_obs, make_site_env("CartPole-v1", overrides={}, num_envs=3, seed=7).last_obs)


@pytest.mark.parametrize(
    "env_id, overrides, fragment",
    [
        ("CartPole-v1", {"lenght": 0.5}, "'lenght'"),
        ("CartPole-v1", {"length": "long"}, "'length' must be a number"),
        ("CartPole-v1", {"length": True}, "'length' must be a number"),
        ("CartPole-v1", {"length": float("inf")}, "finite"),
        ("CartPole-v1", {"render_mode": 1.0}, "not a numeric parameter"),
        ("CartPole-v1", {"action_space": 1.0}, "not a numeric parameter"),
        ("CartPole-v1", {"_secret": 1.0}, "invalid override name"),
        ("Pendulum-v1", {"masspole": 0.1}, "'masspole'"),
        ("CartPole-v1", {"force": 9.0, "force_mag": 10.0}, "twice"),
        ("NoSuchEnv-v0", {}, "not a registered gymnasium env"),
        ("CartPole-v99", {}, "not a registered gymnasium env"),
        ("CartPole-v1", [("length", 0.5)], "overrides must be a table"),
    ],
)
def test_bad_overrides_name_site_env_and_attribute(env_id, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        validate_site_env(env_id, overrides, site="hospital-3")
    msg = str(info.value)
    assert "hospital-3" in msg and env_id in msg and fragment in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError):
        make_site_env(env_id, overrides=overrides, num_envs=1, seed=0, site="hospital-3")


def test_any_real_numeric_attribute_works():
    validate_site_env("CartPole-v1", {"tau": 0.01, "x_threshold": 3.0}, site="s")
    validate_site_env("Acrobot-v1", {"LINK_MOI": 1.1, "link_mass_2": 0.9}, site="s")


@pytest.mark.parametrize("num_envs", [0, -1, 1.5, True])
def test_bad_num_envs(num_envs):
    with pytest.raises(ConfigError, match="num_envs"):
        make_site_env("CartPole-v1", overrides={}, num_envs=num_envs, seed=0)


def test_sample_overrides_reproducible_and_in_range():
    ranges = {"force_mag": (5.0, 15.0), "length": (0.25, 0.75), "masspole": (0.05, 0.5)}
    a = sample_overrides(ranges, np.random.default_rng(3))
    b = sample_overrides(dict(reversed(list(ranges.items()))), np.random.default_rng(3))
    assert a == b
    for k, (lo, hi) in ranges.items():
        assert lo <= a[k] <= hi
    assert sample_overrides(ranges, np.random.default_rng(4)) != a
    validate_site_env("CartPole-v1", a)


@pytest.mark.parametrize("ranges", [{"length": (1.0, 0.5)}, {"length": (0.1,)}, {"length": (0.0, float("nan"))}])
def test_sample_overrides_bad_ranges(ranges):
    with pytest.raises(ConfigError, match="length"):
        sample_overrides(ranges, np.random.default_rng(0))
