"""Evaluation of a (global) policy on a site's environment.

A fresh env, never the training env: evaluation must not disturb the persistent training env's
state, and seeding it independently makes every site's evaluation reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.envs import make_site_env
from secure_fedrl.rl.policies import ActorCritic

__all__ = ["evaluate"]


def evaluate(
    policy: ActorCritic,
    env_id: str,
    overrides: Mapping[str, float],
    *,
    episodes: int,
    seed: int,
    num_envs: int | None = None,
    site: str = "?",
) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes with deterministic (greedy/mean) actions.

    Episodes run on up to ``num_envs`` parallel copies (default: min(episodes, 8)); copy i is
    seeded ``seed + i`` and exactly ``episodes`` episodes are counted, in completion order of a
    fixed schedule, so the result is deterministic.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"evaluate: episodes must be a positive integer, got {episodes!r}")
    n = min(episodes, 8) if num_envs is None else int(num_envs)
    env = make_site_env(env_id, overrides=overrides, num_envs=n, seed=seed, site=site)
    try:
        # Each copy runs a fixed quota of episodes, so which episodes count does not depend on timing.
        quota = np.array([episodes // n + (1 if i < episodes % n else 0) for i in range(n)])
        done_count = np.zeros(n, dtype=np.int64)
        ep_ret = np.zeros(n, dtype=np.float64)
        returns: list[list[float]] = [[] for _ in range(n)]
        obs = np.asarray(env.last_obs, dtype=np.float32)
        space = env.single_action_space
        while (done_count < quota).any():
            with torch.inference_mode():
                act = policy.deterministic_action(torch.from_numpy(obs.reshape(n, -1))).cpu().numpy()
            if policy.discrete:
                act = act.astype(np.int64)
            else:
                act = np.clip(act, space.low, space.high).astype(space.dtype)
            obs, reward, terminated, truncated, _ = env.step(act)
            obs = np.asarray(obs, dtype=np.float32)
            ep_ret += reward
            for i in np.flatnonzero(np.logical_or(terminated, truncated)):
                if done_count[i] < quota[i]:
                    returns[i].append(float(ep_ret[i]))
                    done_count[i] += 1
                ep_ret[i] = 0.0
        return [r for per_env in returns for r in per_env]
    finally:
        env.close()
