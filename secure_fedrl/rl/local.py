"""One entry point for a site's local work in a round: :func:`train_local`.

The caller (the round loop) owns the env, which persists across rounds, and the policy, whose
parameters it loaded from the global model; afterwards it reads the new parameters back with
``get_flat(policy.shared_parameters(...))``. Everything random comes from ``generator``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.dp_training import TrajectoryDP, train_dp
from secure_fedrl.rl.envs import SiteVectorEnv
from secure_fedrl.rl.es import ESConfig, train_es
from secure_fedrl.rl.policies import ActorCritic
from secure_fedrl.rl.ppo import PPOConfig, train_ppo
from secure_fedrl.rl.reinforce import ReinforceConfig, train_reinforce
from secure_fedrl.rl.rollout import Corrections, LocalResult

__all__ = ["FirstGradient", "LocalResult", "train_local"]


class FirstGradient:
    """Records the federated parameters' gradient at the first optimizer step of `train_local`.

    That step is taken at the global parameters x (nothing has moved yet), after the trainer's
    own processing (gradient-norm clipping; under trajectory DP per-trajectory clipping and noise,
    so recording it is post-processing) and before the FedProx/SCAFFOLD terms are added. It is
    SCAFFOLD's option-I control variate c_i⁺ = ∇f_i(x), at no extra gradient pass.
    """

    def __init__(self) -> None:
        self.gradient: np.ndarray | None = None
        """Flat float32, in the order of ``federated_params``; None until a step was taken."""


class _RecordingCorrections(Corrections):
    def __init__(self, federated: list[Tensor], *, probe: FirstGradient, **kwargs) -> None:
        super().__init__(federated, **kwargs)
        self.probe = probe

    def apply(self) -> None:
        if self.probe.gradient is None:
            parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                     .to(torch.float32).cpu() for p in self.federated]
            self.probe.gradient = torch.cat(parts).numpy().astype(np.float32, copy=True)
        super().apply()


def _check_budget(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"train_local: {name} must be a positive integer, got {value!r}")


def train_local(
    policy: ActorCritic,
    env: SiteVectorEnv,
    algo: PPOConfig | ReinforceConfig | ESConfig,
    *,
    steps: int | None = None,
    episodes: int | None = None,
    generator: Generator,
    prox_mu: float = 0.0,
    anchor: list[Tensor] | None = None,
    grad_correction: list[Tensor] | None = None,
    federated_params: list[Tensor] | None = None,
    dp: TrajectoryDP | None = None,
    first_gradient: FirstGradient | None = None,
) -> LocalResult:
    """Train ``policy`` in place on ``env`` for at least ``steps`` env steps (all copies together)
    and/or ``episodes`` completed episodes.

    prox_mu, anchor: FedProx term mu/2 ||theta - theta_global||^2 over ``federated_params``.
    grad_correction: SCAFFOLD's (c - c_i), added to the federated parameters' gradients before
    every optimizer step. federated_params: the tensors ``anchor``/``grad_correction`` align with
    (default: actor and critic, ``policy.shared_parameters(True)``).
    dp: trajectory-level DP-SGD on complete episodes (see dp_training.py); the result's
    ``dp_steps`` and ``dp_sample_rate`` are what the accountant must be charged.
    first_gradient: filled with the gradient of the first step, taken at the global parameters
    (SCAFFOLD option I; see `FirstGradient`).
    """
    _check_budget("steps", steps)
    _check_budget("episodes", episodes)
    if steps is None and episodes is None:
        raise ConfigError("train_local: give steps or episodes (the local work per round)")
    if not isinstance(generator, Generator):
        raise ConfigError(f"train_local: generator must be a torch.Generator, got {type(generator).__name__}")
    if not isinstance(policy, ActorCritic):
        raise ConfigError(f"train_local: policy must be an ActorCritic, got {type(policy).__name__}")
    if not isinstance(env, SiteVectorEnv):
        raise ConfigError(f"train_local: env must come from make_site_env, got {type(env).__name__}")
    federated = list(federated_params) if federated_params is not None else policy.shared_parameters(True)
    own = {id(p) for p in policy.parameters()}
    if any(id(p) not in own for p in federated):
        raise ConfigError("train_local: federated_params must be parameters of the policy")
    if first_gradient is not None and not isinstance(first_gradient, FirstGradient):
        raise ConfigError(f"train_local: first_gradient must be a FirstGradient, got {type(first_gradient).__name__}")
    if isinstance(algo, ESConfig):
        if dp is not None or prox_mu or grad_correction is not None or first_gradient is not None or steps is not None:
            raise ConfigError("train_local: 'es' takes episodes only, without trajectory DP, FedProx or SCAFFOLD")
        if episodes is None:
            raise ConfigError("train_local: 'es' needs episodes (two per antithetic pair)")
        return train_es(policy, env, algo, episodes=episodes, generator=generator)
    if first_gradient is None:
        corrections = Corrections(federated, prox_mu=prox_mu, anchor=anchor, grad_correction=grad_correction)
    else:
        first_gradient.gradient = None
        corrections = _RecordingCorrections(federated, probe=first_gradient, prox_mu=prox_mu, anchor=anchor,
                                            grad_correction=grad_correction)

    if dp is not None:
        return train_dp(policy, env, algo, dp, steps=steps, episodes=episodes, generator=generator,
                        corrections=corrections)
    if isinstance(algo, PPOConfig):
        return train_ppo(policy, env, algo, steps=steps, episodes=episodes, generator=generator,
                         corrections=corrections)
    if isinstance(algo, ReinforceConfig):
        return train_reinforce(policy, env, algo, steps=steps, episodes=episodes, generator=generator,
                               corrections=corrections)
    raise ConfigError(f"train_local: algo must be PPOConfig, ReinforceConfig or ESConfig, got {type(algo).__name__}")
