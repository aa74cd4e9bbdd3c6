"""`secure-fedrl simulate --backend ray`: the sites as Ray actors, the server runtime in the driver.

The same two halves as every other backend: the driver runs `ServerRuntime` (sampling, the
strategy, the SecAgg server, the ledger, checkpoints) unchanged; the sites are `SiteRuntime`
objects built from the config alone, as a `join` process builds its own (`runtime/site_build.py`:
its env, critic, control variate, residual, own budget and identity key; the public privacy
mechanism and secure aggregator), and each sampled site runs `runtime.round.take_part` over a
`SiteTransport`. Only the wire differs:

    driver: ServerRuntime --HubProxy--> HubActor (a threaded Ray actor holding a `transport.base.Hub`)
    SiteHost actors: SiteRuntime x k --HubSite--> HubActor

A `SiteHost` actor is one Ray worker process holding the `SiteRuntime`s placed on it; it is
created once and reused for every round (no env is rebuilt per round) and trains its sites one
at a time in one torch module they lend each other (as `simulate`'s sites do), like a `join`
process hosting several sites. A federation of n sites on C CPUs uses
min(n, floor(C / cpus_per_site)) hosts (sites placed round-robin), so thousands of sites fit in a
few processes: a Ray worker with torch loaded is some 300 MB, an idle site tens of KB
(measured: bench/scale.py).

The hub drops each masked upload once the driver collected it (`Hub.collect`), and the proxy
moves them in small batches, so the server side never holds more than one round of masked
uploads. Without secure aggregation (baselines) the hosts train and return their plaintext
updates, as `simulate` hands them over in process. Evaluation runs at the hosts on each site's
environment description, with the same seeds as `simulate`, and returns only the numbers.

For the same seed and no privacy noise (or `privacy.reproducible_noise`) a run equals
`--backend local` bit for bit (tests/scaleout): every draw derives from (seed, round, site index),
each site's policy module starts from the same seed as the server's, sums are exact.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from secure_fedrl.config import Config
from secure_fedrl.errors import ConfigError
from secure_fedrl.fl.strategies import Scaffold
from secure_fedrl.rl.evaluate import summarize_domain
from secure_fedrl.runtime.server import RunSummary, ServerRuntime
from secure_fedrl.runtime.site import derive_seed, site_row
from secure_fedrl.runtime.simulate import IN_MEMORY_DEADLINES
from secure_fedrl.runtime.ray_hub import HubProxy, HubService, HubSite, _rss, register_serializers

__all__ = ["RaySimulation", "require_ray", "run_ray_simulation", "start_ray"]

log = logging.getLogger(__name__)

RAY_MISSING = "--backend ray: Ray is not installed; pip install -e '.[ray]'"

def require_ray():
    """The `ray` module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    if not hasattr(ray, "init"):  # a directory named ray on sys.path, not the package
        raise ConfigError(RAY_MISSING)
    return ray


NODE_STARTUP_TIMEOUT = "timed out during startup"  # Ray's message when its own 30 s wait (fixed) runs out


def start_ray(ray, *, attempts: int = 2, **kwargs: Any) -> None:
    """`ray.init(**kwargs)`, retried once when a local node misses Ray's fixed 30 s startup wait.

    Why: on a loaded 2-core machine the raylet sometimes registers after that wait (Ray raises a
    bare `Exception` for it, and offers no setting to lengthen it); a second start, after
    `ray.shutdown()` clears the half-started node, is what passed when the test suite hit it.
    A connection or argument error, and a second timeout, is a one-line ConfigError."""
    address = kwargs.get("address")
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--ray-address {address}: cannot connect to Ray ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - Ray's startup timeout is a bare Exception
            if NODE_STARTUP_TIMEOUT not in str(exc):
                raise
            ray.shutdown()
            if attempt == attempts:
                where = f"the Ray head at {address}" if address else "a local Ray node"
                raise ConfigError(f"--backend ray: {where} did not start within Ray's startup wait, "
                                  f"{attempts} attempts (machine overloaded?)") from None
            log.warning("Ray node startup timed out; retrying once")


