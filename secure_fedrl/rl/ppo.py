"""Proximal Policy Optimization (Schulman et al. 2017), CleanRL-style, for one site's local work.

Read top to bottom: collect a rollout -> GAE(lambda) -> `update_epochs` passes of shuffled
minibatches with the clipped surrogate, (optionally clipped) value loss and entropy bonus ->
repeat until the local budget (env steps or completed episodes) is spent.

Defaults follow rl-zoo's tuned CartPole-v1 PPO (n_envs 8, n_steps 32, gamma 0.98, gae_lambda 0.8,
20 epochs, batch 256, lr 1e-3, clip 0.2, ent 0): it learns CartPole in ~1e5 steps, which is
what a federated run with many short rounds needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.envs import SiteVectorEnv
from secure_fedrl.rl.gae import compute_gae
from secure_fedrl.rl.policies import ActorCritic
from secure_fedrl.rl.rollout import (
    Corrections,
    LocalResult,
    Timer,
    collect_rollout,
    explained_variance,
    make_optimizer,
)

__all__ = ["PPOConfig", "train_ppo"]


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters (per site, per round)."""

    learning_rate: float = 1e-3
    """Step size of the local optimizer."""
    num_steps: int = 32
    """Env steps per vector copy per rollout (rollout batch = num_steps * num_envs)."""
    gamma: float = 0.98
    """Discount factor."""
    gae_lambda: float = 0.8
    """GAE lambda: bias/variance trade-off of the advantage estimate."""
    update_epochs: int = 20
    """Passes over each rollout."""
    num_minibatches: int = 1
    """Minibatches per pass (rollout batch / num_minibatches = minibatch size)."""
    clip_coef: float = 0.2
    """Surrogate clipping range epsilon."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip per optimizer step (0 disables)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    clip_vloss: bool = False
    """Clip the value update like the policy (CleanRL's option; rl-zoo leaves it off)."""
    target_kl: float | None = None
    """Stop the epochs of a rollout early once approx KL exceeds this."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over this call's rollouts (for one long local run;
    in a federation, schedule `learning_rate` per round instead)."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Local optimizer, created fresh each call. Adam learns fastest. SCAFFOLD works with
    either (option I control variates, see fl.strategies.Scaffold)."""
    sgd_momentum: float = 0.0
    """Momentum when optimizer == 'sgd'."""

    def __post_init__(self) -> None:
        checks = [
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.num_steps >= 1, "num_steps must be >= 1"),
            (0.0 <= self.gamma <= 1.0, "gamma must lie in [0, 1]"),
            (0.0 <= self.gae_lambda <= 1.0, "gae_lambda must lie in [0, 1]"),
            (self.update_epochs >= 1, "update_epochs must be >= 1"),
            (self.num_minibatches >= 1, "num_minibatches must be >= 1"),
            (self.clip_coef > 0, "clip_coef must be > 0"),
            (self.ent_coef >= 0, "ent_coef must be >= 0"),
            (self.vf_coef >= 0, "vf_coef must be >= 0"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.target_kl is None or self.target_kl > 0, "target_kl must be > 0 or None"),
            (self.optimizer in ("adam", "sgd"), "optimizer must be 'adam' or 'sgd'"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"PPOConfig: {msg}")


def ppo_losses(
    policy: ActorCritic,
    cfg: PPOConfig,
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample PPO loss (shape of ``advantages``) and detached diagnostics terms.

    Per-sample so that trajectory-level DP can sum it per trajectory; the caller averages it.
    Advantage normalisation is the caller's business (it couples samples).
    """
    new_logp, entropy, new_value = policy.evaluate(obs, actions)
    logratio = new_logp - old_logp
    ratio = logratio.exp()
    pg_loss = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef))
    if cfg.clip_vloss:
        v_clipped = old_values + torch.clamp(new_value - old_values, -cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns) ** 2, (v_clipped - returns) ** 2)
    else:
        v_loss = 0.5 * (new_value - returns) ** 2
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    with torch.no_grad():
        terms = {
            "policy_loss": pg_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": entropy.detach(),
            "approx_kl": ((ratio - 1) - logratio).detach(),
            "clip_frac": ((ratio - 1.0).abs() > cfg.clip_coef).float(),
        }
    return loss, terms


def train_ppo(
    policy: ActorCritic,
    env: SiteVectorEnv,
    cfg: PPOConfig,
    *,
    steps: int | None,
    episodes: int | None,
    generator: torch.Generator,
    corrections: Corrections,
) -> LocalResult:
    """Run PPO rollouts/updates until ``steps`` env steps and/or ``episodes`` episodes are done."""
    timer = Timer()
    params = list(policy.parameters())
    device = params[0].device
    optimizer = make_optimizer(params, kind=cfg.optimizer, lr=cfg.learning_rate, momentum=cfg.sgd_momentum)
    n = env.num_envs
    batch_size = cfg.num_steps * n
    minibatch_size = max(1, batch_size // cfg.num_minibatches)
    planned = math.ceil(steps / batch_size) if steps is not None else None

    total_steps = 0
    opt_steps = 0
    returns_done: list[float] = []
    diag: dict[str, float] = {}
    rollout_idx = 0
    while True:
        if (steps is None or total_steps >= steps) and (episodes is None or len(returns_done) >= episodes):
            break
        if cfg.anneal_lr and planned:
            frac = 1.0 - rollout_idx / planned
            for group in optimizer.param_groups:
                group["lr"] = max(frac, 0.0) * cfg.learning_rate
        rollout_idx += 1

        # 1. Collect experience with the current policy.
        ro = collect_rollout(policy, env, num_steps=cfg.num_steps, gamma=cfg.gamma, generator=generator)
        total_steps += batch_size
        returns_done.extend(ro.episode_returns)

        # 2. Old log-probs and values in one batched pass; GAE(lambda).
        obs = torch.from_numpy(ro.obs.reshape(batch_size, -1)).to(device)
        actions = torch.from_numpy(ro.actions.reshape(batch_size, *ro.actions.shape[2:])).to(device)
        with torch.no_grad():
            old_logp, _, old_values = policy.evaluate(obs, actions)
            next_value = policy.get_value(torch.from_numpy(ro.next_obs)).cpu().numpy()
        old_values_np = old_values.cpu().numpy()
        adv_np, ret_np = compute_gae(
            ro.rewards, old_values_np.reshape(cfg.num_steps, n), ro.dones, next_value, ro.next_done,
            cfg.gamma, cfg.gae_lambda,
        )
        advantages = torch.from_numpy(adv_np.reshape(-1)).to(device)
        returns = torch.from_numpy(ret_np.reshape(-1)).to(device)

        # 3. Minibatch epochs on the clipped surrogate.
        sums: dict[str, float] = {}
        count = 0
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(batch_size, generator=generator).to(device)
            kl_epoch = []
            for start in range(0, batch_size, minibatch_size):
                mb = perm[start : start + minibatch_size]
                mb_adv = advantages[mb]
                if cfg.norm_adv and mb_adv.numel() > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                loss, terms = ppo_losses(
                    policy, cfg, obs[mb], actions[mb], old_logp[mb], mb_adv, returns[mb], old_values[mb]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.mean().backward()
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                corrections.apply()
                optimizer.step()
                opt_steps += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.mean())
                count += 1
                kl_epoch.append(float(terms["approx_kl"].mean()))
            if cfg.target_kl is not None and np.mean(kl_epoch) > cfg.target_kl:
                break
        diag = {k: v / max(count, 1) for k, v in sums.items()}
        diag["explained_variance"] = explained_variance(old_values_np, ret_np.reshape(-1))

    diag["sps"] = total_steps / timer.elapsed()
    return LocalResult(
        steps=total_steps,
        episodes=len(returns_done),
        optimizer_steps=opt_steps,
        episode_returns=returns_done,
        diagnostics=diag,
    )
