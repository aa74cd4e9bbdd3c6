"""REINFORCE with a learned baseline (Williams 1992; Sutton & Barto ch. 13.4), for one site.

Each batch: `num_steps` steps of every vector copy -> Monte-Carlo returns-to-go (lambda = 1; an
episode still running at the batch's end, or cut by the time limit, is bootstrapped with the
critic) -> one gradient step on  -log pi(a|s) * (G - V(s))  +  vf_coef * 1/2 (V(s) - G)^2.

Under trajectory-level DP (dp_training.py) the same per-step loss is used on complete episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

__all__ = ["ReinforceConfig", "reinforce_losses", "train_reinforce"]


@dataclass(frozen=True)
class ReinforceConfig:
    """REINFORCE-with-baseline hyperparameters (per site, per round)."""

    learning_rate: float = 2e-3
    """Step size of the local optimizer."""
    num_steps: int = 128
    """Env steps per vector copy per gradient step (non-DP mode)."""
    gamma: float = 0.99
    """Discount factor of the returns-to-go."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Baseline (critic) regression weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip per step in non-DP mode (0 disables); DP mode clips per trajectory."""
    norm_adv: bool = True
    """Normalise advantages over the batch (non-DP mode only: it would couple trajectories)."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Local optimizer, created fresh each call. SCAFFOLD works with either (option I control
    variates, see fl.strategies.Scaffold)."""
    sgd_momentum: float = 0.0
    """Momentum when optimizer == 'sgd'."""

    def __post_init__(self) -> None:
        checks = [
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.num_steps >= 1, "num_steps must be >= 1"),
            (0.0 <= self.gamma <= 1.0, "gamma must lie in [0, 1]"),
            (self.ent_coef >= 0, "ent_coef must be >= 0"),
            (self.vf_coef >= 0, "vf_coef must be >= 0"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.optimizer in ("adam", "sgd"), "optimizer must be 'adam' or 'sgd'"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"ReinforceConfig: {msg}")


def reinforce_losses(
    policy: ActorCritic,
    cfg: ReinforceConfig,
    obs: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample loss (shape of ``advantages``) and detached diagnostic terms."""
    logp, entropy, value = policy.evaluate(obs, actions)
    pg_loss = -logp * advantages
    v_loss = 0.5 * (value - returns) ** 2
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    terms = {"policy_loss": pg_loss.detach(), "value_loss": v_loss.detach(), "entropy": entropy.detach()}
    return loss, terms


def train_reinforce(
    policy: ActorCritic,
    env: SiteVectorEnv,
    cfg: ReinforceConfig,
    *,
    steps: int | None,
    episodes: int | None,
    generator: torch.Generator,
    corrections: Corrections,
) -> LocalResult:
    """Batches of experience, one policy-gradient step each, until the local budget is spent."""
    timer = Timer()
    params = list(policy.parameters())
    device = params[0].device
    optimizer = make_optimizer(params, kind=cfg.optimizer, lr=cfg.learning_rate, momentum=cfg.sgd_momentum)
    n = env.num_envs
    batch_size = cfg.num_steps * n
    total_steps = 0
    opt_steps = 0
    returns_done: list[float] = []
    diag: dict[str, float] = {}
    while (steps is not None and total_steps < steps) or (episodes is not None and len(returns_done) < episodes):
        ro = collect_rollout(policy, env, num_steps=cfg.num_steps, gamma=cfg.gamma, generator=generator)
        total_steps += batch_size
        returns_done.extend(ro.episode_returns)

        obs = torch.from_numpy(ro.obs.reshape(batch_size, -1)).to(device)
        actions = torch.from_numpy(ro.actions.reshape(batch_size, *ro.actions.shape[2:])).to(device)
        with torch.no_grad():
            values = policy.get_value(obs).cpu().numpy().reshape(cfg.num_steps, n)
            next_value = policy.get_value(torch.from_numpy(ro.next_obs)).cpu().numpy()
        # lambda = 1: advantages are Monte-Carlo returns-to-go minus the baseline.
        adv_np, ret_np = compute_gae(ro.rewards, values, ro.dones, next_value, ro.next_done, cfg.gamma, 1.0)
        advantages = torch.from_numpy(adv_np.reshape(-1)).to(device)
        if cfg.norm_adv and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        returns = torch.from_numpy(ret_np.reshape(-1)).to(device)

        loss, terms = reinforce_losses(policy, cfg, obs, actions, advantages, returns)
        optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        corrections.apply()
        optimizer.step()
        opt_steps += 1
        diag = {k: float(v.mean()) for k, v in terms.items()}
        diag["explained_variance"] = explained_variance(values.reshape(-1), ret_np.reshape(-1))

    diag["sps"] = total_steps / timer.elapsed()
    return LocalResult(
        steps=total_steps,
        episodes=len(returns_done),
        optimizer_steps=opt_steps,
        episode_returns=returns_done,
        diagnostics=diag,
    )
