"""Experience collection shared by the local algorithms.

Throughput: per env step the only work besides the env is the actor's forward pass, done in
numpy on a snapshot of the actor's weights (a few microseconds, against ~100 us for small torch
calls). All randomness for a rollout is drawn up front from the caller's ``torch.Generator`` in
one call, so a rollout is reproducible from one seed. Log-probs and values are then computed in
one batched torch pass after the rollout (the parameters do not change during collection).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.envs import SiteVectorEnv
from secure_fedrl.rl.policies import ActorCritic

__all__ = [
    "Episode",
    "LocalResult",
    "Rollout",
    "collect_episodes",
    "collect_rollout",
    "ensure_started",
    "make_optimizer",
]


@dataclass
class LocalResult:
    """What one site's local work produced (besides the new parameters, which live in the policy)."""

    steps: int
    """Env steps taken, all vector copies together."""
    episodes: int
    """Episodes completed during this local work."""
    optimizer_steps: int
    """Optimizer steps taken (each noisy DP step counts once)."""
    episode_returns: list[float]
    """Undiscounted returns of the episodes completed during this local work."""
    diagnostics: dict[str, float] = field(default_factory=dict)
    """approx_kl, clip_frac, explained_variance, entropy, policy_loss, value_loss, sps (means over
    the last update phase; sps over the whole call)."""
    dp_steps: int = 0
    """Noisy DP-SGD steps taken (trajectory-level DP); the accountant must count every one."""
    dp_sample_rate: float = 0.0
    """Poisson sampling rate of trajectories used by those steps."""


