"""`secure-fedrl simulate`: the whole federation in one process (the embedded default).

One round, as DESIGN.md draws it: sample sites -> each site trains locally from the global policy
on its own environment and hands over only a flat update vector -> (privacy + secure aggregation,
see `aggregation.py`) -> the ledger records the round's privacy spend -> the strategy turns the
mean update into the next global policy -> evaluation, metrics, checkpoint.

Without privacy (or with `privacy.reproducible_noise`), every random choice of round r derives
from (federation seed, r, site index), so a resumed run continues bit-for-bit. Under privacy the
draws the analysis treats as random (who takes part, episode samples, rounding, noise, the round
seed) come from the OS CSPRNG and are recorded, not re-derived (ledger `participants`); a resumed
run rebuilds what it needs (every site's spend) from the ledger (docs/privacy-model.md).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_fedrl.config import Config
from secure_fedrl.errors import ConfigError, PrivacyBudgetExceeded, UpdateRejected
from secure_fedrl.fl.sampling import sample_clients
from secure_fedrl.fl.site import PendingCommit, commit_accepted
from secure_fedrl.fl.strategies import FedAsync, Scaffold, ScaffoldClient, make_strategy
from secure_fedrl.fl.updates import check_update
from secure_fedrl.rl.envs import make_site_env
from secure_fedrl.rl.evaluate import evaluate_with_metrics, summarize_domain
from secure_fedrl.rl.local import FirstGradient, train_local
from secure_fedrl.rl.policies import ActorCritic, get_flat, set_flat
from secure_fedrl.runtime.aggregation import RoundAggregate, SiteUpload, build_aggregator
from secure_fedrl.fl.compression import Compressor, make_compressor
from secure_fedrl.runtime.envstate import capture_env_state, restore_env_state
from secure_fedrl.runtime.privacy_plan import PrivacyPlan
from secure_fedrl.runtime.rundir import RunDirectory
from secure_fedrl.runtime.sites import SiteSpec, expand_sites

log = logging.getLogger(__name__)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of ints (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class RunSummary:
    out: Path
    rounds_done: int
    env_steps: int
    last_eval_mean: float | None
    last_eval_worst: float | None
    epsilon: float | None
    stopped_reason: str | None = None
    ledger_public_key: str | None = None
    """Hex Ed25519 key that signs the privacy ledger: pin it (audit/verify_ledger.py --public-key)."""
    epsilon_server: float | None = None
    """Worst site's epsilon against the server (inf for central noise); docs/privacy-model.md."""
    epsilon_release: float | None = None
    """Epsilon against observers of the released models only."""
    threat_model: str | None = None

    def describe(self) -> str:
        parts = [f"run {self.out}: {self.rounds_done} rounds, {self.env_steps} env steps"]
        if self.last_eval_mean is not None:
            parts.append(f"eval return mean {self.last_eval_mean:.1f} / worst site {self.last_eval_worst:.1f}")
        if self.epsilon is not None:
            parts.append(f"epsilon spent {self.epsilon:.3f}")
        if self.epsilon_server is not None:
            parts.append(f"epsilon against the server {self.epsilon_server:.3f}, against release-only "
                         f"observers {self.epsilon_release:.3f} (budget on: {self.threat_model})")
        if self.stopped_reason:
            parts.append(f"stopped early: {self.stopped_reason}")
        if self.ledger_public_key:
            parts.append(f"ledger public key {self.ledger_public_key}")
        return "; ".join(parts)


@dataclass
class SiteState:
    """What a site keeps between rounds (never sent to the server)."""

    spec: SiteSpec
    index: int
    local_critic: np.ndarray | None = None
    scaffold: ScaffoldClient | None = None  # SCAFFOLD c_i (moves only on commit, fl/site.py)
    compressor: Compressor | None = None


