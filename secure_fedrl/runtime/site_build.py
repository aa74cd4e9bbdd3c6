"""Build a site's `SiteRuntime` from the federation config alone, as a standalone site does.

A site outside the server's process (a `join` process, a Ray site host) derives everything it
needs from the config: its env, its own policy module (initialised from the same seed as the
server's, so a site's first round starts from the server's initial policy), the run's public
privacy mechanism (`PrivacyPlan` without a ledger) and the secure aggregator whose site half it
runs. This is the construction of `runtime.deploy.SiteProcess`, factored so that one host can
build many sites and share the config-derived objects (mechanism, aggregator, strategy) between them.
"""

from __future__ import annotations

from typing import Any

from secure_fedrl.config import Config
from secure_fedrl.fl.strategies import FedAsync, Scaffold, make_strategy
from secure_fedrl.runtime.site import SiteRuntime, initial_policy
from secure_fedrl.runtime.sites import expand_sites


class SiteBuilder:
    """Builds sites of one federation config; `secure`: whether the sites run secure
    aggregation (else they train and hand over plaintext updates: simulate's baselines).

    share_policy: the sites built here lend one torch module to each other, as `simulate`'s
    sites do (the caller must let only one of them train or evaluate at a time); each site still
    keeps its own critic, control variate, residual, budget and keys. Saves a module per site
    (memory, and ~20 ms of orthogonal initialisation each)."""

    def __init__(self, config: Config, *, secure: bool | None = None, share_policy: bool = False) -> None:
        from secure_fedrl.runtime.aggregation import build_aggregator
        from secure_fedrl.runtime.privacy_plan import PrivacyPlan

        self.config = config
        self.specs = expand_sites(config.sites)
        self.strategy = make_strategy(config.strategy.name, **dict(config.strategy.params))
        self.secure = (config.secure_aggregation.enabled and not isinstance(self.strategy, FedAsync)) \
            if secure is None else secure
        self._dim: int | None = None
        self._mechanism: Any = None
        self._aggregator: Any = None
        self._plan_cls, self._build_aggregator = PrivacyPlan, build_aggregator
        self.share_policy = share_policy
        self._shared: tuple[Any, list, Any] | None = None  # (module, federated params, initial critic)

    def _public(self, dim: int) -> tuple[Any, Any]:
        """The run's public mechanism and aggregator (config-derived; one per builder)."""
        if self._mechanism is None:
            # The run's public mechanism, derived from the config at the site (never the server's word).
            mechanism = self._plan_cls(self.config, [s.name for s in self.specs], ledger_path=None)
            width = 2 * dim if isinstance(self.strategy, Scaffold) else dim
            aggregator = self._build_aggregator(self.config, dim=width, privacy=mechanism)
            mechanism.bind(aggregator)
            self._dim, self._mechanism, self._aggregator = dim, mechanism, aggregator
        return self._mechanism, self._aggregator

    def build(self, index: int, *, identity_key: Any = None, env: Any = None) -> SiteRuntime:
        import torch

        from secure_fedrl.rl.envs import make_site_env
        from secure_fedrl.rl.policies import get_flat

        cfg = self.config
        spec = self.specs[index]
        if env is None:
            env = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=spec.num_envs, seed=spec.seed,
                                site=spec.name)
        if self._shared is not None:
            policy, federated, initial_critic = self._shared
        else:
            policy = initial_policy(cfg, env.single_observation_space, env.single_action_space).to(
                torch.device(cfg.federation.device))
            federated = list(policy.shared_parameters(cfg.local.federate_critic))
            initial_critic = get_flat(list(policy.critic_parameters()))  # before any site trains in it
            if self.share_policy:
                self._shared = (policy, federated, initial_critic)
        mechanism, aggregator = self._public(sum(p.numel() for p in federated))
        return SiteRuntime(cfg, spec, index, env=env, policy=policy, federated_params=federated,
                           mechanism=mechanism, aggregator=aggregator if self.secure else None,
                           scaffold=isinstance(self.strategy, Scaffold),
                           prox_mu=float(getattr(self.strategy, "client_prox_mu", 0.0)),
                           identity_key=identity_key, initial_critic=initial_critic)

    @staticmethod
    def spaces_key_of(obs_space: Any, act_space: Any) -> tuple:
        """What one global policy needs all sites to share: observation shape, action kind and shape."""
        return (tuple(obs_space.shape), type(act_space).__name__, tuple(act_space.shape or ()),
                getattr(act_space, "n", None) and int(act_space.n))

    def spaces_key(self, env: Any) -> tuple:
        return self.spaces_key_of(env.single_observation_space, env.single_action_space)
