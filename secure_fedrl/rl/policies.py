"""Actor-critic policies and their flat-vector view.

A site only ever hands over one flat float32 vector, so the policy offers an exact round trip
between its parameters and that vector, and says which parameters are federated (the actor, or
the actor and the critic). Separate actor and critic networks (as CleanRL's PPO) keep "federate
the actor only" a clean cut: no shared trunk is touched by a local-only critic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from secure_fedrl.errors import ConfigError

__all__ = ["ActorCritic", "get_flat", "num_params", "set_flat"]


def _layer(in_features: int, out_features: int, std: float) -> nn.Linear:
    """Orthogonal weights with gain ``std`` and zero bias, as CleanRL's ``layer_init``."""
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


def _mlp(in_features: int, hidden_sizes: Sequence[int], out_features: int, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden_sizes:
        layers += [_layer(width, h, math.sqrt(2.0)), nn.Tanh()]
        width = h
    layers.append(_layer(width, out_features, out_std))
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Categorical actor (Discrete) or diagonal Gaussian actor with a state-independent log-std
    (Box), plus a state-value critic. `linear_actor` makes the actor one linear layer (the critic
    keeps `hidden_sizes`): fewer federated parameters, so less DP noise on the mean update.
    `init_log_std` is the Gaussian's initial log-std (exploration around the initial mean).

    Gaussian actions are NOT clipped here: the log-prob is of the unclipped sample (clipping to
    the action bounds happens when the action is passed to the env), which keeps the likelihood
    ratio of PPO exact.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        linear_actor: bool = False,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(observation_space, spaces.Box):
            raise ConfigError(f"ActorCritic needs a Box observation space, got {observation_space}")
        if any(int(h) < 1 for h in hidden_sizes):
            raise ConfigError(f"hidden sizes must be positive, got {tuple(hidden_sizes)}")
        self.obs_dim = int(np.prod(observation_space.shape))
        self._obs_rank = len(observation_space.shape)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        actor_hidden = () if linear_actor else self.hidden_sizes
        if isinstance(action_space, spaces.Discrete):
            self.discrete = True
            self.act_dim = int(action_space.n)
            self.actor = _mlp(self.obs_dim, actor_hidden, self.act_dim, 0.01)
            self.actor_logstd = None
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            self.discrete = False
            self.act_dim = int(action_space.shape[0])
            self.actor = _mlp(self.obs_dim, actor_hidden, self.act_dim, 0.01)
            self.actor_logstd = nn.Parameter(torch.full((1, self.act_dim), float(init_log_std)))
        else:
            raise ConfigError(f"ActorCritic supports Discrete or 1-D Box actions, got {action_space}")
        self.critic = _mlp(self.obs_dim, self.hidden_sizes, 1, 1.0)

    # --- parameter groups --------------------------------------------------------------------
    def actor_parameters(self) -> list[nn.Parameter]:
        params = list(self.actor.parameters())
        if self.actor_logstd is not None:
            params.append(self.actor_logstd)
        return params

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def shared_parameters(self, federate_critic: bool) -> list[nn.Parameter]:
        """The parameters a site sends: the actor, plus the critic when it is federated."""
        return self.actor_parameters() + (self.critic_parameters() if federate_critic else [])

    # --- forward pieces ----------------------------------------------------------------------
    def _obs(self, obs: Tensor | np.ndarray) -> Tensor:
        device = self.critic[0].weight.device
        if not isinstance(obs, Tensor):
            obs = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)
        elif obs.dtype != torch.float32 or obs.device != device:
            obs = obs.to(device=device, dtype=torch.float32)
        if self._obs_rank == 1:
            return obs
        return obs.reshape(*obs.shape[: obs.dim() - self._obs_rank], self.obs_dim)

    def get_value(self, obs: Tensor | np.ndarray) -> Tensor:
        return self.critic(self._obs(obs)).squeeze(-1)

    def _dist_params(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.actor(obs)
        if self.discrete:
            return out, None
        return out, self.actor_logstd.expand_as(out)

    def sample(self, obs: Tensor | np.ndarray, generator: torch.Generator | None = None) -> Tensor:
        """Draw actions using ``generator`` (so rollouts are reproducible from one seed)."""
        obs = self._obs(obs)
        a, logstd = self._dist_params(obs)
        if self.discrete:
            probs = torch.softmax(a, dim=-1)
            flat = probs.reshape(-1, self.act_dim)
            return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
        noise = torch.randn(a.shape, generator=generator, dtype=a.dtype)
        return a + logstd.exp() * noise

    def log_prob_entropy(self, obs: Tensor | np.ndarray, actions: Tensor) -> tuple[Tensor, Tensor]:
        obs = self._obs(obs)
        a, logstd = self._dist_params(obs)
        actions = actions.to(a.device)
        if self.discrete:
            logp_all = torch.log_softmax(a, dim=-1)
            logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            return logp, entropy
        var = torch.exp(2.0 * logstd)
        logp = (-((actions - a) ** 2) / (2.0 * var) - logstd - 0.5 * math.log(2.0 * math.pi)).sum(-1)
        entropy = (0.5 + 0.5 * math.log(2.0 * math.pi) + logstd).sum(-1)
        return logp, entropy

    def act(
        self, obs: Tensor | np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(action, log-prob, value) for a batch of observations."""
        action = self.sample(obs, generator)
        logp, _ = self.log_prob_entropy(obs, action)
        return action, logp, self.get_value(obs)

    def evaluate(self, obs: Tensor | np.ndarray, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log-prob, entropy, value) of given actions; what the losses differentiate."""
        logp, entropy = self.log_prob_entropy(obs, actions)
        return logp, entropy, self.get_value(obs)

    def deterministic_action(self, obs: Tensor | np.ndarray) -> Tensor:
        """Greedy action (argmax / Gaussian mean), unclipped."""
        a, _ = self._dist_params(self._obs(obs))
        return a.argmax(-1) if self.discrete else a

    def forward(self, obs: Tensor) -> Tensor:  # pragma: no cover - nn.Module convention only
        return self.deterministic_action(obs)


def num_params(params: Iterable[Tensor]) -> int:
    return sum(p.numel() for p in params)


def get_flat(params: Iterable[Tensor]) -> np.ndarray:
    """Concatenate parameters, in order, into one float32 vector (a copy)."""
    parts = [p.detach().reshape(-1).to(torch.float32).cpu() for p in params]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(parts).numpy().astype(np.float32, copy=True)


def set_flat(params: Iterable[Tensor], vec: np.ndarray | Tensor) -> None:
    """Write a flat vector back into ``params`` in place (exact inverse of :func:`get_flat`)."""
    params = list(params)
    flat = torch.as_tensor(np.asarray(vec) if not isinstance(vec, Tensor) else vec)
    if flat.dim() != 1:
        raise ValueError(f"flat parameter vector must be 1-D, got shape {tuple(flat.shape)}")
    total = num_params(params)
    if flat.numel() != total:
        raise ValueError(f"flat parameter vector has length {flat.numel()}, the parameters need {total}")
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].reshape(p.shape).to(p.dtype))
            offset += n
