"""Trajectory-level differential privacy for local training (DP-SGD with trajectories as units).

The protected unit is one complete episode. Each round therefore resets the env and collects
complete episodes only (an episode is never split across rounds; episodes still running when
collection stops are discarded). Then, for every noisy step:

1. Poisson-sample the round's N trajectories, each independently with rate q, from the OS
   CSPRNG (``TrajectoryDP.secret_sampling``; the caller's ``torch.Generator`` only under
   ``reproducible_noise``), so the subsampled-Gaussian accountant applies, against the server too;
   N is exactly the ``episodes`` local budget (public), never a data-dependent count;
2. per-trajectory gradient of the trajectory's loss (the sum of its per-step losses) over ALL
   trained parameters, actor and critic, via ``torch.func.vmap(grad(...))`` on padded, masked
   ``[B, T, ...]`` tensors (Opacus's GradSampleModule cannot hold the bare Gaussian log-std
   parameter; torch.func is what Opacus itself uses for such layers);
3. clip each trajectory's gradient to L2 <= C, sum, add N(0, sigma^2 C^2), divide by the expected
   batch size q*N: this is done by Opacus's ``DPOptimizer`` (clip_and_accumulate, add_noise,
   scale_grad), fed with our per-sample gradients.

Everything a trajectory's loss depends on besides the trajectory itself (advantages, returns,
old log-probs) is computed per trajectory from that trajectory and the current parameters only;
nothing is normalised across trajectories (batch advantage normalisation would let one
trajectory change every other trajectory's gradient and break the sensitivity bound).

In DP mode the algorithm config supplies the losses, gamma/lambda, learning rate and optimizer;
its batching knobs (num_steps, update_epochs, num_minibatches, norm_adv, max_grad_norm) are
replaced by TrajectoryDP's (per-trajectory clip C, steps/epochs, q). A trajectory's loss is the
SUM of its per-step losses, the unbiased policy-gradient estimate before clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from secure_fedrl.errors import ConfigError, PrivacyError
from secure_fedrl.privacy.randomness import secret_bernoulli_mask
from secure_fedrl.rl.envs import SiteVectorEnv
from secure_fedrl.rl.gae import compute_gae
from secure_fedrl.rl.policies import ActorCritic
from secure_fedrl.rl.ppo import PPOConfig, ppo_losses
from secure_fedrl.rl.reinforce import ReinforceConfig, reinforce_losses
from secure_fedrl.rl.rollout import Corrections, Episode, LocalResult, Timer, collect_episodes, make_optimizer

__all__ = ["TrajectoryDP", "dp_sgd_steps", "per_trajectory_grads", "train_dp"]


@dataclass(frozen=True)
class TrajectoryDP:
    """Trajectory-level DP-SGD settings for one site."""

    max_grad_norm: float
    """C: every trajectory's gradient (all trained parameters together) is clipped to L2 <= C."""
    noise_multiplier: float
    """sigma: Gaussian noise of std sigma*C is added to each step's summed clipped gradient."""
    sample_rate: float
    """q: each trajectory joins a step's batch independently with this probability (Poisson)."""
    steps: int | None = None
    """Noisy steps per round; give this or ``epochs``."""
    epochs: float | None = None
    """Expected passes over the round's trajectories: steps = ceil(epochs / q). Default 1."""
    allow_zero_noise: bool = False
    """Permit sigma == 0 (clipping only, NO privacy guarantee): for tests and ablations."""
    secret_sampling: bool = True
    """Draw the Poisson episode sample from the OS CSPRNG (`secrets`), not from ``generator``:
    amplification by sampling, against the server too, needs a sample nobody can predict.
    False only under ``privacy.reproducible_noise`` (experiments)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.max_grad_norm, (int, float)) and math.isfinite(self.max_grad_norm)) or self.max_grad_norm <= 0:
            raise PrivacyError(f"TrajectoryDP: max_grad_norm (C) must be a finite number > 0, got {self.max_grad_norm!r}")
        sigma = self.noise_multiplier
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma)) or sigma < 0:
            raise PrivacyError(f"TrajectoryDP: noise_multiplier must be a finite number >= 0, got {sigma!r}")
        if sigma == 0 and not self.allow_zero_noise:
            raise PrivacyError("TrajectoryDP: noise_multiplier must be > 0 (sigma = 0 gives no privacy)")
        q = self.sample_rate
        if not (isinstance(q, (int, float)) and 0 < q <= 1):
            raise PrivacyError(f"TrajectoryDP: sample_rate must lie in (0, 1], got {q!r}")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("TrajectoryDP: give steps or epochs, not both")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"TrajectoryDP: steps must be a positive integer, got {self.steps!r}")
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ConfigError(f"TrajectoryDP: epochs must be > 0, got {self.epochs!r}")

    @property
    def noisy_steps(self) -> int:
        """Noisy steps per round: what the accountant is charged for, at rate ``sample_rate``."""
        if self.steps is not None:
            return self.steps
        epochs = 1.0 if self.epochs is None else float(self.epochs)
        return max(1, math.ceil(epochs / self.sample_rate - 1e-9))


@dataclass
class _Padded:
    """Trajectories padded to ``[N, T, ...]``; ``mask`` marks real steps."""

    obs: Tensor
    actions: Tensor
    mask: Tensor
    advantages: Tensor
    returns: Tensor
    old_logp: Tensor
    old_values: Tensor


def _discounted(rewards: np.ndarray, gamma: float, bootstrap: float) -> np.ndarray:
    out = np.zeros(len(rewards), dtype=np.float64)
    acc = bootstrap
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out


def _prepare(policy: ActorCritic, algo: PPOConfig | ReinforceConfig, episodes: list[Episode]) -> _Padded:
    """Per-trajectory targets from each trajectory alone and the current parameters."""
    n = len(episodes)
    t_max = max(e.length for e in episodes)
    obs = np.zeros((n, t_max, policy.obs_dim), dtype=np.float32)
    if policy.discrete:
        actions = np.zeros((n, t_max), dtype=np.int64)
    else:
        actions = np.zeros((n, t_max, policy.act_dim), dtype=np.float32)
    mask = np.zeros((n, t_max), dtype=np.float32)
    adv = np.zeros((n, t_max), dtype=np.float32)
    ret = np.zeros((n, t_max), dtype=np.float32)
    for i, e in enumerate(episodes):
        obs[i, : e.length] = e.obs.reshape(e.length, -1)
        actions[i, : e.length] = e.actions
        mask[i, : e.length] = 1.0
    obs_t, act_t = torch.from_numpy(obs), torch.from_numpy(actions)
    with torch.no_grad():
        old_logp, _, values = policy.evaluate(obs_t, act_t)
        finals = [e.final_obs for e in episodes]
        boot = np.zeros(n, dtype=np.float64)
        idx = [i for i, f in enumerate(finals) if f is not None]
        if idx:
            boot[idx] = policy.get_value(torch.from_numpy(np.stack([finals[i] for i in idx]))).cpu().numpy()
    values_np = values.numpy()
    for i, e in enumerate(episodes):
        length = e.length
        if isinstance(algo, PPOConfig):
            dones = np.zeros(length, dtype=np.float32)
            a, r = compute_gae(e.rewards, values_np[i, :length], dones, boot[i], 0.0, algo.gamma, algo.gae_lambda)
        else:
            r = _discounted(e.rewards, algo.gamma, boot[i]).astype(np.float32)
            a = r - values_np[i, :length]
        adv[i, :length] = a
        ret[i, :length] = r
    return _Padded(obs_t, act_t, torch.from_numpy(mask), torch.from_numpy(adv), torch.from_numpy(ret), old_logp, values)


class _TrajectoryLoss(nn.Module):
    """Sum of per-step losses of ONE trajectory (the privacy unit); vmapped over trajectories."""

    def __init__(self, policy: ActorCritic, algo: PPOConfig | ReinforceConfig) -> None:
        super().__init__()
        self.policy = policy
        self.algo = algo

    def forward(self, obs, actions, mask, advantages, returns, old_logp, old_values):  # noqa: D401
        if isinstance(self.algo, PPOConfig):
            loss, _ = ppo_losses(self.policy, self.algo, obs, actions, old_logp, advantages, returns, old_values)
        else:
            loss, _ = reinforce_losses(self.policy, self.algo, obs, actions, advantages, returns)
        return (loss * mask).sum()


def per_trajectory_grads(
    policy: ActorCritic, algo: PPOConfig | ReinforceConfig, batch: _Padded, index: Tensor
) -> list[Tensor]:
    """Per-trajectory gradients ``[B, *p.shape]`` for every parameter of ``policy`` (in order)."""
    names = [name for name, _ in policy.named_parameters()]
    params = [p for _, p in policy.named_parameters()]
    if index.numel() == 0:
        return [torch.zeros((0, *p.shape), dtype=p.dtype) for p in params]
    module = _TrajectoryLoss(policy, algo)
    detached = {f"policy.{n}": p.detach() for n, p in zip(names, params)}

    def loss_one(pdict, obs, actions, mask, advantages, returns, old_logp, old_values):
        args = tuple(x.unsqueeze(0) for x in (obs, actions, mask, advantages, returns, old_logp, old_values))
        return functional_call(module, pdict, args)

    g = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0, 0, 0, 0))(
        detached,
        batch.obs[index], batch.actions[index], batch.mask[index], batch.advantages[index],
        batch.returns[index], batch.old_logp[index], batch.old_values[index],
    )
    return [g[f"policy.{n}"] for n in names]


AUDIT_CANARY_HOOK: Callable[[list[Tensor]], list[Tensor] | None] | None = None
"""Audit-only injection point (audit/canary.py, trajectory level); None (off) outside the audit.
Called with the trained parameters at each `train_dp`; returns per parameter ``[k, *p.shape]``
per-sample gradients (gradient canaries) that join the round's N episodes in the pool: sampled,
clipped, summed and noised exactly like episodes (q*N stays at the real N)."""


def dp_sgd_steps(
    params: list[Tensor],
    base: torch.optim.Optimizer,
    dp: TrajectoryDP,
    n_traj: int,
    sample_grads: Callable[[Tensor], list[Tensor]],
    *,
    generator: torch.Generator,
    corrections: Corrections,
    canaries: list[Tensor] | None = None,
) -> list[int]:
    """``dp.noisy_steps`` DP-SGD steps over a pool of ``n_traj`` trajectories (+ audit canaries).

    ``sample_grads(index)`` gives the chosen trajectories' per-sample gradients. Separate from
    `train_dp` so the canary audit's fast mode runs this very mechanism. Returns the batch sizes.
    """
    q = float(dp.sample_rate)
    k = 0 if canaries is None else int(canaries[0].shape[0])
    optimizer = DPOptimizer(
        base,
        noise_multiplier=float(dp.noise_multiplier),
        max_grad_norm=float(dp.max_grad_norm),
        expected_batch_size=q * n_traj,
        loss_reduction="mean",
        generator=generator,
    )
    sizes: list[int] = []
    for _ in range(dp.noisy_steps):
        if dp.secret_sampling:
            chosen = torch.from_numpy(np.flatnonzero(secret_bernoulli_mask(n_traj + k, q))).to(torch.long)
        else:
            chosen = torch.nonzero(torch.rand(n_traj + k, generator=generator) < q).reshape(-1)
        sizes.append(int(chosen.numel()))
        optimizer.zero_grad(set_to_none=True)
        grads = sample_grads(chosen[chosen < n_traj])
        if canaries is not None:  # audit only: the sampled canaries' rows after the episodes'
            grads = [torch.cat([g, c[chosen[chosen >= n_traj] - n_traj].to(g.dtype)]) for g, c in zip(grads, canaries)]
        for p, gs in zip(params, grads):
            p.grad_sample = gs
        if optimizer.pre_step():  # clip each trajectory to C, sum, + N(0, sigma^2 C^2), / (q N)
            corrections.apply()  # FedProx / SCAFFOLD terms: post-processing, no privacy cost
            base.step()
    optimizer.zero_grad(set_to_none=True)
    for p in params:  # leave the parameters plain (no Opacus attributes)
        for attr in ("grad_sample", "summed_grad", "_processed"):
            if hasattr(p, attr):
                delattr(p, attr)
    return sizes


def train_dp(
    policy: ActorCritic,
    env: SiteVectorEnv,
    algo: PPOConfig | ReinforceConfig,
    dp: TrajectoryDP,
    *,
    steps: int | None,
    episodes: int | None,
    generator: torch.Generator,
    corrections: Corrections,
) -> LocalResult:
    """Collect complete episodes, then take ``dp.noisy_steps`` DP-SGD steps on them."""
    if not isinstance(algo, (PPOConfig, ReinforceConfig)):
        raise ConfigError(f"trajectory DP supports PPOConfig or ReinforceConfig, got {type(algo).__name__}")
    if next(policy.parameters()).device.type != "cpu":
        raise ConfigError("trajectory-level DP training runs on CPU (its noise comes from a CPU torch.Generator)")
    if episodes is None or steps is not None:
        raise ConfigError(
            "trajectory-level DP needs the local work in episodes only (the privacy unit; the "
            "expected batch q*N must not depend on private episode lengths)"
        )
    timer = Timer()
    eps, env_steps = collect_episodes(policy, env, min_episodes=episodes, min_steps=0, generator=generator)
    # Copies finishing on the same step can overshoot; keep exactly `episodes` (completion order,
    # ties by copy index) so N, and with it the noise scale q*N, is public.
    eps = eps[:episodes]
    batch = _prepare(policy, algo, eps)
    n_traj = len(eps)
    q = float(dp.sample_rate)

    params = list(policy.parameters())
    base = make_optimizer(params, kind=algo.optimizer, lr=algo.learning_rate, momentum=algo.sgd_momentum)
    canaries = None if AUDIT_CANARY_HOOK is None else AUDIT_CANARY_HOOK(params)
    sizes = dp_sgd_steps(params, base, dp, n_traj, lambda idx: per_trajectory_grads(policy, algo, batch, idx),
                         generator=generator, corrections=corrections, canaries=canaries)

    with torch.no_grad():
        if isinstance(algo, PPOConfig):
            _, terms = ppo_losses(policy, algo, batch.obs, batch.actions, batch.old_logp, batch.advantages,
                                  batch.returns, batch.old_values)
        else:
            _, terms = reinforce_losses(policy, algo, batch.obs, batch.actions, batch.advantages, batch.returns)
    m = batch.mask.sum()
    diag = {k: float((v * batch.mask).sum() / m) for k, v in terms.items()}
    diag["mean_batch_trajectories"] = float(np.mean(sizes)) if sizes else 0.0
    diag["sps"] = env_steps / timer.elapsed()
    returns = [e.total_return for e in eps]
    return LocalResult(
        steps=env_steps,
        episodes=len(eps),
        optimizer_steps=dp.noisy_steps,
        episode_returns=returns,
        diagnostics=diag,
        dp_steps=dp.noisy_steps,
        dp_sample_rate=q,
    )
