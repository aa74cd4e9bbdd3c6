"""`secure-fedrl simulate`: the whole federation in one process (the embedded default).

The server runtime (`runtime/server.py`) and one `SiteRuntime` per site (`runtime/site.py`)
talk through the in-memory transport (`transport.base.Hub` + `InMemorySite`) with the same
round code `serve` / `join` run over gRPC: under secure aggregation each sampled site runs
`runtime.round.take_part` on its own thread and only SecAgg messages reach the server. The
sites lend one torch module to each other and train one at a time (the lock below); the
protocol phases run concurrently, as they would across machines.

Without privacy (or with `privacy.reproducible_noise`), every random choice of round r derives
from (federation seed, r, site index), so a resumed run continues bit-for-bit. Under privacy the
draws the analysis treats as random (who takes part, episode samples, rounding, noise, the round
seed) come from the OS CSPRNG and are recorded, not re-derived (ledger `participants`); a resumed
run rebuilds what it needs (every site's spend) from the ledger (docs/privacy-model.md).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from secure_fedrl.config import Config
from secure_fedrl.errors import ConfigError
from secure_fedrl.fl.strategies import Scaffold
from secure_fedrl.rl.envs import make_site_env
from secure_fedrl.rl.evaluate import evaluate_with_metrics, summarize_domain
from secure_fedrl.rl.policies import set_flat
from secure_fedrl.runtime.round import SiteRoundReport, take_part, train_ahead
from secure_fedrl.runtime.server import RunSummary, ServerRuntime
from secure_fedrl.runtime.site import SiteRuntime, derive_seed, site_row
from secure_fedrl.runtime.sites import expand_sites
from secure_fedrl.transport.base import Hub, InMemorySite, PhaseDeadlines

__all__ = ["RunSummary", "Simulation", "derive_seed", "run_simulation"]

log = logging.getLogger(__name__)

#: In process a site never goes silent (a stopping site leaves the round), so the deadlines only
#: bound a bug; training is serialised, so the first phase waits for every sampled site's training.
IN_MEMORY_DEADLINES = PhaseDeadlines(advertise_keys=86_400.0, graph_reveal=3_600.0, share_keys=3_600.0, masked_input=3_600.0,
                                     consistency_check=3_600.0, unmasking=3_600.0)


class Simulation(ServerRuntime):
    def __init__(self, config: Config, out: Path, *, resume: bool = False, progress: bool = True,
                 ledger_key: Path | None = None, ledger_passphrase: bytes | None = None) -> None:
        specs = expand_sites(config.sites)
        self.envs = {}
        for spec in specs:
            self.envs[spec.name] = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=spec.num_envs,
                                                 seed=spec.seed, site=spec.name)
        first = self.envs[specs[0].name]
        obs_space, act_space = first.single_observation_space, first.single_action_space
        for spec in specs[1:]:
            env = self.envs[spec.name]
            if env.single_observation_space.shape != obs_space.shape or \
                    type(env.single_action_space) is not type(act_space) or \
                    env.single_action_space.shape != act_space.shape or \
                    getattr(env.single_action_space, "n", None) != getattr(act_space, "n", None):
                raise ConfigError(f"sites: site {spec.name!r} ({spec.env_id}) has observation/action spaces that "
                                  f"differ from site {specs[0].name!r}; one global policy needs one shape")
        self._train_lock = threading.Lock()
        self._threads: dict[str, tuple[threading.Thread, list]] = {}
        self._pending: dict[str, Any] = {}  # kept for subclasses (audit canaries)
        # FedBuff: a simulated clock; each site trains from some model version and finishes at a time.
        self._clock = 0.0
        self._training: dict[str, tuple[float, int]] = {}  # site -> (finish time, version it trains from)
        self._models: dict[int, np.ndarray] = {}  # versions some site still trains from
        # In process no site dies unannounced: liveness never expires (a site waiting its turn to train is alive).
        hub = Hub(federation=config.federation.name, liveness_s=math.inf)
        super().__init__(config, out, spaces=(obs_space, act_space), hub=hub, resume=resume, progress=progress,
                         ledger_key=ledger_key, ledger_passphrase=ledger_passphrase, deadlines=IN_MEMORY_DEADLINES)
        k = config.evaluation.max_sites
        chosen = np.random.default_rng(derive_seed(config.federation.seed, 0xE7A1)).permutation(len(self.sites))[:k] \
            if k else None
        self.eval_sites = self.sites if chosen is None else [self.sites[i] for i in sorted(chosen)]

    # -- the in-process sites ---------------------------------------------------------------------
    def make_sites(self) -> None:
        self.sites: list[SiteRuntime] = []
        self.transports: dict[str, InMemorySite] = {}
        from cryptography.hazmat.primitives import serialization

        for i, spec in enumerate(self.specs):
            site = SiteRuntime(self.config, spec, i, env=self.envs[spec.name], policy=self.policy,
                               federated_params=self.federated_params, mechanism=self.privacy,
                               aggregator=self.aggregator if self.secure else None,
                               scaffold=isinstance(self.strategy, Scaffold),
                               prox_mu=float(getattr(self.strategy, "client_prox_mu", 0.0)),
                               initial_critic=self.initial_critic)
            site.train = lambda g, r, *, round_seed, control=None, _s=site: self._train_site(_s, g, r, round_seed,
                                                                                              control)
            pub = site.identity_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                              serialization.PublicFormat.Raw)
            transport = InMemorySite(self.hub, spec.name, i + 1, protocol_key=pub)
            transport.join()
            self.sites.append(site)
            self.transports[spec.name] = transport
        self._by_name = {s.name: s for s in self.sites}

    def _train_site(self, site: SiteRuntime, global_params, r: int, round_seed: int, control):
        """One site at a time in the shared torch module."""
        with self._train_lock:
            if type(self)._site_round is not Simulation._site_round:  # a subclass replaces training
                return self._site_round(site, r)
            return SiteRuntime.train(site, global_params, r, round_seed=round_seed, control=control)

    def _site_round(self, site: SiteRuntime, r: int):
        """Local training at one site from the current global policy (what a subclass may replace)."""
        control = self.strategy.control_variate if isinstance(self.strategy, Scaffold) else None
        return SiteRuntime.train(site, self.global_params, r, round_seed=self._round_seed(r), control=control)

    def load_site_states(self, saved: Any) -> None:
        for site, state in zip(self.sites, saved or []):
            site.load_state_dict(state)

    def count_resumed_graph_reveals(self) -> None:
        for site in self.sites:
            site.count_resumed_graph_reveal()

    def site_states(self) -> list[dict[str, Any]]:
        return [s.state_dict() for s in self.sites]

    def start_sites(self, announcements, stops) -> None:
        self._threads = {}
        for name, ann in sorted(announcements.items()):
            box: list = []
            version = self._training[name][1] if self.buffered else None
            t = threading.Thread(target=self._site_thread, args=(self._by_name[name], ann, stops.get(name), box, version),
                                 name=f"site-{name}", daemon=True)
            self._threads[name] = (t, box)
            t.start()

    def _site_thread(self, site: SiteRuntime, ann, stop_at, box: list, version: int | None = None) -> None:
        transport = self.transports[site.name]
        try:
            # FedBuff: the site trained from `version` while the clock ran (trained here, lazily: the same update)
            ahead = None if version is None else train_ahead(site, version, self._models[version])
            box.append(take_part(site, transport, ann, stop_at=stop_at, timeout=IN_MEMORY_DEADLINES.advertise_keys,
                                 ahead=ahead))
        except Exception as exc:  # a bug at one site must not stall the round: it leaves
            log.exception("site %s: round %d failed", site.name, ann.round_id)
            box.append(SiteRoundReport(f"failed: {exc}"))
            try:
                transport.leave(ann.round_id)
            except Exception:  # noqa: BLE001 - best effort
                pass

    def collect_site_reports(self, r: int) -> None:
        for name, (t, box) in sorted(self._threads.items()):
            t.join()
            report = box[0] if box else SiteRoundReport("failed: no report")
            if report.result is not None:
                self.env_steps += report.result.steps
                self.site_rows[name] = site_row(r, name, report.result, report.train_seconds)
                if not report.status.startswith("done"):
                    self.site_rows[name]["round_status"] = report.status
            else:  # refused or stopped before training: the site still states where it stands
                self.site_rows[name] = {"round": r, "site": name, "round_status": report.status}
            # as a deployed site does (runtime/deploy.py): its own epsilon_site / delta_site and, in
            # gamma mode, its GraphReveals A_u (site-local: sites/<site>/metrics.jsonl only)
            self.site_rows[name].update(self._by_name[name].privacy_metrics())
        self._threads = {}

    def plain_uploads(self, r: int, sampled: list[str]):
        """Baselines without secure aggregation: the updates are handed over in this process."""
        uploads, rejected = [], {}
        for name in sampled:
            site = self._by_name[name]
            t0 = time.perf_counter()
            upload, result = self._train_site(site, self.global_params, r, self._round_seed(r),
                                              self.strategy.control_variate if isinstance(self.strategy, Scaffold)
                                              else None)
            seconds = time.perf_counter() - t0
            self.env_steps += result.steps
            self.site_rows[name] = site_row(r, name, result, seconds)
            self.privacy.after_local_training(name, r, result)
            if self.config.privacy.unit == "trajectory":
                site.charge(None)  # the site's own account of its DP-SGD spend
            self.site_rows[name].update(site.privacy_metrics())
            self.accept_upload(r, upload, uploads, rejected)
        return uploads, rejected

    def settle(self, r: int, sampled: list[str], included: list[str]) -> None:
        # Only sites whose upload is in the aggregate keep their new c_i / residual; dropped and
        # rejected sites keep the old ones, so the server's c stays the mean of the sites' c_i.
        inc = set(included)  # ServerRuntime.run_round checked it is a subset of `sampled`
        for name in sampled:
            self._by_name[name].settle(r, name in inc)
        if self.buffered:  # the round's sites start again from the model version now
            for name in sampled:
                self._start_training(name)
            live = {v for _, v in self._training.values()} | {self.strategy.version}
            self._models = {v: m for v, m in self._models.items() if v in live}

    # -- FedBuff: the simulated clock ---------------------------------------------------------------
    def buffered_arrivals(self, r: int, eligible: list[str]) -> dict[str, int]:
        """The first `buffer_size` sites to finish on the simulated clock: a local round at a site
        takes pace * U(0.5, 1.5) time units (seeded), so fast sites take part more often and slow
        ones arrive stale, as in a deployment where sites train at their own speed."""
        self._models.setdefault(self.strategy.version, self.broadcast_policy().copy())
        for name in eligible:
            if name not in self._training:
                self._start_training(name)
        allowed = set(eligible)
        first = sorted((t, n) for n, (t, _) in self._training.items() if n in allowed)[:self.strategy.buffer_size]
        if first:
            self._clock = max(self._clock, first[-1][0])
        return {n: self._training[n][1] for _, n in first}

    def _start_training(self, name: str) -> None:
        site = self._by_name[name]
        version = self.strategy.version
        self._models.setdefault(version, self.broadcast_policy().copy())
        jitter = np.random.default_rng(derive_seed(self.config.federation.seed, version, site.index, 9)).uniform(0.5, 1.5)
        self._training[name] = (self._clock + site.spec.pace * float(jitter), version)

    def buffer_state(self) -> Any:
        if not self.buffered:
            return None
        return {"clock": self._clock, "training": dict(self._training), "models": dict(self._models)}

    def load_buffer_state(self, saved: Any) -> None:
        if saved:
            self._clock, self._training, self._models = saved["clock"], dict(saved["training"]), dict(saved["models"])

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


def run_simulation(config: Config, out: Path, *, resume: bool = False, progress: bool = True,
                   ledger_key: Path | None = None, ledger_passphrase: bytes | None = None) -> RunSummary:
    """Run (or resume) a federation; the ledger key is read from / created in `ledger_key`
    (default `secure_fedrl.ledger.default_key_dir(federation.name)`, never the run directory)."""
    return Simulation(config, Path(out), resume=resume, progress=progress, ledger_key=ledger_key,
                      ledger_passphrase=ledger_passphrase).run()
