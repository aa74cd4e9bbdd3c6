"""Measurements of the RL core (run: ``python -m secure_fedrl.rl.bench [throughput|to475]``).

Kept next to the code it measures so bench/ scripts can import the functions; prints tables of
medians, with ratios measured side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from secure_fedrl.rl.envs import make_site_env
from secure_fedrl.rl.evaluate import evaluate
from secure_fedrl.rl.local import train_local
from secure_fedrl.rl.policies import ActorCritic
from secure_fedrl.rl.ppo import PPOConfig
from secure_fedrl.rl.rollout import collect_rollout

__all__ = ["collection_throughput", "steps_to_threshold"]


def collection_throughput(
    env_id: str = "CartPole-v1", *, num_envs: int = 8, num_steps: int = 256, repeats: int = 7
) -> dict[str, float]:
    """Median env steps/s: raw gymnasium SyncVectorEnv with a random policy vs our PPO rollout
    collection (same num_envs), alternated so machine load hits both alike."""
    raw_sps, ppo_sps, ratios = [], [], []
    for rep in range(repeats):
        env = make_site_env(env_id, overrides={}, num_envs=num_envs, seed=rep)
        raw = env.env  # the plain gymnasium vector env, without our wrapper
        t = time.perf_counter()
        for _ in range(num_steps):
            raw.step(raw.action_space.sample())
        r = num_envs * num_steps / (time.perf_counter() - t)
        env = make_site_env(env_id, overrides={}, num_envs=num_envs, seed=rep)
        policy = ActorCritic(env.single_observation_space, env.single_action_space)
        t = time.perf_counter()
        collect_rollout(policy, env, num_steps=num_steps, gamma=0.99, generator=torch.Generator().manual_seed(rep))
        p = num_envs * num_steps / (time.perf_counter() - t)
        raw_sps.append(r)
        ppo_sps.append(p)
        ratios.append(p / r)
    return {
        "random_sps": statistics.median(raw_sps),
        "ppo_collection_sps": statistics.median(ppo_sps),
        "ratio": statistics.median(ratios),
    }


def steps_to_threshold(
    seed: int,
    *,
    env_id: str = "CartPole-v1",
    threshold: float = 475.0,
    cfg: PPOConfig | None = None,
    num_envs: int = 8,
    eval_every: int = 2560,
    eval_episodes: int = 10,
    max_steps: int = 200_000,
) -> int | None:
    """Env steps of single-site PPO until the greedy policy's mean eval return >= threshold."""
    cfg = cfg or PPOConfig()
    torch.manual_seed(seed)
    env = make_site_env(env_id, overrides={}, num_envs=num_envs, seed=seed)
    policy = ActorCritic(env.single_observation_space, env.single_action_space)
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    while steps < max_steps:
        steps += train_local(policy, env, cfg, steps=eval_every, generator=gen).steps
        if np.mean(evaluate(policy, env_id, {}, episodes=eval_episodes, seed=10_000 + steps)) >= threshold:
            return steps
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["throughput", "to475"])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "throughput":
        res = collection_throughput()
        print(f"{'CartPole-v1, 8 envs':34s} {'median steps/s':>15s}")
        print(f"{'random policy, raw SyncVectorEnv':34s} {res['random_sps']:15.0f}")
        print(f"{'PPO rollout collection':34s} {res['ppo_collection_sps']:15.0f}")
        print(f"{'ratio (median of paired runs)':34s} {res['ratio']:15.2f}")
    else:
        rows = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            hit = steps_to_threshold(seed)
            rows.append(hit)
            print(f"seed {seed}: steps to mean eval >= 475: {hit}  ({time.perf_counter() - t:.0f} s)", flush=True)
        done = [r for r in rows if r is not None]
        if done:
            print(f"median {statistics.median(done):.0f}  min {min(done)}  max {max(done)}  "
                  f"({len(done)}/{len(rows)} seeds reached 475 within 200k steps)")


if __name__ == "__main__":
    main()