def _check_reachable(address: str) -> None:
    """A HOST:PORT head address must accept a connection (Ray itself retries for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", ray://..., left to Ray
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5.0).close()
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: cannot reach a Ray head there ({exc})") from None


# ================================================================ the site hosts
class SiteHostService:
    """The body of a site host actor: the `SiteRuntime`s placed on it, each with its own env,
    policy module, state and transport to the hub; one trains at a time (the lock)."""

    def __init__(self, config: Config, indices: list[int], hub_actor: Any, *, secure: bool,
                 spaces_key: tuple) -> None:
        import torch
        from cryptography.hazmat.primitives import serialization

        from secure_fedrl.runtime.site_build import SiteBuilder

        register_serializers()
        torch.set_num_threads(config.federation.torch_threads)
        self.config = config
        builder = SiteBuilder(config, secure=secure, share_policy=True)  # one trains at a time: the lock
        self.sites = {}
        self.transports = {}
        self.error: str | None = None
        self._lock = threading.Lock()
        for i in indices:
            site = builder.build(i)
            if builder.spaces_key(site.env) != spaces_key:
                self.error = (f"sites: site {site.name!r} ({site.spec.env_id}) has observation/action spaces that "
                              f"differ from site {builder.specs[0].name!r}; one global policy needs one shape")
                return
            self._wrap_train(site)
            pub = site.identity_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                              serialization.PublicFormat.Raw)
            self.sites[site.name] = site
            self.transports[site.name] = HubSite(hub_actor, site.name, i + 1, protocol_key=pub)

    def _wrap_train(self, site) -> None:
        from secure_fedrl.runtime.site import SiteRuntime

        def train(global_params, r, *, round_seed, control=None, _s=site):
            with self._lock:
                return SiteRuntime.train(_s, global_params, r, round_seed=round_seed, control=control)

        site.train = train

    def join(self) -> tuple:
        """Join every hosted site to the hub; their credentials (number, protocol key, cert)."""
        if self.error:
            return ("error", self.error)
        creds = {}
        for name, t in self.transports.items():
            t.join()
            creds[name] = (t.number, t.protocol_key, b"")
        return ("ok", creds)

    # -- secure aggregation rounds ----------------------------------------------------------------
    def take_part(self, announcements: dict, stops: dict) -> dict:
        """Every hosted site of the round runs `take_part` on its own thread; name -> (its
        report, its `privacy_metrics()` after the round: the site's own epsilon/delta/A_u)."""
        from secure_fedrl.runtime.round import SiteRoundReport, take_part

        reports: dict = {}

        def run(name: str) -> None:
            site, transport = self.sites[name], self.transports[name]
            ann = announcements[name]
            try:
                reports[name] = take_part(site, transport, ann, stop_at=stops.get(name),
                                          timeout=IN_MEMORY_DEADLINES.advertise_keys)
            except Exception as exc:  # noqa: BLE001 - a bug at one site must not stall the round
                log.exception("site %s: round %d failed", name, ann.round_id)
                reports[name] = SiteRoundReport(f"failed: {exc}")
                try:
                    transport.leave(ann.round_id)
                except Exception:  # noqa: BLE001 - best effort
                    pass

        threads = [threading.Thread(target=run, args=(n,), name=f"site-{n}", daemon=True)
                   for n in sorted(announcements)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {n: (rep, self.sites[n].privacy_metrics()) for n, rep in reports.items()}

    # -- plaintext baselines ----------------------------------------------------------------------
    def train_plain(self, names: list[str], global_params: np.ndarray, r: int, round_seed: int,
                    control: np.ndarray | None) -> list:
        out = []
        for name in names:
            site = self.sites[name]
            t0 = time.perf_counter()
            upload, result = site.train(global_params, r, round_seed=round_seed, control=control)
            seconds = time.perf_counter() - t0
            if self.config.privacy.unit == "trajectory":
                site.charge(None)  # the site's own account of its DP-SGD spend
            out.append((upload, result, seconds, site.privacy_metrics()))
        return out

    def settle(self, r: int, outcome: dict[str, bool]) -> None:
        for name, included in outcome.items():
            self.sites[name].settle(r, included)

    # -- evaluation, state -------------------------------------------------------------------------
    def evaluate(self, names: list[str], global_params: np.ndarray, r: int) -> dict:
        from secure_fedrl.rl.evaluate import evaluate_with_metrics
        from secure_fedrl.rl.policies import set_flat

        cfg = self.config
        out = {}
        for name in names:
            site = self.sites[name]
            with self._lock:
                set_flat(site.federated_params, global_params)
                if site.local_critic is not None:
                    set_flat(list(site.policy.critic_parameters()), site.local_critic)
                out[name] = evaluate_with_metrics(site.policy, site.spec.env_id, site.spec.overrides,
                                                  episodes=cfg.evaluation.episodes,
                                                  seed=derive_seed(site.spec.seed, r, 6))
        return out

    def state_dicts(self, names: list[str]) -> dict:
        return {n: self.sites[n].state_dict() for n in names}

    def load_state_dicts(self, states: dict) -> None:
        for name, state in states.items():
            self.sites[name].load_state_dict(state)

    def count_resumed_graph_reveals(self) -> None:
        for site in self.sites.values():
            site.count_resumed_graph_reveal()

    def rss(self) -> int:
        return _rss()

    def num_sites(self) -> int:
        return len(self.sites)


# ================================================================ the driver's server runtime
class RaySimulation(ServerRuntime):
    """`ServerRuntime` in the driver, sites in `SiteHost` actors (see the module docstring).

    address: a Ray cluster to connect to (None: a local Ray, unless one is running in this
    process already); cpus_per_site: CPUs each site host reserves (it trains one site at a time).
    """

    def __init__(self, config: Config, out: Path, *, resume: bool = False, progress: bool = True,
                 ledger_key: Path | None = None, ledger_passphrase: bytes | None = None,
                 address: str | None = None, cpus_per_site: float = 1.0, num_cpus: int | None = None) -> None:
        if config.strategy.name == "fedbuff":
            raise ConfigError("strategy.name: fedbuff runs with --backend local or serve/join; the Ray "
                              "backend runs synchronous rounds only")
        ray = require_ray()
        if not cpus_per_site > 0:
            raise ConfigError(f"--cpus-per-site: must be > 0, got {cpus_per_site}")
        self._ray = ray
        self._owns_ray = False
        self._hosts: list = []
        self._hub_actor = None
        self.cpus_per_site = float(cpus_per_site)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address:
                _check_reachable(address)
                kwargs["address"] = address
            elif num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            start_ray(ray, **kwargs)
            self._owns_ray = True
        register_serializers()
        from secure_fedrl.runtime.deploy import env_spaces
        from secure_fedrl.runtime.site_build import SiteBuilder
        from secure_fedrl.runtime.sites import expand_sites

        spaces = env_spaces(config)
        self._spaces_key = SiteBuilder.spaces_key_of(*spaces)
        n = len(expand_sites(config.sites))
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # Each sampled site holds at most one blocking call on the hub; the driver one more.
        hub_cls = ray.remote(num_cpus=0, max_concurrency=min(n, 2048) + 16, scheduling_strategy=here)(HubService)
        self._hub_actor = hub_cls.remote(config.federation.name, max(10_000, n))
        try:
            ray.get(self._hub_actor.ready.remote())
            self._site_states: dict[str, Any] = {}
            self._touched: set[str] = set()
            self._refs: list = []
            super().__init__(config, out, spaces=spaces, hub=HubProxy(self._hub_actor), resume=resume,
                             progress=progress, ledger_key=ledger_key, ledger_passphrase=ledger_passphrase,
                             deadlines=IN_MEMORY_DEADLINES)
        except BaseException:
            self.close()
            raise
        k = config.evaluation.max_sites
        chosen = np.random.default_rng(derive_seed(config.federation.seed, 0xE7A1)).permutation(n)[:k] if k else None
        self.eval_names = self.site_names if chosen is None else [self.site_names[i] for i in sorted(chosen)]

    # -- placement --------------------------------------------------------------------------------
    def host_count(self) -> int:
        cpus = float(self._ray.cluster_resources().get("CPU", 1.0))
        return max(1, min(len(self.site_names), int(cpus // self.cpus_per_site) or 1))

    def make_sites(self) -> None:
        ray = self._ray
        hosts = self.host_count()
        host_cls = ray.remote(num_cpus=self.cpus_per_site)(SiteHostService)
        groups = [list(range(h, len(self.site_names), hosts)) for h in range(hosts)]
        self._host_of = {self.site_names[i]: h for h, g in enumerate(groups) for i in g}
        self._hosts = [host_cls.remote(self.config, g, self._hub_actor, secure=self.secure,
                                       spaces_key=self._spaces_key) for g in groups]
        self._creds: dict[str, tuple[int, bytes, bytes]] = {}
        for out in ray.get([h.join.remote() for h in self._hosts]):
            if out[0] != "ok":
                raise ConfigError(out[1])
            self._creds.update(out[1])

    def _by_host(self, names) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        for n in names:
            groups.setdefault(self._host_of[n], []).append(n)
        return groups

    def site_credentials(self, name: str) -> tuple[int, bytes, bytes]:
        return self._creds[name]

    def _gather(self, refs: dict, what: str) -> dict:
        """host -> result of each call; a host that died (its process killed, out of memory) is
        left out and logged: its sites are dropouts from here on, as killed site processes are."""
        out = {}
        for h, ref in refs.items():
            try:
                out[h] = self._ray.get(ref)
            except self._ray.exceptions.RayError as exc:
                log.error("site host %d (%d sites) failed during %s: %s", h,
                          sum(1 for v in self._host_of.values() if v == h), what, str(exc).splitlines()[0])
        return out

    # -- state (kept with the server's checkpoint, as simulate keeps it) --------------------------
    def load_site_states(self, saved: Any) -> None:
        states = {s["name"]: s for s in (saved or [])}
        refs = [self._hosts[h].load_state_dicts.remote({n: states[n] for n in names})
                for h, names in self._by_host([n for n in self.site_names if n in states]).items()]
        self._ray.get(refs)
        self._site_states.update(states)

    def count_resumed_graph_reveals(self) -> None:
        # every host's sites (loaded or fresh); the cached states now hold lower counts: fetch all anew
        self._ray.get([h.count_resumed_graph_reveals.remote() for h in self._hosts])
        self._site_states.clear()

    def site_states(self) -> list[dict[str, Any]]:
        # Only the sites of this round changed: fetch those (all of them the first time).
        want = [n for n in self.site_names if n not in self._site_states or n in self._touched]
        refs = {h: self._hosts[h].state_dicts.remote(names) for h, names in self._by_host(want).items()}
        for part in self._gather(refs, "checkpoint").values():
            self._site_states.update(part)
        self._touched = set()
        return [self._site_states[n] for n in self.site_names if n in self._site_states]

    # -- rounds -----------------------------------------------------------------------------------
    def start_sites(self, announcements, stops) -> None:
        self._touched.update(announcements)
        self._refs = [(names, self._hosts[h].take_part.remote({n: announcements[n] for n in names},
                                                               {n: stops[n] for n in names if n in stops}))
                      for h, names in self._by_host(sorted(announcements)).items()]
        round_id = next(iter(announcements.values())).round_id
        self._watchdog = threading.Thread(target=self._watch_hosts, args=(round_id, list(self._refs)),
                                          name="ray-host-watchdog", daemon=True)
        self._watchdog.start()

    def _watch_hosts(self, round_id: int, refs: list) -> None:
        """A host that dies mid-round cannot say so for its sites: withdraw them from the round
        at the hub (as a site that stops does), so the server does not wait out the deadline."""
        ray = self._ray
        pending = {ref: names for names, ref in refs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=None)
            for ref in ready:
                names = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError:
                    try:
                        ray.get(self._hub_actor.withdraw.remote(round_id, names))
                    except ray.exceptions.RayError:  # noqa: PERF203 - the hub is gone: the run fails anyway
                        return

    def collect_site_reports(self, r: int) -> None:
        from secure_fedrl.runtime.round import SiteRoundReport

        reports: dict[str, Any] = {}
        for names, ref in self._refs:
            try:
                reports.update(self._ray.get(ref))
            except self._ray.exceptions.RayError as exc:  # a host died: its sites failed the round
                log.error("round %d: site host failed: %s", r, str(exc).splitlines()[0])
                reports.update({n: (SiteRoundReport("failed: site host died"), {}) for n in names})
        self._refs = []
        if getattr(self, "_watchdog", None) is not None:
            self._watchdog.join()
            self._watchdog = None
        for name in sorted(reports):
            report, privacy = reports[name]
            if report.result is not None:
                self.env_steps += report.result.steps
                self.site_rows[name] = site_row(r, name, report.result, report.train_seconds)
                if not report.status.startswith("done"):
                    self.site_rows[name]["round_status"] = report.status
            else:  # refused or stopped before training: the site still states where it stands
                self.site_rows[name] = {"round": r, "site": name, "round_status": report.status}
            # as simulate and a deployed site do: the site's own epsilon_site / delta_site and, in gamma
            # mode, its GraphReveals A_u (site-local: sites/<site>/metrics.jsonl only; none from a dead host)
            self.site_rows[name].update(privacy)

    def plain_uploads(self, r: int, sampled: list[str]):
        """Baselines without secure aggregation: the hosts train and hand the updates over."""
        self._touched.update(sampled)
        control = self.strategy.control_variate if isinstance(self.strategy, Scaffold) else None
        seed = self._round_seed(r)
        groups = self._by_host(sampled)
        refs = {h: self._hosts[h].train_plain.remote(names, self.global_params, r, seed, control)
                for h, names in groups.items()}
        done = {h: dict(zip(groups[h], part)) for h, part in self._gather(refs, f"round {r}").items()}
        uploads, rejected = [], {}
        for name in sampled:
            if self._host_of[name] not in done:
                self.site_rows[name] = {"round": r, "site": name, "round_status": "failed: site host died"}
                continue
            upload, result, seconds, privacy = done[self._host_of[name]][name]
            self.env_steps += result.steps
            self.site_rows[name] = site_row(r, name, result, seconds)
            self.site_rows[name].update(privacy)
            self.privacy.after_local_training(name, r, result)
            self.accept_upload(r, upload, uploads, rejected)
        return uploads, rejected

    def settle(self, r: int, sampled: list[str], included: list[str]) -> None:
        inc = set(included)  # ServerRuntime.run_round checked it is a subset of `sampled`
        self._gather({h: self._hosts[h].settle.remote(r, {n: n in inc for n in names})
                      for h, names in self._by_host(sampled).items()}, f"round {r}")

    def _evaluate(self, r: int) -> dict[str, Any]:
        refs = {h: self._hosts[h].evaluate.remote(names, self.global_params, r)
                for h, names in self._by_host(self.eval_names).items()}
        results: dict[str, Any] = {}
        for part in self._gather(refs, f"evaluation {r}").values():
            results.update(part)
        if not results:
            return None
        names = [n for n in self.eval_names if n in results]  # simulate's order
        per_site = {n: float(np.mean(results[n].returns)) for n in names}
        domain = {n: results[n] for n in names}
        values = list(per_site.values())
        self.last_eval = {"mean": float(np.mean(values)), "worst": float(np.min(values))}
        return {**self.last_eval, "per_site": per_site, "domain": summarize_domain(domain)}

    # -- measurements, shutdown -------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        """RSS in bytes: the driver, the hub actor, each site host and the sites it holds."""
        ray = self._ray
        hosts = ray.get([h.rss.remote() for h in self._hosts])
        counts = ray.get([h.num_sites.remote() for h in self._hosts])
        return {"driver": _rss(), "hub": ray.get(self._hub_actor.rss.remote()), "hosts": hosts,
                "sites_per_host": counts}

    def close(self) -> None:
        ray = self._ray
        for actor in self._hosts + ([self._hub_actor] if self._hub_actor is not None else []):
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._hosts, self._hub_actor = [], None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False


def run_ray_simulation(config: Config, out: Path, *, resume: bool = False, progress: bool = True,
                       ledger_key: Path | None = None, ledger_passphrase: bytes | None = None,
                       address: str | None = None, cpus_per_site: float = 1.0) -> RunSummary:
    """`run_simulation` with the sites as Ray actors (same run directory, same results)."""
    sim = RaySimulation(config, Path(out), resume=resume, progress=progress, ledger_key=ledger_key,
                        ledger_passphrase=ledger_passphrase, address=address, cpus_per_site=cpus_per_site)
    try:
        return sim.run()
    finally:
        sim.close()
