"""The site's half of a federation: everything that must never leave the site's process.

A `SiteRuntime` holds one site's environment, its local critic, its SCAFFOLD control variate,
its compression residual, its own privacy budget against the server (`SiteGuard`), its
long-term Ed25519 protocol identity and its SecAgg replay history. Per round it trains from the
broadcast global policy, clips / encodes / adds its DDG noise share at home, and takes part in
secure aggregation through a `SiteTransport`, so only masked protocol messages cross.

The same object serves `simulate` (in-memory transport, see `runtime/round.py`) and `join`
(gRPC + mutual TLS); the round code has no branch on which.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from secure_fedrl.config import Config, resolved_threat_model
from secure_fedrl.errors import PrivacyError
from secure_fedrl.fl.compression import Compressor, make_compressor
from secure_fedrl.fl.site import PendingCommit
from secure_fedrl.fl.strategies import ScaffoldClient
from secure_fedrl.privacy.accountants import GaussianStep
from secure_fedrl.privacy.budget import SiteGuard
from secure_fedrl.rl.local import FirstGradient, train_local
from secure_fedrl.rl.policies import ActorCritic, get_flat, set_flat
from secure_fedrl.runtime.aggregation import SiteUpload
from secure_fedrl.runtime.envstate import capture_env_state, restore_env_state
from secure_fedrl.runtime.sites import SiteSpec
from secure_fedrl.secagg.client import RoundHistory

log = logging.getLogger(__name__)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of ints (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def initial_policy(config: Config, observation_space: Any, action_space: Any) -> ActorCritic:
    """The federation's round-0 policy: the same at the server and at every site (from the
    federation seed alone), so a site can start without waiting for a broadcast."""
    torch.manual_seed(derive_seed(config.federation.seed, 0xC0FFEE))
    return ActorCritic(observation_space, action_space, hidden_sizes=config.local.hidden_sizes,
                       linear_actor=config.local.linear_actor, init_log_std=config.local.init_log_std)


@dataclass(frozen=True)
class RoundOrder:
    """The round parameters a broadcast carries besides the policy (JSON `extras` on the wire)."""

    round: int
    round_seed: int
    planned: int
    dim: int  # federated parameters; the broadcast policy holds dim (+ dim of SCAFFOLD's c)
    version: int | None = None  # FedBuff: the global model's version now (sites train ahead of rounds)

    def encode(self) -> bytes:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> "RoundOrder":
        try:
            raw = json.loads(data.decode())
            version = raw.get("version")
            return cls(round=int(raw["round"]), round_seed=int(raw["round_seed"]), planned=int(raw["planned"]),
                       dim=int(raw["dim"]), version=None if version is None else int(version))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise PrivacyError(f"round broadcast: malformed round order ({exc})") from None


class SiteRuntime:
    """One site. `policy` is the torch module training runs in (a site process owns one; the
    in-memory federation lends one module to all its sites, which train one at a time).
    `mechanism` is the run's public privacy plan (config-derived: sigma, DP-SGD, DDG pricing),
    `aggregator` the secure aggregator whose site half (`site_encode`) runs here."""

    def __init__(self, config: Config, spec: SiteSpec, index: int, *, env: Any, policy: Any,
                 federated_params: list[torch.Tensor], mechanism: Any, aggregator: Any = None,
                 scaffold: bool = False, prox_mu: float = 0.0, identity_key: Any = None,
                 initial_critic: np.ndarray | None = None) -> None:
        self.config = config
        self.spec = spec
        self.index = index
        self.env = env
        self.policy = policy
        self.federated_params = federated_params
        self.mechanism = mechanism
        self.aggregator = aggregator
        self.prox_mu = prox_mu
        self.dim = sum(p.numel() for p in federated_params)
        self.local_critic = None if config.local.federate_critic else (
            initial_critic.copy() if initial_critic is not None else get_flat(list(policy.critic_parameters())))
        self.scaffold = ScaffoldClient(self.dim) if scaffold else None
        self.compressor: Compressor = build_compressor(config.compression)
        if identity_key is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            identity_key = Ed25519PrivateKey.generate()
        self.identity_key = identity_key
        self.history = RoundHistory()
        from secure_fedrl.fl.strategies import FedBuff, make_strategy

        strategy = make_strategy(config.strategy.name, **dict(config.strategy.params))
        self.fedbuff = strategy if isinstance(strategy, FedBuff) else None  # staleness weights, our own config's
        p = config.privacy
        threat = resolved_threat_model(config) if p.unit != "none" else "none"
        # gamma mode: each SecAgg+ attempt whose graph this site helps seed fails c_max w.p. 2^-40
        # (SPEC 8): the guard counts them and caps them, also without DP (no epsilon then).
        failure = aggregator.graph_failure() if hasattr(aggregator, "graph_failure") else 0.0
        self.guard = SiteGuard(spec.name, target_epsilon=p.target_epsilon, delta=p.delta,
                               accountant="rdp" if getattr(mechanism, "mechanism", "") == "ddg" else p.accountant,
                               enforce=p.unit == "trajectory" or threat == "server",
                               graph_failure=failure) if p.unit != "none" or failure > 0 else None
        self.pending: PendingCommit | None = None
        self.pending_round = 0
        self.last_round = 0
        self.witnessed: set[int] = set()  # rounds whose ledger head this site countersigned (this session)
        self.signed_heads: dict[int, str] = {}  # seq -> row hash this site ever countersigned (persisted)

    @property
    def name(self) -> str:
        return self.spec.name

    # -- local training --------------------------------------------------------------------------
    def noise_seed(self, *parts: int) -> int:
        """Secret unless privacy is off or `privacy.reproducible_noise` (experiments only)."""
        if self.config.privacy.unit == "none" or self.config.privacy.reproducible_noise:
            return derive_seed(self.config.federation.seed, *parts)
        return secrets.randbits(63)

    def train(self, global_params: np.ndarray, r: int, *, round_seed: int,
              control: np.ndarray | None = None) -> tuple[SiteUpload, Any]:
        """Local training from the global policy; returns the update it would send (never its
        trajectories) and the training result. Proposes, never commits, its state change."""
        cfg = self.config
        set_flat(self.federated_params, global_params)
        if self.local_critic is not None:
            set_flat(list(self.policy.critic_parameters()), self.local_critic)
        device = self.federated_params[0].device
        generator = torch.Generator(device="cpu").manual_seed(self.noise_seed(r, self.index, 3))
        anchor = grad_correction = first_gradient = None
        if self.prox_mu > 0:
            anchor = [p.detach().clone() for p in self.federated_params]
        if self.scaffold is not None:
            grad_correction = split_like(self.scaffold.correction(control), self.federated_params, device)
            first_gradient = FirstGradient()
        result = train_local(
            self.policy, self.env, cfg.algorithm,
            steps=cfg.local.steps or None, episodes=None if cfg.local.steps else cfg.local.episodes,
            generator=generator, prox_mu=self.prox_mu, anchor=anchor, grad_correction=grad_correction,
            federated_params=self.federated_params, dp=self.mechanism.trajectory_dp(self.name),
            first_gradient=first_gradient,
        )
        delta = (get_flat(self.federated_params) - global_params).astype(np.float32)
        if self.local_critic is not None:
            self.local_critic = get_flat(list(self.policy.critic_parameters()))
        proposal_c = None
        if self.scaffold is not None:
            # Option I: c_i+ = the first local gradient at the global parameters (Scaffold's docstring).
            fresh = first_gradient.gradient
            proposal_c = self.scaffold.propose(self.scaffold.control_variate if fresh is None else fresh)
            delta = np.concatenate([delta, proposal_c.delta])
        proposal = self.compressor.propose(delta, np.random.default_rng(derive_seed(cfg.federation.seed, r, self.index, 4)),
                                           round_seed=round_seed)
        self.pending = PendingCommit(self.compressor, proposal, self.scaffold, proposal_c)
        self.pending_round = r
        payload = proposal.payload
        sent = self.compressor.decompress(payload, delta.shape[0])
        weight = float(result.steps) if cfg.strategy.weighting == "steps" else 1.0
        return SiteUpload(site=self.name, vector=sent, weight=weight, nbytes=payload.nbytes), result

    def settle(self, round_id: int, included: bool) -> None:
        """The server's word on round `round_id`: keep this round's proposals if the aggregate
        included our upload, else keep the old c_i / residual (fl/site.py)."""
        if self.pending is not None and self.pending_round == round_id:
            if included:
                self.pending.commit()
            self.pending = None

    # -- privacy at the site ---------------------------------------------------------------------
    def round_price(self, plan: Any) -> Any:
        """This site's cost of taking part, from its own config (never the server's word)."""
        p = self.config.privacy
        if p.unit == "trajectory":
            m = self.mechanism
            return GaussianStep(m.sigma, m.sample_rate, p.noisy_steps)
        if p.unit == "client" and self.aggregator is not None and getattr(self.aggregator, "ddg", False):
            return self.aggregator.round_cost(plan.planned).server
        return None

    def admits(self, plan: Any) -> bool:
        price = self.round_price(plan)
        return self.guard is None or price is None or self.guard.admits(price)

    def charge(self, plan: Any) -> None:
        """Our input (or DP-SGD spend) left the site: charge our own account."""
        price = self.round_price(plan)
        if self.guard is not None and price is not None:
            self.guard.charge(price)

    def encode(self, plan: Any, vector: np.ndarray) -> np.ndarray:
        """Clip, encode, add our DDG noise share: what our SecAgg client masks."""
        return self.encode_attested(plan, vector)[0]

    def encode_attested(self, plan: Any, vector: np.ndarray) -> tuple[np.ndarray, bytes]:
        """`encode` plus our signed DP attestation (SPEC 7.1; b"" without DDG) for the MaskedInput."""
        return self.aggregator.site_encode_attested(
            plan, vector, rng=np.random.default_rng(self.noise_seed(plan.round_id, 8, self.index)),
            signing_key=self.identity_key)

    # -- gamma mode: the SecAgg+ attempts this site helped seed (its guard counts them) -----------
    @property
    def graph_reveals(self) -> int:
        """A_u: SecAgg+ round attempts in which this site sent a GraphReveal (its guard's count,
        persisted, counted before the reveal leaves, aborted attempts included; SPEC 8): this
        count, not the server's ledger, is authoritative for the site's own delta."""
        return 0 if self.guard is None else self.guard.graph_reveals

    def delta_graph_site(self) -> float:
        """A_u 2^-40: what this site adds to its delta for the graph (gamma mode, SPEC 8); its
        guarantee is (eps_u, privacy.delta + delta_graph_site()). 0 outside gamma mode."""
        return 0.0 if self.guard is None else self.guard.delta_graph

    def check_graph_reveal(self) -> None:
        """PrivacyBudgetExceeded if one more GraphReveal would pass the guard's cap (gamma mode)."""
        if self.guard is not None:
            self.guard.check_graph_reveal()

    def count_graph_reveal(self) -> None:
        """A GraphReveal is about to leave: count it (refused, uncounted, past the cap)."""
        if self.guard is not None:
            self.guard.count_graph_reveal()

    def count_resumed_graph_reveal(self) -> None:
        """An in-process run (simulate, Ray) resumes: count one more GraphReveal in gamma mode.
        In process nothing is saved before a reveal leaves (a deployed site persists first), so
        the round in flight when the run stopped may have sent one after the last save, also in
        round 1, before any save: count it (a crash may over-count A_u, never under-count it)."""
        g = self.guard
        if g is not None and g.graph_failure > 0:
            g.restore_graph_reveals(g.graph_reveals + 1)

    def privacy_metrics(self) -> dict[str, Any]:
        """The site's own guarantee for its metrics (sites/<site>/metrics.jsonl, never the
        server's file): epsilon_site at privacy.delta and delta_site = privacy.delta + A_u 2^-40
        under DP; in gamma mode also graph_reveals (A_u), delta_graph_site and the cap."""
        g = self.guard
        if g is None:
            return {}
        row: dict[str, Any] = {}
        if self.config.privacy.unit != "none":
            row["epsilon_site"], row["delta_site"] = g.guarantee()
        if g.graph_failure > 0:
            row.update(graph_reveals=g.graph_reveals, delta_graph_site=g.delta_graph,
                       max_graph_reveals=g.max_graph_reveals)
            row.setdefault("delta_site", g.guarantee()[1])
        return row

    # -- state that survives a restart -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "last_round": self.last_round, "local_critic": self.local_critic,
                "control_variate": None if self.scaffold is None else self.scaffold.control_variate,
                "compressor": self.compressor.state_dict(), "env": capture_env_state(self.env),
                "history": self.history.state_dict(), "signed_heads": dict(self.signed_heads),
                "guard": None if self.guard is None else guard_state(self.guard)}

    def load_state_dict(self, state: dict[str, Any], *, env: bool = True) -> None:
        self.last_round = int(state.get("last_round", 0))
        self.local_critic = state["local_critic"]
        if self.scaffold is not None and state.get("control_variate") is not None:
            self.scaffold.load(state["control_variate"])
        self.compressor.load_state_dict(state["compressor"])
        if env and state.get("env") is not None:
            restore_env_state(self.env, state["env"])
        self.history = RoundHistory(state.get("history", ()))
        self.signed_heads = {int(k): str(v) for k, v in state.get("signed_heads", {}).items()}
        if self.guard is not None:
            if state.get("guard") is not None:
                load_guard_state(self.guard, state["guard"])
            if "graph_reveals" in state:  # a state saved before the guard held the count
                self.guard.restore_graph_reveals(state["graph_reveals"])


