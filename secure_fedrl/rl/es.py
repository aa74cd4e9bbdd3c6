"""Antithetic evolution strategies (Salimans et al. 2017, arXiv:1703.03864) for one site.

Why a second family beside the policy gradients: when the effect of an action shows up hours
later through slow dynamics (insulin acts over 1-4 h), per-step exploration noise is averaged
away by the plant and a policy gradient from a few simulated days is mostly noise; under
client-level DP that noise is then drowned again by the mechanism's. ES explores in parameter
space instead: each antithetic pair runs theta + sigma eps and theta - sigma eps of the
deterministic actor on one episode each, both from the SAME env seed (common random numbers:
same meals, same sensor noise), so their return difference measures the policy change and
not the day. The update is one step along

    g = 1/K sum_k (d_k / rms(d)) eps_k,      d_k = R(theta + sigma eps_k) - R(theta - sigma eps_k)

(fitness normalised by the pairs' root-mean-square difference, so the step size does not
depend on the reward's scale). Only the actor's mean network moves; an exploration log-std and
the critic are left as they are (a deterministic policy needs neither).

The local work per round is `local.episodes` episodes (an even number: two per pair). ES is
not a DP-SGD: under client-level DP the site's whole update is clipped and noised as any
other's; trajectory-level DP, FedProx and SCAFFOLD (gradient-step corrections) do not apply.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.envs import SiteVectorEnv
from secure_fedrl.rl.policies import ActorCritic, get_flat, set_flat
from secure_fedrl.rl.rollout import LocalResult, Timer, _env_action, _NumpyActor

__all__ = ["ESConfig", "es_gradient", "train_es"]


@dataclass(frozen=True)
class ESConfig:
    """Evolution-strategies hyperparameters (per site, per round)."""

    sigma: float = 0.1
    """Standard deviation of the parameter perturbations."""
    learning_rate: float = 0.2
    """Step along the normalised gradient estimate (its norm is about sqrt(parameters / pairs))."""

    def __post_init__(self) -> None:
        if not (isinstance(self.sigma, (int, float)) and 0 < self.sigma <= 10):
            raise ConfigError(f"local.es.sigma: must be in (0, 10], got {self.sigma!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate <= 100):
            raise ConfigError(f"local.es.learning_rate: must be in (0, 100], got {self.learning_rate!r}")


def es_gradient(differences: np.ndarray, perturbations: np.ndarray) -> np.ndarray:
    """1/K sum_k (d_k / rms(d)) eps_k; zero when every pair returned the same."""
    d = np.asarray(differences, dtype=np.float64)
    eps = np.asarray(perturbations, dtype=np.float64)
    if d.ndim != 1 or eps.ndim != 2 or eps.shape[0] != d.shape[0] or d.shape[0] == 0:
        raise ValueError(f"es_gradient: need K differences and K perturbation rows, got {d.shape} and {eps.shape}")
    rms = float(np.sqrt(np.mean(d * d)))
    if rms == 0.0 or not np.isfinite(rms):
        return np.zeros(eps.shape[1])
    return (d / rms) @ eps / d.shape[0]


def _run_members(policy: ActorCritic, env: SiteVectorEnv, members: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Undiscounted return of each (actor parameters, env seed) member on one episode; env steps taken.

    Members run num_envs at a time, one per vector copy; a copy whose episode ended keeps being
    stepped (gymnasium autoresets it) but no longer counts.
    """
    scratch = copy.deepcopy(policy)
    actor_params = list(scratch.actor.parameters())
    returns = np.zeros(len(members))
    steps = 0
    n = env.num_envs
    for start in range(0, len(members), n):
        batch = members[start:start + n]
        padded = batch + [batch[-1]] * (n - len(batch))
        actors = []
        for params, _ in padded:
            set_flat(actor_params, params)
            actors.append(_NumpyActor(scratch))
        obs, _ = env.reset(seed=[seed for _, seed in padded])
        done = np.zeros(n, dtype=bool)
        done[len(batch):] = True
        total = np.zeros(n)
        while not done.all():
            out = np.stack([a.out(obs[i:i + 1])[0] for i, a in enumerate(actors)])
            actions = np.argmax(out, axis=1) if policy.discrete else _env_action(policy, env, out)
            obs, reward, terminated, truncated, _ = env.step(actions)
            live = ~done
            total[live] += reward[live]
            steps += int(live.sum())
            done |= np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        returns[start:start + len(batch)] = total[:len(batch)]
    env.pop_completed()  # the members' episodes are not the site's training episodes
    return returns, steps


def train_es(policy: ActorCritic, env: SiteVectorEnv, algo: ESConfig, *, episodes: int,
             generator: torch.Generator) -> LocalResult:
    """One ES step of ``policy``'s actor mean network, in place, from ``episodes``/2 antithetic pairs."""
    if not isinstance(algo, ESConfig):
        raise ConfigError(f"train_es: algo must be an ESConfig, got {type(algo).__name__}")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 2 or episodes % 2:
        raise ConfigError(f"train_es: episodes must be an even number >= 2 (two per antithetic pair), got {episodes!r}")
    timer = Timer()
    actor = list(policy.actor.parameters())
    theta = get_flat(actor).astype(np.float64)
    pairs = episodes // 2
    eps = torch.randn((pairs, theta.size), generator=generator, dtype=torch.float64).numpy()
    seeds = torch.randint(0, 2**31 - 1, (pairs,), generator=generator).tolist()
    members = []
    for k in range(pairs):
        members.append(((theta + algo.sigma * eps[k]).astype(np.float32), int(seeds[k])))
        members.append(((theta - algo.sigma * eps[k]).astype(np.float32), int(seeds[k])))
    returns, steps = _run_members(policy, env, members)
    differences = returns[0::2] - returns[1::2]
    step = algo.learning_rate * es_gradient(differences, eps)
    set_flat(actor, (theta + step).astype(np.float32))
    elapsed = timer.elapsed()
    return LocalResult(
        steps=steps, episodes=episodes, optimizer_steps=1, episode_returns=returns.tolist(),
        diagnostics={"es_return_mean": float(returns.mean()), "es_difference_rms": float(np.sqrt(np.mean(differences ** 2))),
                     "es_step_norm": float(np.linalg.norm(step)), "sps": steps / elapsed if elapsed > 0 else 0.0},
    )
