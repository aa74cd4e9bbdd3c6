"""Antithetic ES (rl/es.py): the estimator, common random numbers, what moves, budgets, errors, learning."""

import numpy as np
import pytest
import torch

from secure_fedrl.config import config_from_dict
from secure_fedrl.errors import ConfigError
from secure_fedrl.rl import ActorCritic, ESConfig, evaluate, get_flat, make_site_env, train_local
from secure_fedrl.rl.es import _run_members, es_gradient


def _setup(seed, env_id="CartPole-v1", overrides=None, num_envs=2):
    torch.manual_seed(seed)
    env = make_site_env(env_id, overrides=overrides or {}, num_envs=num_envs, seed=seed, site="t")
    policy = ActorCritic(env.single_observation_space, env.single_action_space, hidden_sizes=(8,), linear_actor=True)
    return env, policy, torch.Generator().manual_seed(seed)


def test_gradient_weights_each_direction_by_its_normalised_return_difference():
    eps = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = es_gradient(np.array([3.0, -1.0]), eps)
    rms = np.sqrt((9 + 1) / 2)
    np.testing.assert_allclose(g, [3.0 / rms / 2, -1.0 / rms / 2])
    np.testing.assert_allclose(es_gradient(np.array([300.0, -100.0]), eps), g)  # reward scale is divided out
    assert not es_gradient(np.zeros(2), eps).any()  # no information, no step
    with pytest.raises(ValueError):
        es_gradient(np.zeros(3), eps)


def test_pair_members_share_the_day_and_differ_only_by_the_policy():
    """Common random numbers: the same parameters on the same seed return exactly the same, on a
    stochastic env (meals, sensor noise); another seed is another day."""
    env, policy, _ = _setup(0, "secure_fedrl/Hovorka-v0", {"patient_seed": -1, "episode_days": 1})
    theta = get_flat(policy.actor.parameters())
    returns, steps = _run_members(policy, env, [(theta, 11), (theta, 11), (theta, 12)])
    assert returns[0] == returns[1] and returns[2] != returns[0]
    assert steps == 3 * 288


def test_members_with_fewer_copies_than_members_and_early_termination():
    env, policy, _ = _setup(1, num_envs=2)
    theta = get_flat(policy.actor.parameters())
    returns, steps = _run_members(policy, env, [(theta, 5)] * 3)  # 2 copies: batches of 2 and 1
    assert len(set(returns.tolist())) == 1 and steps == 3 * returns[0]  # CartPole: return = length


def test_one_es_step_moves_only_the_actor_mean_and_is_deterministic():
    results = []
    for _ in range(2):
        env, policy, gen = _setup(2)
        critic, log_std = get_flat(policy.critic_parameters()), policy.actor_logstd
        before = get_flat(policy.actor.parameters())
        res = train_local(policy, env, ESConfig(sigma=0.5, learning_rate=0.1), episodes=6, generator=gen)
        after = get_flat(policy.actor.parameters())
        assert np.array_equal(get_flat(policy.critic_parameters()), critic) and log_std is None
        assert res.episodes == 6 and len(res.episode_returns) == 6 and res.optimizer_steps == 1
        assert res.steps == int(sum(res.episode_returns))  # CartPole: every step pays 1
        assert np.linalg.norm(after - before) > 0
        results.append(after)
    np.testing.assert_array_equal(results[0], results[1])


def test_log_std_of_a_gaussian_actor_is_left_alone():
    env, policy, gen = _setup(3, "Pendulum-v1")
    log_std = policy.actor_logstd.detach().clone()
    train_local(policy, env, ESConfig(), episodes=2, generator=gen)
    assert torch.equal(policy.actor_logstd.detach(), log_std)


def test_es_learns_cartpole():
    env, policy, gen = _setup(4, num_envs=4)
    before = np.mean(evaluate(policy, "CartPole-v1", {}, episodes=5, seed=99))
    for _ in range(8):
        train_local(policy, env, ESConfig(sigma=0.5, learning_rate=0.5), episodes=16, generator=gen)
    after = np.mean(evaluate(policy, "CartPole-v1", {}, episodes=5, seed=99))
    assert before < 60 and after >= 150, (before, after)


@pytest.mark.parametrize("kwargs, match", [
    ({"episodes": 3}, "even number"),
    ({"episodes": 0}, "positive integer"),
    ({"steps": 100}, "episodes only"),
    ({"episodes": 2, "prox_mu": 0.1}, "FedProx"),
])
def test_train_local_refuses_what_es_cannot_do(kwargs, match):
    env, policy, gen = _setup(5)
    with pytest.raises(ConfigError, match=match):
        train_local(policy, env, ESConfig(), generator=gen, **kwargs)


@pytest.mark.parametrize("sigma, lr", [(0.0, 0.2), (-1.0, 0.2), (0.1, 0.0), (0.1, float("nan"))])
def test_config_values_are_checked(sigma, lr):
    with pytest.raises(ConfigError, match="local.es"):
        ESConfig(sigma=sigma, learning_rate=lr)


def _raw(**local):
    return {"federation": {"rounds": 1}, "local": {"algorithm": "es", "episodes": 4, **local},
            "sites": [{"name": "a", "env": "CartPole-v1"}]}


@pytest.mark.parametrize("change, match", [
    ({"local": {"episodes": 3}}, "local.episodes: algorithm 'es'"),
    ({"local": {"steps": 128}}, "local.episodes: algorithm 'es'"),
    ({"privacy": {"unit": "trajectory", "target_epsilon": 8.0}}, "local.algorithm: 'es' takes no per-trajectory"),
    ({"strategy": {"name": "fedprox"}}, "local.algorithm: 'es' takes one step"),
    ({"strategy": {"name": "scaffold"}}, "local.algorithm: 'es' takes one step"),
    ({"local": {"ppo": {"learning_rate": 1e-3}}}, "local.ppo: given, but local.algorithm is 'es'"),
])
def test_config_refuses_es_with_what_it_cannot_do(change, match):
    raw = _raw()
    for section, table in change.items():
        raw.setdefault(section, {}).update(table)
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_config_builds_es():
    c = config_from_dict({**_raw(), "local": {"algorithm": "es", "episodes": 4, "es": {"sigma": 0.2}}})
    assert isinstance(c.algorithm, ESConfig) and c.algorithm.sigma == 0.2 and c.algorithm.learning_rate == 0.2


def test_train_es_runs_both_members_of_a_pair_on_the_same_day():
    """With a vanishing perturbation the two members of a pair are one policy: on the same day
    their returns agree; on different days (no common random numbers) they would differ by the day."""
    env, policy, gen = _setup(6, "secure_fedrl/Hovorka-v0", {"patient_seed": -1, "episode_days": 1})
    res = train_local(policy, env, ESConfig(sigma=1e-9), episodes=4, generator=gen)
    r = np.array(res.episode_returns)
    np.testing.assert_allclose(r[0::2], r[1::2], rtol=1e-6)
    assert abs(r[0] - r[2]) > 1e-3  # the pairs themselves are different days