class Simulation:
    def __init__(self, config: Config, out: Path, *, resume: bool = False, progress: bool = True,
                 ledger_key: Path | None = None, ledger_passphrase: bytes | None = None) -> None:
        self.config = config
        self.run_dir = RunDirectory(out)
        self.progress = progress
        fed = config.federation
        torch.set_num_threads(fed.torch_threads)
        self.device = torch.device(fed.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"federation.device: {fed.device!r} requested but CUDA is not available here")

        self.specs = expand_sites(config.sites)
        self.envs = {}
        for spec in self.specs:
            self.envs[spec.name] = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=spec.num_envs,
                                                 seed=spec.seed, site=spec.name)
        first = self.envs[self.specs[0].name]
        obs_space, act_space = first.single_observation_space, first.single_action_space
        for spec in self.specs[1:]:
            env = self.envs[spec.name]
            if env.single_observation_space.shape != obs_space.shape or \
                    type(env.single_action_space) is not type(act_space) or \
                    env.single_action_space.shape != act_space.shape or \
                    getattr(env.single_action_space, "n", None) != getattr(act_space, "n", None):
                raise ConfigError(f"sites: site {spec.name!r} ({spec.env_id}) has observation/action spaces that "
                                  f"differ from site {self.specs[0].name!r}; one global policy needs one shape")

        torch.manual_seed(derive_seed(fed.seed, 0xC0FFEE))
        self.policy = ActorCritic(obs_space, act_space, hidden_sizes=config.local.hidden_sizes).to(self.device)
        self.federated_params = list(self.policy.shared_parameters(config.local.federate_critic))
        self.dim = sum(p.numel() for p in self.federated_params)
        self.global_params = get_flat(self.federated_params)
        initial_critic = get_flat(self.policy.critic_parameters())

        self.strategy = make_strategy(config.strategy.name, **dict(config.strategy.params))
        self.sites = [SiteState(spec=s, index=i) for i, s in enumerate(self.specs)]
        for site in self.sites:
            if not config.local.federate_critic:
                site.local_critic = initial_critic.copy()
            if isinstance(self.strategy, Scaffold):
                site.scaffold = ScaffoldClient(self.dim)
            site.compressor = _build_compressor(config.compression)
        if isinstance(self.strategy, Scaffold):
            self.strategy.init_control(self.dim)
        self.privacy = PrivacyPlan(config, [s.name for s in self.specs], ledger_path=self.run_dir.ledger_path)
        self.aggregator = build_aggregator(config, dim=self.upload_dim, privacy=self.privacy)
        self.privacy.bind(self.aggregator)

        k = config.evaluation.max_sites
        chosen = np.random.default_rng(derive_seed(fed.seed, 0xE7A1)).permutation(len(self.sites))[:k] if k else None
        self.eval_sites = self.sites if chosen is None else [self.sites[i] for i in sorted(chosen)]
        self.round = 0
        self._pending: dict[str, PendingCommit] = {}  # this round's proposals, by site (fl/site.py)
        self.env_steps = 0
        self.last_eval: dict[str, float] | None = None
        self._resumed_ledger_head = None
        if resume:
            self._resume()
        else:
            self.run_dir.create(config.to_toml(), config.fingerprint())
        # The ledger's signing key lives outside the run directory (default: per-user, per federation).
        from secure_fedrl.ledger import default_key_dir

        self.ledger_key_dir = Path(ledger_key) if ledger_key is not None else default_key_dir(fed.name)
        self.privacy.open(config_hash=config.fingerprint(), resume_after_round=self.round,
                          key_dir=self.ledger_key_dir, passphrase=ledger_passphrase,
                          expected_head=self._resumed_ledger_head)
        if self.privacy.ledger_public_key:
            self.run_dir.write_public_key(self.privacy.ledger_public_key)

    # ---------------------------------------------------------------------------------------
    @property
    def upload_dim(self) -> int:
        """Length of the vector a site uploads (SCAFFOLD appends its control-variate delta)."""
        return 2 * self.dim if isinstance(self.strategy, Scaffold) else self.dim

    def _resume(self) -> None:
        self.run_dir.check_resume(self.config.fingerprint())
        state = self.run_dir.load_state()
        self._resumed_ledger_head = None if state is None else state.get("ledger_head")
        if state is None:
            self.run_dir.truncate_metrics(0)
            return
        self.round = state["round"]
        self.env_steps = state["env_steps"]
        self.global_params = state["global_params"]
        self.strategy.load_state_dict(state["strategy"])
        self.last_eval = state.get("last_eval")
        for site, saved in zip(self.sites, state["sites"]):
            site.local_critic = saved["local_critic"]
            if site.scaffold is not None:
                site.scaffold.load(saved["control_variate"])
            site.compressor.load_state_dict(saved["compressor"])
            restore_env_state(self.envs[site.spec.name], saved["env"])
        self.aggregator.load_state_dict(state.get("aggregator", {}))
        self.run_dir.truncate_metrics(self.round)
        self.run_dir.update_config(self.config.to_toml())

    def _save(self) -> None:
        state = {
            "round": self.round,
            "env_steps": self.env_steps,
            "global_params": self.global_params,
            "strategy": self.strategy.state_dict(),
            "last_eval": self.last_eval,
            "sites": [{"local_critic": s.local_critic,
                       "control_variate": None if s.scaffold is None else s.scaffold.control_variate,
                       "compressor": s.compressor.state_dict(),
                       "env": capture_env_state(self.envs[s.spec.name])} for s in self.sites],
            "aggregator": self.aggregator.state_dict(),
            "ledger_head": self.privacy.ledger_head(),  # a resume refuses a ledger without this row
        }
        set_flat(self.federated_params, self.global_params)
        torch.save({"round": self.round, "global_params": torch.from_numpy(self.global_params.copy()),
                    "policy_state_dict": self.policy.state_dict(), "strategy_state": state["strategy"],
                    "federate_critic": self.config.local.federate_critic},
                   self.run_dir.checkpoint_path(self.round))
        self.run_dir.save_state(state)

    # ---------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        total = self.config.federation.rounds
        stopped = None
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=self.round, desc="rounds", unit="round", dynamic_ncols=True)
        try:
            while self.round < total:
                try:
                    row = self.run_round(self.round + 1)
                except PrivacyBudgetExceeded as exc:
                    stopped = str(exc)
                    log.warning("stopping: %s", exc)
                    if bar is not None:
                        bar.write(f"privacy budget reached, stopping: {exc}")
                    break
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(self._postfix(row), refresh=False)
        finally:
            if bar is not None:
                bar.close()
            self.privacy.close()
        eps = self.privacy.epsilon_spent()
        from secure_fedrl.report import write_run_reports  # privacy_report.{html,json}; never raises

        write_run_reports(self.run_dir.root, key_dir=getattr(self, "ledger_key_dir", None))
        return RunSummary(out=self.run_dir.root, rounds_done=self.round, env_steps=self.env_steps,
                          last_eval_mean=None if self.last_eval is None else self.last_eval["mean"],
                          last_eval_worst=None if self.last_eval is None else self.last_eval["worst"],
                          epsilon=eps, stopped_reason=stopped,
                          **_both_epsilons(self.privacy),
                          ledger_public_key=self.privacy.ledger_public_key)

    def _postfix(self, row: dict[str, Any]) -> str:
        parts = []
        if self.last_eval is not None:
            parts.append(f"ret {self.last_eval['mean']:.0f}/worst {self.last_eval['worst']:.0f}")
        parts.append(f"{row['bytes_per_site'] / 1024:.0f}KiB/site")
        if row.get("epsilon") is not None:
            parts.append(f"eps {row['epsilon']:.2f}/{self.config.privacy.target_epsilon:g}")
        return " ".join(parts)

    # ---------------------------------------------------------------------------------------
    def run_round(self, r: int) -> dict[str, Any]:
        cfg = self.config
        started = time.perf_counter()
        rng = np.random.default_rng(derive_seed(cfg.federation.seed, r, 1))
        eligible = self.privacy.eligible_sites([s.spec.name for s in self.sites])
        sampled_names = self._sample(eligible, rng)
        # Each sampled site checks its own budget; may raise PrivacyBudgetExceeded (run stops).
        sampled_names = self.privacy.admit_round(r, sampled_names)

        by_name = {s.spec.name: s for s in self.sites}
        self._pending = {}  # filled by _site_round, committed after aggregation
        uploads: list[SiteUpload] = []
        rejected: dict[str, str] = {}
        site_rows: dict[str, dict[str, Any]] = {}  # site-local: sites/<site>/metrics.jsonl
        round_steps = 0
        train_seconds = 0.0
        for name in sampled_names:
            site = by_name[name]
            t0 = time.perf_counter()
            upload, result = self._site_round(site, r)
            site_seconds = time.perf_counter() - t0
            train_seconds += site_seconds
            round_steps += result.steps
            site_rows[name] = _site_row(r, name, result, site_seconds)
            try:
                check_update(upload.vector, dim=self.upload_dim, site=name)
            except UpdateRejected as exc:
                log.warning("round %d: %s", r, exc)
                rejected[name] = str(exc)
                site_rows[name]["upload_rejected"] = str(exc)
                continue
            uploads.append(upload)
        self.env_steps += round_steps
        self.privacy.record_site_spend(r)  # trajectory level: spent at the sites, whatever happens next

        t_agg = time.perf_counter()
        if isinstance(self.strategy, FedAsync):
            agg = RoundAggregate(mean_update=None, included=[u.site for u in uploads], dropped=[],
                                 bytes_per_site=float(np.mean([u.nbytes for u in uploads])) if uploads else 0.0)
            agg.mean_update = self._apply_async(uploads, rng)
        else:
            agg = self.aggregator.aggregate(r, uploads, rng=rng, noise_rng=self._noise_rng(r, 8),
                                            planned=len(sampled_names), round_seed=self._round_seed(r))
            # The ledger row is durable before the aggregate touches the global policy.
            self.privacy.record_round(r, agg)
            self._apply(agg)
        # Only sites whose upload is in the aggregate keep their new c_i / residual; dropped and
        # rejected sites keep the old ones, so the server's c stays the mean of the sites' c_i.
        commit_accepted(self._pending, agg.included)
        agg_seconds = time.perf_counter() - t_agg

        evaluated = None
        if r % cfg.evaluation.every == 0 or r == cfg.federation.rounds:
            evaluated = self._evaluate(r)
        self.round = r
        # The server's file holds only what a coordinating server sees (README, "Run directory");
        # training returns, env steps, losses and per-site evaluation stay in the site files.
        head = self.privacy.ledger_head()
        row = {
            "round": r,
            "sites_sampled": len(sampled_names),
            "sites_aggregated": len(agg.included),
            "sites_rejected": rejected,
            "sites_dropped": sorted(agg.dropped),
            "bytes_per_site": agg.bytes_per_site,
            "update_norm": float(np.linalg.norm(agg.mean_update)) if agg.mean_update is not None else None,
            "epsilon": self.privacy.epsilon_spent(),
            "round_seed": self._round_seed(r),
            "ledger_head": None if head is None else {"seq": head[0], "row_hash": head[1]},
            "timing": {"round_s": time.perf_counter() - started, "aggregate_s": agg_seconds},
        }
        row.update(self.privacy.round_metrics())
        if evaluated is not None:
            # Aggregates of the returns the evaluated sites report (each site's own value stays
            # in its file); a deployed server knows only what the sites choose to report.
            row["eval_return_mean"] = evaluated["mean"]
            row["eval_return_worst"] = evaluated["worst"]
            row["eval_reported_by_sites"] = len(evaluated["per_site"])
            for name, value in evaluated["per_site"].items():
                site_rows.setdefault(name, {"round": r, "site": name})["eval_return"] = value
            domain = evaluated["domain"]  # pilots: time in range, Sharpe, ... (rl/pilots)
            if domain:
                row["eval_domain_mean"], row["eval_domain_worst"] = domain["mean"], domain["worst"]
                for name, metrics in domain["per_site"].items():
                    site_rows.setdefault(name, {"round": r, "site": name})["eval_domain"] = metrics
        for name in sorted(site_rows):
            self.run_dir.append_site_metrics(name, site_rows[name])
        self.run_dir.append_metrics(row)
        self._save()
        return row

    def _sample(self, eligible: list[str], rng: np.random.Generator) -> list[str]:
        """Who takes part: from the OS CSPRNG under privacy (never derivable from the config, so
        amplification by sampling can hold against release-only observers), else seeded."""
        s = self.config.sampling
        if not eligible:
            raise PrivacyBudgetExceeded("every site has spent its privacy budget")
        if self.config.privacy.unit != "none" and not self.config.privacy.reproducible_noise:
            from secure_fedrl.privacy.randomness import secret_poisson_sample, secret_sample

            if s.clients_per_round:
                return secret_sample(eligible, min(s.clients_per_round, len(eligible)))
            if s.poisson:
                return secret_poisson_sample(eligible, s.fraction)
            from secure_fedrl.fl.sampling import fixed_sample_size

            return secret_sample(eligible, fixed_sample_size(len(eligible), s.fraction))
        if s.clients_per_round:
            return sample_clients(eligible, rng=rng, count=min(s.clients_per_round, len(eligible)))
        return sample_clients(eligible, rng=rng, fraction=s.fraction, poisson=s.poisson)

    def _site_round(self, site: SiteState, r: int):
        """Local training at one site; returns what it uploads (never its trajectories)."""
        cfg = self.config
        set_flat(self.federated_params, self.global_params)
        if site.local_critic is not None:
            set_flat(list(self.policy.critic_parameters()), site.local_critic)
        env = self.envs[site.spec.name]
        generator = torch.Generator(device="cpu").manual_seed(self._noise_seed(r, site.index, 3))
        anchor = grad_correction = None
        prox_mu = float(getattr(self.strategy, "client_prox_mu", 0.0))
        if prox_mu > 0:
            anchor = [p.detach().clone() for p in self.federated_params]
        first_gradient = None
        if site.scaffold is not None:
            correction = site.scaffold.correction(self.strategy.control_variate)
            grad_correction = _split_like(correction, self.federated_params, self.device)
            first_gradient = FirstGradient()
        result = train_local(
            self.policy, env, cfg.algorithm,
            steps=cfg.local.steps or None, episodes=None if cfg.local.steps else cfg.local.episodes,
            generator=generator, prox_mu=prox_mu, anchor=anchor, grad_correction=grad_correction,
            federated_params=self.federated_params, dp=self.privacy.trajectory_dp(site.spec.name),
            first_gradient=first_gradient,
        )
        local = get_flat(self.federated_params)
        delta = (local - self.global_params).astype(np.float32)
        if site.local_critic is not None:
            site.local_critic = get_flat(list(self.policy.critic_parameters()))
        control = None
        if site.scaffold is not None:
            # Option I: c_i+ = the first local gradient, taken at the global parameters (Scaffold's
            # docstring says why); proposed now, committed only if the upload is aggregated.
            fresh = first_gradient.gradient
            control = site.scaffold.propose(site.scaffold.control_variate if fresh is None else fresh)
            delta = np.concatenate([delta, control.delta])
        self.privacy.after_local_training(site.spec.name, r, result)
        proposal = site.compressor.propose(delta, np.random.default_rng(derive_seed(cfg.federation.seed, r, site.index, 4)),
                                           round_seed=self._round_seed(r))
        self._pending[site.spec.name] = PendingCommit(site.compressor, proposal, site.scaffold, control)
        payload = proposal.payload
        # In-process the "wire" is this round trip; the server sees what decompress gives back.
        sent, nbytes = site.compressor.decompress(payload, delta.shape[0]), payload.nbytes
        weight = float(result.steps) if cfg.strategy.weighting == "steps" else 1.0
        return SiteUpload(site=site.spec.name, vector=sent, weight=weight, nbytes=nbytes), result

    def _noise_seed(self, *parts: int) -> int:
        """Seed of privacy noise: secret unless `privacy.reproducible_noise` (experiments only).

        A noise seed derived from the config would let anyone holding the config subtract the
        noise; without privacy the local training stays reproducible from the federation seed.
        """
        if self.config.privacy.unit == "none" or self.config.privacy.reproducible_noise:
            return derive_seed(self.config.federation.seed, *parts)
        return secrets.randbits(63)

    def _noise_rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng(self._noise_seed(*parts))

    def _round_seed(self, r: int) -> int:
        """The round's public seed (DDG rotation, shared mask; SPEC 7.1): drawn by the server from
        the OS CSPRNG once per round under privacy (never derivable from the config), and
        broadcast with the round (metrics `round_seed`)."""
        if self.config.privacy.unit == "none" or self.config.privacy.reproducible_noise:
            return self._derived_round_seed(r)
        seeds = self.__dict__.setdefault("_round_seeds", {})
        if r not in seeds:
            seeds.clear()
            seeds[r] = secrets.randbits(63)
        return seeds[r]

    def _derived_round_seed(self, r: int) -> int:
        """Public per-round seed the server broadcasts (shared compression mask)."""
        return derive_seed(self.config.federation.seed, r, 5)

    def _apply(self, agg: RoundAggregate) -> None:
        if agg.mean_update is None:
            log.warning("round: no update aggregated; the global policy is unchanged")
            return
        if isinstance(self.strategy, Scaffold):
            d = self.dim
            self.global_params = self.strategy.apply_scaffold(
                self.global_params, agg.mean_update[:d], agg.mean_update[d:],
                num_sampled=len(agg.included), num_total=len(self.sites))
        else:
            self.global_params = self.strategy.apply(self.global_params, agg.mean_update)
        self.global_params = np.asarray(self.global_params, dtype=np.float32)

    def _apply_async(self, uploads: list[SiteUpload], rng: np.random.Generator) -> np.ndarray | None:
        """FedAsync in simulation: updates arrive in a random order; the i-th arrival is i versions stale.

        Returns the net change of the global policy over the round (for metrics).
        """
        if not uploads:
            return None
        start = self.global_params.copy()
        for staleness, idx in enumerate(rng.permutation(len(uploads))):
            local_params = start + uploads[idx].vector
            self.global_params = np.asarray(self.strategy.apply_async(self.global_params, local_params, staleness),
                                            dtype=np.float32)
        return self.global_params - start

    def _evaluate(self, r: int) -> dict[str, Any]:
        cfg = self.config
        set_flat(self.federated_params, self.global_params)
        per_site, domain = {}, {}
        for site in self.eval_sites:
            if site.local_critic is not None:
                set_flat(list(self.policy.critic_parameters()), site.local_critic)
            result = evaluate_with_metrics(self.policy, site.spec.env_id, site.spec.overrides,
                                           episodes=cfg.evaluation.episodes, seed=derive_seed(site.spec.seed, r, 6))
            per_site[site.spec.name] = float(np.mean(result.returns))
            domain[site.spec.name] = result
        values = list(per_site.values())
        self.last_eval = {"mean": float(np.mean(values)), "worst": float(np.min(values))}
        return {**self.last_eval, "per_site": per_site, "domain": summarize_domain(domain)}


