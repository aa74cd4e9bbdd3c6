"""Evaluation of a (global) policy on a site's environment.

A fresh env, never the training env: evaluation must not disturb the persistent training env's
state, and seeding it independently makes every site's evaluation reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.envs import make_site_env
from secure_fedrl.rl.pilots import evaluation_overrides
from secure_fedrl.rl.policies import ActorCritic

__all__ = ["DomainEval", "evaluate", "evaluate_with_metrics", "summarize_domain"]


@dataclass(frozen=True)
class DomainEval:
    """An evaluation's returns and, for envs that report them, its domain metrics.

    An env reports domain metrics by defining ``DOMAIN_METRICS`` (name -> higher is better) and
    ``pop_episode_metrics()`` on its unwrapped instance (the pilots in ``rl/pilots``); the
    metrics are the mean over the counted episodes.
    """

    returns: list[float]
    metrics: dict[str, float] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)


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
    return evaluate_with_metrics(policy, env_id, overrides, episodes=episodes, seed=seed, num_envs=num_envs,
                                 site=site).returns


def evaluate_with_metrics(
    policy: ActorCritic,
    env_id: str,
    overrides: Mapping[str, float],
    *,
    episodes: int,
    seed: int,
    num_envs: int | None = None,
    site: str = "?",
    held_out: bool = True,
) -> DomainEval:
    """:func:`evaluate`, plus the env's domain metrics (time in range, Sharpe, ...) if it has any.

    held_out: apply the env's evaluation overrides (the finance desks' held-out window).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"evaluate: episodes must be a positive integer, got {episodes!r}")
    if held_out:
        overrides = {**dict(overrides), **evaluation_overrides(env_id)}
    n = min(episodes, 8) if num_envs is None else int(num_envs)
    env = make_site_env(env_id, overrides=overrides, num_envs=n, seed=seed, site=site)
    try:
        copies = [e.unwrapped for e in getattr(env.env, "envs", [])]
        reports = bool(copies) and all(hasattr(c, "pop_episode_metrics") for c in copies)
        if reports:
            for c in copies:
                c.pop_episode_metrics()
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
        flat = [r for per_env in returns for r in per_env]
        if not reports:
            return DomainEval(returns=flat)
        counted = [m for c, q in zip(copies, quota) for m in c.pop_episode_metrics()[: int(q)]]
        better = dict(getattr(copies[0], "DOMAIN_METRICS", {}))
        keys = sorted({k for m in counted for k in m})
        metrics = {k: float(np.mean([m[k] for m in counted if k in m])) for k in keys}
        return DomainEval(returns=flat, metrics=metrics, higher_is_better={k: better.get(k, True) for k in keys})
    finally:
        env.close()


def summarize_domain(per_site: Mapping[str, DomainEval]) -> dict[str, dict]:
    """Mean over sites and worst site (min where higher is better, else max) of each domain metric."""
    evals = [e for e in per_site.values() if e.metrics]
    if not evals:
        return {}
    keys = sorted({k for e in evals for k in e.metrics})
    mean = {k: float(np.mean([e.metrics[k] for e in evals if k in e.metrics])) for k in keys}
    worst = {}
    for k in keys:
        vals = [e.metrics[k] for e in evals if k in e.metrics]
        worst[k] = float(min(vals) if evals[0].higher_is_better.get(k, True) else max(vals))
    return {"mean": mean, "worst": worst,
            "per_site": {name: e.metrics for name, e in per_site.items() if e.metrics}}
