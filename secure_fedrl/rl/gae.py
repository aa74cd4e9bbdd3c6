"""Generalized advantage estimation (Schulman et al. 2016), as a pure function.

Convention (CleanRL's): ``dones[t]`` is 1 when observation t is the FIRST of a new episode, i.e.
the step before it ended an episode; ``next_done`` is the same flag for the observation after the
last step. Rewards of truncated (time-limit) episodes are expected to already hold the bootstrap
``gamma * V(final_obs)``, so a done flag always means "do not bootstrap across it".
"""

from __future__ import annotations

import numpy as np

__all__ = ["compute_gae"]


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    next_value: np.ndarray | float,
    next_done: np.ndarray | float,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(advantages, returns)`` with ``returns = advantages + values``.

    Arrays are ``[T]`` or ``[T, num_envs]``; ``next_value``/``next_done`` match one row.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    dones = np.asarray(dones, dtype=np.float64)
    if not (rewards.shape == values.shape == dones.shape) or rewards.ndim not in (1, 2):
        raise ValueError(
            f"rewards, values, dones must share a [T] or [T, N] shape, got "
            f"{rewards.shape}, {values.shape}, {dones.shape}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    num_steps = rewards.shape[0]
    next_value = np.broadcast_to(np.asarray(next_value, dtype=np.float64), rewards.shape[1:])
    next_nonterminal = 1.0 - np.broadcast_to(np.asarray(next_done, dtype=np.float64), rewards.shape[1:])
    advantages = np.zeros_like(rewards)
    lastgaelam = np.zeros(rewards.shape[1:], dtype=np.float64)
    for t in reversed(range(num_steps)):
        if t < num_steps - 1:
            next_nonterminal = 1.0 - dones[t + 1]
            next_value = values[t + 1]
        delta = rewards[t] + gamma * next_value * next_nonterminal - values[t]
        lastgaelam = delta + gamma * lam * next_nonterminal * lastgaelam
        advantages[t] = lastgaelam
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)