def _build_compressor(section: Any) -> Compressor:
    method = {"quantize": "qsgd"}.get(section.method, section.method)
    if method == "none":
        return make_compressor("none")
    if method == "qsgd":
        return make_compressor(method, levels=section.levels, error_feedback=section.error_feedback)
    return make_compressor(method, ratio=section.ratio, error_feedback=section.error_feedback)


def _both_epsilons(privacy: PrivacyPlan) -> dict[str, Any]:
    both = privacy.epsilons()
    if both is None:
        return {}
    return {"epsilon_server": both[0], "epsilon_release": both[1], "threat_model": privacy.threat_model}


def _split_like(vec: np.ndarray, params: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    out, offset = [], 0
    for p in params:
        n = p.numel()
        out.append(torch.as_tensor(vec[offset:offset + n], device=device).view_as(p))
        offset += n
    return out


def _site_row(r: int, site: str, result: Any, seconds: float) -> dict[str, Any]:
    """One site's own diagnostics of round r (site-local data: never in the server's file)."""
    returns = list(result.episode_returns)
    return {
        "round": r,
        "site": site,
        "env_steps": int(result.steps),
        "episodes": len(returns),
        "train_return_mean": float(np.mean(returns)) if returns else None,
        "diagnostics": _mean_dicts([{k: v for k, v in result.diagnostics.items() if k != "sps"}]),
        "train_s": seconds,
        "env_steps_per_s": result.steps / seconds if seconds > 0 else None,
    }


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in dicts for k in d})
    out = {}
    for k in keys:
        vals = [d[k] for d in dicts if k in d and d[k] is not None and math.isfinite(d[k])]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def run_simulation(config: Config, out: Path, *, resume: bool = False, progress: bool = True,
                   ledger_key: Path | None = None, ledger_passphrase: bytes | None = None) -> RunSummary:
    """Run (or resume) a federation; the ledger key is read from / created in `ledger_key`
    (default `secure_fedrl.ledger.default_key_dir(federation.name)`, never the run directory)."""
    return Simulation(config, Path(out), resume=resume, progress=progress, ledger_key=ledger_key,
                      ledger_passphrase=ledger_passphrase).run()