def guard_state(guard: SiteGuard) -> dict[str, Any]:
    """A SiteGuard's account as plain data: the applied mechanisms' history and, gamma mode,
    the GraphReveals sent (A_u)."""
    return {"participations": guard.participations, "rounds": guard.budget.rounds_committed,
            "accountant": guard.budget.accountant.state_dict(), "graph_reveals": guard.graph_reveals}


def load_guard_state(guard: SiteGuard, state: dict[str, Any]) -> None:
    guard.participations = int(state["participations"])
    guard.budget.rounds_committed = int(state["rounds"])
    guard.budget.accountant.load_state_dict(state["accountant"])
    guard.restore_graph_reveals(state.get("graph_reveals", 0))


def build_compressor(section: Any) -> Compressor:
    method = {"quantize": "qsgd"}.get(section.method, section.method)
    if method == "none":
        return make_compressor("none")
    if method == "qsgd":
        return make_compressor(method, levels=section.levels, error_feedback=section.error_feedback)
    return make_compressor(method, ratio=section.ratio, error_feedback=section.error_feedback)


def split_like(vec: np.ndarray, params: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    out, offset = [], 0
    for p in params:
        n = p.numel()
        out.append(torch.as_tensor(vec[offset:offset + n], device=device).view_as(p))
        offset += n
    return out


def site_row(r: int, site: str, result: Any, seconds: float) -> dict[str, Any]:
    """One site's own diagnostics of round r (site-local data: never in the server's file)."""
    import math

    returns = list(result.episode_returns)
    diag = {k: float(v) for k, v in result.diagnostics.items()
            if k != "sps" and v is not None and math.isfinite(v)}
    return {
        "round": r, "site": site, "env_steps": int(result.steps), "episodes": len(returns),
        "train_return_mean": float(np.mean(returns)) if returns else None, "diagnostics": diag,
        "train_s": seconds, "env_steps_per_s": result.steps / seconds if seconds > 0 else None,
    }


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
