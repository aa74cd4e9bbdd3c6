"""Fast numpy collection path: same distribution as the torch policy, CleanRL done convention,
bootstrapped truncations."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl import ActorCritic, PPOConfig, SiteVectorEnv, make_site_env, train_local
from secure_fedrl.rl.rollout import _draw_noise, _NumpyActor, collect_rollout


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "Pendulum-v1"])
def test_numpy_actor_matches_torch_and_samples_the_right_distribution(env_id):
    torch.manual_seed(0)
    env = gym.make(env_id)
    pol = ActorCritic(env.observation_space, env.action_space)
    with torch.no_grad():
        pol.actor[-1].weight.mul_(100.0)  # make the distribution far from uniform
        if not pol.discrete:
            pol.actor_logstd.fill_(-0.5)
    actor = _NumpyActor(pol)
    obs = np.tile(env.observation_space.sample().astype(np.float32), (20000, 1))
    np.testing.assert_allclose(actor.out(obs[:3]), pol.actor(torch.from_numpy(obs[:3])).detach().numpy(), rtol=1e-5, atol=1e-6)
    noise = _draw_noise(pol, (1, 20000), torch.Generator().manual_seed(1))[0]
    acts = actor.sample(obs, noise)
    logits = pol.actor(torch.from_numpy(obs[:1])).detach()
    if pol.discrete:
        probs = torch.softmax(logits, -1).numpy()[0]
        freq = np.bincount(acts, minlength=len(probs)) / len(acts)
        np.testing.assert_allclose(freq, probs, atol=0.015)
    else:
        assert acts.mean() == pytest.approx(float(logits[0, 0]), abs=0.02)
        assert acts.std() == pytest.approx(np.exp(-0.5), rel=0.03)
    env.close()


def _short_env(seed):
    vec = SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=5)], autoreset_mode=AutoresetMode.SAME_STEP)
    env = SiteVectorEnv(vec, env_id="CartPole-v1", site="short", seed=seed)
    env.reset(seed=seed)
    return env


def test_done_convention_and_truncation_bootstrap():
    torch.manual_seed(0)
    env = _short_env(3)
    pol = ActorCritic(env.single_observation_space, env.single_action_space)
    gamma = 0.9
    ro = collect_rollout(pol, env, num_steps=12, gamma=gamma, generator=torch.Generator().manual_seed(0))
    # A random-ish policy does not fail CartPole within 5 steps: every episode is truncated at 5.
    np.testing.assert_array_equal(ro.dones[:, 0], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    assert ro.next_done[0] == 0 and ro.episode_returns == [5.0, 5.0]
    plain = [t for t in range(12) if t not in (4, 9)]
    np.testing.assert_array_equal(ro.rewards[plain, 0], 1.0)
    # Replay the same actions on a twin env to get the truncated episodes' final observations.
    twin = _short_env(3)
    finals = []
    for t in range(10):
        _, _, _, trunc, info = twin.step(ro.actions[t])
        if trunc[0]:
            finals.append(info["final_obs"][0])
    with torch.no_grad():
        v = pol.get_value(torch.from_numpy(np.stack(finals))).numpy()
    np.testing.assert_allclose(ro.rewards[[4, 9], 0], 1.0 + gamma * v, rtol=1e-5)


def test_rollouts_continue_across_calls():
    torch.manual_seed(0)
    env = make_site_env("CartPole-v1", overrides={}, num_envs=2, seed=0)
    pol = ActorCritic(env.single_observation_space, env.single_action_space)
    gen = torch.Generator().manual_seed(0)
    ro1 = collect_rollout(pol, env, num_steps=5, gamma=0.99, generator=gen)
    ro2 = collect_rollout(pol, env, num_steps=5, gamma=0.99, generator=gen)
    np.testing.assert_array_equal(ro2.obs[0], ro1.next_obs)
    np.testing.assert_array_equal(ro2.dones[0], ro1.next_done)


def test_train_local_needs_a_site_env():
    vec = SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=AutoresetMode.SAME_STEP)
    pol = ActorCritic(vec.single_observation_space, vec.single_action_space)
    with pytest.raises(ConfigError, match="make_site_env"):
        train_local(pol, vec, PPOConfig(), steps=10, generator=torch.Generator())
    next_step = SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(ConfigError, match="SAME_STEP"):
        SiteVectorEnv(next_step, env_id="CartPole-v1", site="x", seed=0)