class _NumpyActor:
    """A frozen numpy copy of the actor MLP, for fast per-step sampling."""

    def __init__(self, policy: ActorCritic) -> None:
        linears = [m for m in policy.actor if isinstance(m, nn.Linear)]
        self.layers = [
            (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears
        ]
        self.hidden, self.head = self.layers[:-1], self.layers[-1]
        self.discrete = policy.discrete
        self.std = None if policy.discrete else policy.actor_logstd.detach().exp().cpu().numpy().reshape(-1)

    def out(self, obs: np.ndarray) -> np.ndarray:
        dot, tanh = np.dot, np.tanh
        h = obs
        for w, b in self.hidden:
            h = dot(h, w)
            h += b
            tanh(h, out=h)
        w, b = self.head
        h = dot(h, w)
        h += b
        return h

    def sample(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """``noise``: Gumbel(0,1) per action (categorical, Gumbel-max) or N(0,1) per dim (Gaussian)."""
        out = self.out(obs)
        if self.discrete:
            return np.argmax(out + noise, axis=1)
        return out + self.std * noise


def ensure_started(env: SiteVectorEnv, generator: torch.Generator) -> np.ndarray:
    """The env's current observation; resets it (seeded from ``generator``) if it never started."""
    if not isinstance(env, SiteVectorEnv):
        raise ConfigError(
            f"local training needs a SiteVectorEnv (from make_site_env), got {type(env).__name__}"
        )
    if env.last_obs is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        env.reset(seed=seed)
    return np.asarray(env.last_obs)


def _env_action(policy: ActorCritic, env: SiteVectorEnv, actions: np.ndarray) -> np.ndarray:
    """Gaussian actions are clipped to the env's bounds when stepping, not in the log-prob."""
    if policy.discrete:
        return actions
    space = env.single_action_space
    return np.clip(actions, space.low, space.high).astype(space.dtype)


def _draw_noise(policy: ActorCritic, shape: tuple[int, ...], generator: torch.Generator) -> np.ndarray:
    if policy.discrete:  # Gumbel-max: argmax(logits + G) is an exact categorical sample
        u = torch.rand((*shape, policy.act_dim), generator=generator, dtype=torch.float64)
        return (-torch.log(-torch.log(u.clamp_min(1e-300)))).numpy()
    return torch.randn((*shape, policy.act_dim), generator=generator, dtype=torch.float32).numpy()


@dataclass
class Rollout:
    """``num_steps`` steps of every copy; ``dones`` in the CleanRL convention (see gae.py)."""

    obs: np.ndarray  # [T, N, obs_dim] float32
    actions: np.ndarray  # [T, N] int64 or [T, N, act_dim] float32 (unclipped)
    rewards: np.ndarray  # [T, N] float32, truncations already bootstrapped
    dones: np.ndarray  # [T, N] float32
    next_obs: np.ndarray  # [N, obs_dim]
    next_done: np.ndarray  # [N]
    episode_returns: list[float]


def collect_rollout(
    policy: ActorCritic, env: SiteVectorEnv, *, num_steps: int, gamma: float, generator: torch.Generator
) -> Rollout:
    """Step every copy ``num_steps`` times with the current policy, continuing where the env is.

    Truncated (time-limit) episodes are bootstrapped: ``gamma * V(final_obs)`` is added to the
    last reward, so GAE can treat every done as terminal.
    """
    n = env.num_envs
    obs = ensure_started(env, generator).astype(np.float32).reshape(n, -1)
    first_done = env.last_done.astype(np.float32)
    actor = _NumpyActor(policy)
    sample, step = actor.sample, env.step
    noise = _draw_noise(policy, (num_steps, n), generator)
    obs_list: list[np.ndarray] = []
    act_list: list[np.ndarray] = []
    rew_list: list[np.ndarray] = []
    ended = np.zeros((num_steps, n), dtype=np.bool_)  # ended[t]: step t finished an episode
    finals: list[tuple[int, int, np.ndarray]] = []
    reshape = policy._obs_rank != 1
    discrete = policy.discrete
    env.pop_completed()  # the wrapper records finished episodes; count only this rollout's
    for t in range(num_steps):
        obs_list.append(obs)
        actions = sample(obs, noise[t])
        act_list.append(actions)
        obs, reward, terminated, truncated, info = step(actions if discrete else _env_action(policy, env, actions))
        rew_list.append(reward)
        if "_final_obs" in info:  # SAME_STEP autoreset: some copy finished; bootstrap truncations
            ended[t] = info["_final_obs"]
            for i in np.flatnonzero(truncated & ~terminated):
                finals.append((t, int(i), np.asarray(info["final_obs"][i], dtype=np.float32).reshape(-1)))
        if reshape:
            obs = obs.reshape(n, -1)
    obs = np.asarray(obs, dtype=np.float32)
    obs_buf = np.stack(obs_list).astype(np.float32, copy=False)
    act_buf = np.stack(act_list).astype(np.int64 if discrete else np.float32, copy=False)
    rew_buf = np.stack(rew_list).astype(np.float32)
    done_buf = np.empty((num_steps, n), dtype=np.float32)
    done_buf[0] = first_done
    done_buf[1:] = ended[:-1]
    next_done = ended[-1].astype(np.float32)
    if finals:
        with torch.no_grad():
            v = policy.get_value(torch.from_numpy(np.stack([f[2] for f in finals]))).cpu().numpy()
        for (t, i, _), vi in zip(finals, v):
            rew_buf[t, i] += gamma * vi
    env.last_done = next_done
    return Rollout(obs_buf, act_buf, rew_buf, done_buf, obs, next_done, env.pop_completed()[0])


@dataclass
class Episode:
    """One complete episode (the privacy unit of trajectory-level DP)."""

    obs: np.ndarray  # [T, obs_dim]
    actions: np.ndarray  # [T] or [T, act_dim]
    rewards: np.ndarray  # [T]
    final_obs: np.ndarray | None  # last observation if the episode was truncated (for bootstrapping)

    @property
    def length(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def total_return(self) -> float:
        return float(self.rewards.sum())


def collect_episodes(
    policy: ActorCritic,
    env: SiteVectorEnv,
    *,
    min_episodes: int,
    min_steps: int,
    generator: torch.Generator,
    max_env_steps: int = 10_000_000,
) -> tuple[list[Episode], int]:
    """Reset the env and collect complete episodes until both minimums are met.

    Episodes still running when collection stops are discarded (never split across rounds).
    Returns the episodes and the env steps taken (all copies together, discarded steps included).
    """
    ensure_started(env, generator)
    n = env.num_envs
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    obs, _ = env.reset(seed=seed)
    obs = np.asarray(obs, dtype=np.float32).reshape(n, -1)
    actor = _NumpyActor(policy)
    cur_obs: list[list[np.ndarray]] = [[] for _ in range(n)]
    cur_act: list[list[np.ndarray]] = [[] for _ in range(n)]
    cur_rew: list[list[float]] = [[] for _ in range(n)]
    episodes: list[Episode] = []
    done_steps = 0
    steps = 0
    chunk = 64
    while len(episodes) < min_episodes or done_steps < min_steps:
        noise = _draw_noise(policy, (chunk, n), generator)
        for t in range(chunk):
            actions = actor.sample(obs, noise[t])
            nobs, reward, terminated, truncated, info = env.step(_env_action(policy, env, actions))
            steps += n
            for i in range(n):
                cur_obs[i].append(obs[i])
                cur_act[i].append(actions[i])
                cur_rew[i].append(float(reward[i]))
            done = np.logical_or(terminated, truncated)
            for i in np.flatnonzero(done):
                final = None
                if truncated[i] and not terminated[i]:
                    final = np.asarray(info["final_obs"][i], dtype=np.float32).reshape(-1)
                episodes.append(
                    Episode(
                        obs=np.stack(cur_obs[i]),
                        actions=np.stack(cur_act[i]),
                        rewards=np.asarray(cur_rew[i], dtype=np.float32),
                        final_obs=final,
                    )
                )
                done_steps += len(cur_rew[i])
                cur_obs[i], cur_act[i], cur_rew[i] = [], [], []
            obs = np.asarray(nobs, dtype=np.float32).reshape(n, -1)
            if len(episodes) >= min_episodes and done_steps >= min_steps:
                break
        if steps > max_env_steps:
            raise ConfigError(f"could not collect {min_episodes} complete episodes within {max_env_steps} env steps")
    env.reset(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item()))
    return episodes, steps


def make_optimizer(
    params: list[Tensor], *, kind: Literal["adam", "sgd"], lr: float, momentum: float = 0.0
) -> torch.optim.Optimizer:
    """A fresh local optimizer. Adam (eps 1e-5, as CleanRL) learns fastest; SCAFFOLD uses option I
    control variates, so it is correct with either."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, eps=1e-5)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {kind!r}")


class Corrections:
    """FedProx and SCAFFOLD terms added to the federated parameters' gradients.

    Both are added after gradient-norm clipping (they steer the local drift; clipping them would
    weaken the pull towards the global model exactly when the local gradient is large) and, in DP
    mode, after noising: they depend only on the current parameters and the global ones, so adding
    them is post-processing and costs no privacy.
    """

    def __init__(
        self,
        federated: list[Tensor],
        *,
        prox_mu: float,
        anchor: list[Tensor] | None,
        grad_correction: list[Tensor] | None,
    ) -> None:
        if prox_mu < 0:
            raise ConfigError(f"prox_mu must be >= 0, got {prox_mu}")
        if prox_mu > 0 and anchor is None:
            raise ConfigError("prox_mu > 0 needs an anchor (the global parameters)")
        for name, lst in (("anchor", anchor), ("grad_correction", grad_correction)):
            if lst is not None:
                if len(lst) != len(federated):
                    raise ConfigError(f"{name} has {len(lst)} tensors, the federated parameters {len(federated)}")
                for a, p in zip(lst, federated):
                    if tuple(a.shape) != tuple(p.shape):
                        raise ConfigError(f"{name} tensor shape {tuple(a.shape)} != parameter shape {tuple(p.shape)}")
        self.federated = federated
        self.prox_mu = float(prox_mu)
        self.anchor = [a.detach().clone() for a in anchor] if anchor is not None and prox_mu > 0 else None
        self.correction = [c.detach().clone() for c in grad_correction] if grad_correction is not None else None

    def apply(self) -> None:
        if self.anchor is None and self.correction is None:
            return
        with torch.no_grad():
            for j, p in enumerate(self.federated):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if self.anchor is not None:
                    p.grad.add_(p - self.anchor[j], alpha=self.prox_mu)
                if self.correction is not None:
                    p.grad.add_(self.correction[j])


def explained_variance(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    var_y = float(np.var(y_true))
    return float("nan") if var_y == 0 else float(1.0 - np.var(y_true - y_pred) / var_y)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)
