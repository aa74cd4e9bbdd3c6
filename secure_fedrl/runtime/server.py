"""The server's half of a federation: sampling, the strategy, the SecAgg server, the ledger, checkpoints.

`ServerRuntime` holds only what a coordinating server may hold: the global policy, the
strategy's state, the protocol state of the current round and the privacy ledger. Per round it
samples sites, broadcasts the policy and the round order through a `Hub`, runs the SecAgg
server (`transport.rounds.run_server_round`), decodes the unmasked sum, records the round's
privacy cost (durably, before the sum touches the policy), applies the strategy and
checkpoints by atomic replace. The sites' half is `runtime/site.py` + `runtime/round.py`.

`simulate` (runtime/simulate.py) runs it with every site in this process over the in-memory
transport; `serve` (runtime/deploy.py) over gRPC with mutual TLS. Without secure aggregation
the sites' plaintext updates can only be handed over in process (`plain_uploads`, simulate's
baselines): no deployment sends a plaintext update.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_fedrl.config import Config
from secure_fedrl.errors import ConfigError, PrivacyBudgetExceeded, ProtocolError
from secure_fedrl.fl.sampling import sample_clients
from secure_fedrl.fl.strategies import FedAsync, FedBuff, Scaffold, make_strategy
from secure_fedrl.rl.policies import get_flat, set_flat
from secure_fedrl.runtime.aggregation import RoundAggregate, build_aggregator, simulated_dropouts
from secure_fedrl.runtime.privacy_plan import PrivacyPlan
from secure_fedrl.runtime.rundir import RunDirectory, head_record
from secure_fedrl.runtime.site import RoundOrder, derive_seed, initial_policy
from secure_fedrl.runtime.sites import expand_sites
from secure_fedrl.secagg.protocol import RoundConfig
from secure_fedrl.transport.base import Hub, PhaseDeadlines, RosterEntry, RoundAnnouncement
from secure_fedrl.transport.rounds import run_server_round

log = logging.getLogger(__name__)


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
        steps = f"{self.env_steps} env steps" if self.env_steps else "env steps counted at the sites"
        parts = [f"run {self.out}: {self.rounds_done} rounds, {steps}"]
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


class ServerRuntime:
    """The coordinating server (see the module docstring). `spaces` = (observation, action)
    space of the sites' environments (public, from the config); `hub` the transport's mailbox."""

    def __init__(self, config: Config, out: Path, *, spaces: tuple[Any, Any], hub: Hub | None = None,
                 resume: bool = False, progress: bool = True, ledger_key: Path | None = None,
                 ledger_passphrase: bytes | None = None, deadlines: PhaseDeadlines | None = None) -> None:
        self.config = config
        self.run_dir = RunDirectory(out)
        self.progress = progress
        fed = config.federation
        torch.set_num_threads(fed.torch_threads)
        self.device = torch.device(fed.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"federation.device: {fed.device!r} requested but CUDA is not available here")
        self.hub = hub if hub is not None else Hub(federation=fed.name)
        self.deadlines = deadlines or PhaseDeadlines()
        self.specs = expand_sites(config.sites)
        self.site_names = [s.name for s in self.specs]
        obs_space, act_space = spaces
        self.policy = initial_policy(config, obs_space, act_space).to(self.device)
        self.federated_params = list(self.policy.shared_parameters(config.local.federate_critic))
        self.dim = sum(p.numel() for p in self.federated_params)
        self.global_params = get_flat(self.federated_params)
        self.initial_critic = get_flat(self.policy.critic_parameters())
        self.strategy = make_strategy(config.strategy.name, **dict(config.strategy.params))
        if isinstance(self.strategy, Scaffold):
            self.strategy.init_control(self.dim)
        self.privacy = PrivacyPlan(config, self.site_names, ledger_path=self.run_dir.ledger_path)
        self.aggregator = build_aggregator(config, dim=self.upload_dim, privacy=self.privacy)
        self.privacy.bind(self.aggregator)
        self.secure = config.secure_aggregation.enabled and not isinstance(self.strategy, FedAsync)
        self.buffered = isinstance(self.strategy, FedBuff)  # FedBuff: rounds of the first K ready sites
        self.make_sites()
        self.round = 0
        self.env_steps = 0
        self.last_eval: dict[str, float] | None = None
        self._notice: dict[str, Any] = {}
        self._resumed_ledger_head = None
        if resume:
            self._resume()
        else:
            self.run_dir.create(config.to_toml(), config.fingerprint())
        from secure_fedrl.ledger import default_key_dir

        # The ledger's signing key lives outside the run directory (default: per-user, per federation).
        self.ledger_key_dir = Path(ledger_key) if ledger_key is not None else default_key_dir(fed.name)
        self.privacy.open(config_hash=config.fingerprint(), resume_after_round=self.round,
                          key_dir=self.ledger_key_dir, passphrase=ledger_passphrase,
                          expected_head=self._resumed_ledger_head)
        if self.privacy.ledger_public_key:
            self.run_dir.write_public_key(self.privacy.ledger_public_key)
        if self.buffered:
            self.hub.publish_model(self.strategy.version, self.broadcast_policy())

    # -- what the sites see of the run ------------------------------------------------------------
    @property
    def upload_dim(self) -> int:
        """Length of the vector a site uploads (SCAFFOLD appends its control-variate delta)."""
        return 2 * self.dim if isinstance(self.strategy, Scaffold) else self.dim

    def broadcast_policy(self) -> np.ndarray:
        """The global policy (and SCAFFOLD's server control variate) the round's sites start from."""
        if isinstance(self.strategy, Scaffold):
            return np.concatenate([self.global_params, self.strategy.control_variate]).astype(np.float32)
        return np.asarray(self.global_params, dtype=np.float32)

    def site_credentials(self, name: str) -> tuple[int, bytes, bytes]:
        """(SecAgg id, Ed25519 protocol key, certificate DER) of a site, from its Join."""
        return self.hub.site_credentials(name)

    # -- checkpoints ------------------------------------------------------------------------------
    def _resume(self) -> None:
        self.run_dir.check_resume(self.config.fingerprint())
        state = self.run_dir.load_state()
        self._resumed_ledger_head = None if state is None else state.get("ledger_head")
        if state is None:
            self.run_dir.truncate_metrics(0)
            self.count_resumed_graph_reveals()  # a run stopped in round 1 may have sent reveals too
            return
        self.round = state["round"]
        self.env_steps = state["env_steps"]
        self.global_params = state["global_params"]
        self.strategy.load_state_dict(state["strategy"])
        self.last_eval = state.get("last_eval")
        self._notice = state.get("notice", {})
        self.aggregator.load_state_dict(state.get("aggregator", {}))
        self.load_site_states(state.get("sites"))
        self.count_resumed_graph_reveals()
        self.load_buffer_state(state.get("buffer"))
        self.run_dir.truncate_metrics(self.round)
        self.run_dir.update_config(self.config.to_toml())

    def make_sites(self) -> None:
        """In-process sites (simulate) are built here, before a resume loads their state."""

    def load_site_states(self, saved: Any) -> None:
        """In-process sites' state (simulate keeps it with the server's checkpoint); none here."""

    def count_resumed_graph_reveals(self) -> None:
        """Every resume, with or without a saved state: in-process sites (simulate, Ray) count one
        more GraphReveal each in gamma mode (`SiteRuntime.count_resumed_graph_reveal`); deployed
        sites persist their count before a reveal leaves: nothing here."""

    def site_states(self) -> list[dict[str, Any]] | None:
        return None

    def buffer_state(self) -> Any:
        """FedBuff in simulation: the simulated clock (a deployment's sites say Ready again)."""
        return None

    def load_buffer_state(self, saved: Any) -> None:
        """See `buffer_state`."""

    def _save(self) -> None:
        state = {
            "round": self.round,
            "env_steps": self.env_steps,
            "global_params": self.global_params,
            "strategy": self.strategy.state_dict(),
            "last_eval": self.last_eval,
            "sites": self.site_states(),
            "buffer": self.buffer_state(),
            "aggregator": self.aggregator.state_dict(),
            "notice": self._notice,
            "ledger_head": self.privacy.ledger_head(),  # a resume refuses a ledger without this row
        }
        set_flat(self.federated_params, self.global_params)
        if not self.config.local.federate_critic:  # the server has no critic: never a site's local one
            set_flat(list(self.policy.critic_parameters()), self.initial_critic)
        torch.save({"round": self.round, "global_params": torch.from_numpy(self.global_params.copy()),
                    "policy_state_dict": self.policy.state_dict(), "strategy_state": state["strategy"],
                    "federate_critic": self.config.local.federate_critic,
                    "federation": self.config.federation.name,
                    # which run: two runs of one federation have different ledger heads
                    "ledger_head": head_record(state["ledger_head"])},
                   self.run_dir.checkpoint_path(self.round))
        self.run_dir.save_state(state)

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        total = self.config.federation.rounds
        stopped = None
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=self.round, desc="rounds", unit="round", dynamic_ncols=True)
        completed = False  # only a run that ended cleanly publishes its final model
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
            completed = True
        finally:
            if bar is not None:
                bar.close()
            try:
                # The final model, for sites to keep (a DP release like every round's, nothing more).
                # Not after a crash: the parameters may hold a round that never completed.
                final = (self.round, np.asarray(self.global_params)) if completed else None
                self.hub.finish(notice=self._notice_bytes(), final_model=final)
                self.await_final_witnesses()
            finally:
                self.privacy.close()
        eps = self.privacy.epsilon_spent()
        from secure_fedrl.report import write_run_reports  # privacy_report.{html,json}; never raises

        write_run_reports(self.run_dir.root, key_dir=getattr(self, "ledger_key_dir", None))
        both = self.privacy.epsilons()
        extra = {} if both is None else {"epsilon_server": both[0], "epsilon_release": both[1],
                                         "threat_model": self.privacy.threat_model}
        return RunSummary(out=self.run_dir.root, rounds_done=self.round, env_steps=self.env_steps,
                          last_eval_mean=None if self.last_eval is None else self.last_eval["mean"],
                          last_eval_worst=None if self.last_eval is None else self.last_eval["worst"],
                          epsilon=eps, stopped_reason=stopped, ledger_public_key=self.privacy.ledger_public_key,
                          **extra)

    def _postfix(self, row: dict[str, Any]) -> str:
        parts = []
        if self.last_eval is not None:
            parts.append(f"ret {self.last_eval['mean']:.0f}/worst {self.last_eval['worst']:.0f}")
        parts.append(f"{row['bytes_per_site'] / 1024:.0f}KiB/site")
        if row.get("epsilon") is not None:
            parts.append(f"eps {row['epsilon']:.2f}/{self.config.privacy.target_epsilon:g}")
        return " ".join(parts)

    def _notice_bytes(self) -> bytes:
        return json.dumps(self._notice, sort_keys=True).encode() if self._notice else b""

    # -- one round --------------------------------------------------------------------------------
    def run_round(self, r: int) -> dict[str, Any]:
        cfg = self.config
        started = time.perf_counter()
        rng = np.random.default_rng(derive_seed(cfg.federation.seed, r, 1))
        eligible = self.privacy.eligible_sites(self.site_names)
        arrivals: dict[str, int] = {}
        if self.buffered:  # FedBuff: not sampled, the first K sites to finish training
            arrivals = self.buffered_arrivals(r, self._buffer_eligible(eligible))
            sampled = sorted(arrivals)
        else:
            sampled = self._sample(eligible, rng)
        # Each sampled site checks its own budget; may raise PrivacyBudgetExceeded (run stops).
        sampled = self.privacy.admit_round(r, sampled)
        stale = [self.strategy.version - arrivals[n] for n in sampled] if self.buffered else []
        self.site_rows: dict[str, dict[str, Any]] = {}  # site-local: sites/<site>/metrics.jsonl
        rejected: dict[str, str] = {}
        t_agg = time.perf_counter()
        if self.secure:
            agg = self._secure_round(r, sampled, rng)
        else:
            uploads, rejected = self.plain_uploads(r, sampled)
            self.privacy.record_site_spend(r)  # trajectory level: spent at the sites, whatever happens next
            if isinstance(self.strategy, FedAsync):
                agg = RoundAggregate(mean_update=None, included=[u.site for u in uploads], dropped=[],
                                     bytes_per_site=float(np.mean([u.nbytes for u in uploads])) if uploads else 0.0)
                agg.mean_update = self._apply_async(uploads, rng)
            else:
                agg = self.aggregator.aggregate(r, uploads, rng=rng, noise_rng=self._noise_rng(r, 8),
                                                planned=len(sampled), round_seed=self._round_seed(r))
        if not isinstance(self.strategy, FedAsync):
            # The ledger row is durable before the aggregate touches the global policy.
            self.privacy.record_round(r, agg)
            self._apply(agg)
        unknown = sorted(set(agg.included) - set(sampled))
        if unknown:
            raise ProtocolError(f"aggregate includes site(s) {', '.join(unknown)} that made no upload this round")
        self.settle(r, sampled, agg.included)
        witness_expected = self.ingest_witnesses()
        agg_seconds = time.perf_counter() - t_agg
        evaluated = None
        if r % cfg.evaluation.every == 0 or r == cfg.federation.rounds:
            evaluated = self._evaluate(r)
        self.round = r
        head = self.privacy.ledger_head()
        self._notice = {"round": r, "included": sorted(agg.included),
                        "ledger_head": head_record(head)}
        if self.witnesses and head is not None:
            self._notice["rows"] = self._rows_to_show(agg.included, head[0])
        # The server's file holds only what a coordinating server sees (README, "Run directory").
        row = {
            "round": r,
            "sites_sampled": len(sampled),
            "sites_aggregated": len(agg.included),
            "sites_rejected": rejected,
            "sites_dropped": sorted(agg.dropped),
            "bytes_per_site": agg.bytes_per_site,
            "update_norm": float(np.linalg.norm(agg.mean_update)) if agg.mean_update is not None else None,
            "epsilon": self.privacy.epsilon_spent(),
            "round_seed": self._round_seed(r),
            "ledger_head": self._notice["ledger_head"],
            "timing": {"round_s": time.perf_counter() - started, "aggregate_s": agg_seconds},
        }
        row.update(self.privacy.round_metrics())
        if witness_expected is not None:
            row["witness_expected"] = witness_expected
        if self.buffered:
            row["model_version"] = self.strategy.version
            row["staleness"] = {"mean": float(np.mean(stale)) if stale else None, "max": max(stale, default=None)}
        if evaluated is not None:
            row["eval_return_mean"] = evaluated["mean"]
            row["eval_return_worst"] = evaluated["worst"]
            row["eval_reported_by_sites"] = len(evaluated["per_site"])
            for name, value in evaluated["per_site"].items():
                self.site_rows.setdefault(name, {"round": r, "site": name})["eval_return"] = value
            domain = evaluated["domain"]  # pilots: time in range, Sharpe, ... (rl/pilots)
            if domain:
                row["eval_domain_mean"], row["eval_domain_worst"] = domain["mean"], domain["worst"]
                for name, metrics in domain["per_site"].items():
                    self.site_rows.setdefault(name, {"round": r, "site": name})["eval_domain"] = metrics
        for name in sorted(self.site_rows):
            self.run_dir.append_site_metrics(name, self.site_rows[name])
        self.run_dir.append_metrics(row)
        self._save()
        if self.buffered:  # only a checkpointed model is published: a restart never goes back behind it
            self.hub.publish_model(self.strategy.version, self.broadcast_policy())
        return row

    def _secure_round(self, r: int, sampled: list[str], rng: np.random.Generator) -> RoundAggregate:
        """Broadcast, run the SecAgg server over the hub, decode the unmasked sum."""
        sa = self.config.secure_aggregation
        round_seed = self._round_seed(r)
        plan = self.aggregator.plan(r, planned=len(sampled), round_seed=round_seed)
        info = self.aggregator.round_info(plan)
        aborted = RoundAggregate(None, [], list(sampled), 0.0, privacy=info)
        reason = self.aggregator.cannot_run(plan, len(sampled))
        if reason:
            log.warning("round %d: %s: nothing leaves the sites, nothing released", r, reason)
            self.privacy.record_site_spend(r)
            return aborted
        creds = {n: self.site_credentials(n) for n in sampled}
        order = sorted(sampled, key=lambda n: creds[n][0])
        config = RoundConfig(round_id=r, site_ids=tuple(creds[n][0] for n in order),
                             identity_keys=tuple(creds[n][1] for n in order), threshold=plan.threshold,
                             dim=self.aggregator.wire_dim(plan), bits=sa.bits, degree=plan.degree,
                             graph_seed=self.aggregator.graph_seed(round_seed))
        roster = tuple(RosterEntry(creds[n][0], n, creds[n][2]) for n in order)
        extras = RoundOrder(round=r, round_seed=round_seed, planned=len(sampled), dim=self.dim,
                            version=self.strategy.version if self.buffered else None).encode()
        ann = RoundAnnouncement(config, roster, self.broadcast_policy(), extras)
        anns = {n: ann for n in sampled}
        # Simulated dropouts (secure_aggregation.dropout_rate): drawn as the in-process driver draws them.
        stops = simulated_dropouts(sorted(sampled), sa.dropout_rate, rng)
        # Every site handed the round may let its input go: charged from here (over-counts a site
        # that drops before its masked input, never under-counts).
        info["participants"] = sorted(sampled)
        if self.config.privacy.unit == "trajectory":
            for n in sampled:
                self.privacy.after_planned_training(n)
        result = run_server_round(self.hub, anns, deadlines=self.deadlines, notice=self._notice_bytes(),
                                  on_open=lambda: self.start_sites(anns, stops),
                                  verify_dp=self.aggregator.dp_verifier(plan, config))  # SPEC 7.1
        self.collect_site_reports(r)
        self.privacy.record_site_spend(r)
        nbytes = result.bytes_per_site or {}
        aborted.bytes_per_site = float(np.mean(list(nbytes.values()))) if nbytes else 0.0
        if result.outcome is None:
            log.warning("round %d aborted, nothing released: %s", r, result.aborted)
            return aborted
        names = {e.site_id: e.name for e in roster}
        included = sorted(names[u] for u in result.outcome.accepted)
        info["survivors"] = len(included)
        if len(included) < plan.release:
            log.warning("round %d aborted, nothing released: %d of %d sites survived, fewer than the release "
                        "threshold %d", r, len(included), len(sampled), plan.release)
            return aborted
        mean = self.aggregator.server_decode(plan, result.outcome.sum, survivors=len(included))
        dropped = sorted(set(sampled) - set(included))
        return RoundAggregate(mean, included, dropped, aborted.bytes_per_site, privacy=info)

    # -- the witnessed ledger (ledger/FORMAT.md, "Witnesses") -----------------------------------------
    #: Whether the sites countersign ledger heads: a deployment's sites do, with their CA-certified
    #: keys; in-process sites hold throwaway keys of the simulating party, whose signatures prove nothing.
    witnesses = False

    def ingest_witnesses(self, received: list | None = None) -> dict[str, Any] | None:
        """Store the countersignatures the sites sent of the head the last notice showed them;
        return what the audit should expect of it: that head, and the sites included in the
        round it closed that are still connected (a site that died cannot sign)."""
        ledger = self.privacy.ledger
        if ledger is None or not self.witnesses:
            return None
        from secure_fedrl.errors import LedgerError
        from secure_fedrl.transport.logs import log_event

        keys: dict[str, str] = {}
        have = {(seq, site) for seq, site, _, _ in ledger.witnesses()}
        for site, seq, row_hash, signature in (self.hub.take_witnesses() if received is None else received):
            if (seq, site) in have:
                continue  # signed again after a reconnect: stored already
            try:
                key = self.site_credentials(site)[1]
                ledger.add_witness(seq=seq, site=site, public_key=key, signature=signature,
                                   federation=self.config.federation.name)
                keys[site] = key.hex()
                have.add((seq, site))
                log_event("witness_stored", site=site, seq=seq, level="info")
            except (LedgerError, KeyError) as exc:
                log_event("witness_rejected", site=site, seq=seq, reason=str(exc))
        if keys:
            self._record_witness_keys(keys)
        head = (self._notice or {}).get("ledger_head")
        if not head:
            return None
        live = self.hub.live_sites()
        sites = {n: self.site_credentials(n)[1].hex() for n in self._notice.get("included", []) if n in live}
        if not any(sites.values()):
            return None
        self._record_witness_keys(sites)
        return {"seq": int(head["seq"]), "sites": sites}

    def _rows_to_show(self, sites: list[str], head_seq: int) -> list[str]:
        """Canonical rows since the oldest of these sites' last countersigned heads: each checks
        that the new head extends the one it signed before it signs again (FORMAT.md)."""
        from secure_fedrl.ledger.format import canonical_bytes

        last: dict[str, int] = {}
        for seq, site, _, _ in self.privacy.ledger.witnesses():
            last[site] = max(last.get(site, 0), seq)
        start = min((last[s] for s in sites if s in last), default=head_seq)
        return [canonical_bytes(row).decode("ascii") for row in self.privacy.ledger.rows() if start < row.seq <= head_seq]

    def _record_witness_keys(self, keys: dict[str, str]) -> None:
        """witness_keys.json: the sites' protocol keys, for reference (an auditor pins the CA's)."""
        path = self.run_dir.root / "witness_keys.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        if all(known.get(k) == v for k, v in keys.items()):
            return
        known.update(keys)
        from secure_fedrl.fsutil import atomic_write

        atomic_write(path, (json.dumps(known, indent=1, sort_keys=True) + "\n").encode())

    def await_final_witnesses(self) -> None:
        """After the last round: the closing notice's head is countersigned like any other."""
        self.ingest_witnesses()

    # -- hooks: where the sites are ---------------------------------------------------------------
    def start_sites(self, announcements: dict[str, RoundAnnouncement], stops: dict[str, str]) -> None:
        """The round is open: remote sites find it by long poll; nothing to start here."""

    def collect_site_reports(self, r: int) -> None:
        """In-process sites hand over their own diagnostics; remote ones keep them."""

    def plain_uploads(self, r: int, sampled: list[str]):
        raise ConfigError("a deployment runs with secure aggregation only: no site sends a plaintext "
                          "update (set secure_aggregation.enabled = true)")

    def accept_upload(self, r: int, upload: Any, uploads: list, rejected: dict[str, str]) -> None:
        """Plaintext baselines: keep an update that passes `check_update`, else record why not."""
        from secure_fedrl.errors import UpdateRejected
        from secure_fedrl.fl.updates import check_update

        try:
            check_update(upload.vector, dim=self.upload_dim, site=upload.site)
        except UpdateRejected as exc:
            log.warning("round %d: %s", r, exc)
            rejected[upload.site] = str(exc)
            self.site_rows.setdefault(upload.site, {"round": r, "site": upload.site})["upload_rejected"] = str(exc)
            return
        uploads.append(upload)

    def settle(self, r: int, sampled: list[str], included: list[str]) -> None:
        """Remote sites learn the outcome from the next broadcast's notice."""

    def _evaluate(self, r: int) -> dict[str, Any] | None:
        """The server has no environment: evaluation happens at the sites (their own files)."""
        return None

    # -- FedBuff ------------------------------------------------------------------------------------
    def _buffer_eligible(self, eligible: list[str]) -> list[str]:
        """Sites that can still afford a full buffer's round against their own budget."""
        names = self.privacy.can_afford(eligible, self.privacy.planned_sites())
        if not names:
            raise PrivacyBudgetExceeded("every site has spent its privacy budget")
        least = self._least_runnable()
        if len(names) < least:  # budgets only shrink: no round can run again (else waited for ever)
            raise PrivacyBudgetExceeded(f"{len(names)} site(s) can still afford a round, fewer than the {least} one needs")
        return names

    def buffered_arrivals(self, r: int, eligible: list[str]) -> dict[str, int]:
        """The first `buffer_size` eligible sites to report ready -> the model version each trained
        from (a deployment: their Ready calls; simulate: its simulated clock). Waits, train
        deadline after train deadline, until enough are ready for a round that can run: a round
        that could not run would be spent for nothing."""
        from secure_fedrl.transport.logs import log_event

        least = self._least_runnable()
        while True:
            arrivals = self.hub.wait_ready(self.strategy.buffer_size, set(eligible), self.deadlines.advertise_keys,
                                           least=least)
            if len(arrivals) >= least or self.hub.finished:
                return arrivals
            log_event("waiting_for_ready_sites", round=r, ready=len(arrivals), least=least, level="info")

    def _least_runnable(self) -> int:
        """Fewest sites a buffered round can run with (secure aggregation's thresholds)."""
        k = self.privacy.planned_sites()
        plan = self.aggregator.plan(0, planned=k, round_seed=0)
        return next((c for c in range(2, k + 1) if self.aggregator.cannot_run(plan, c) is None), k)

    # -- sampling, seeds, strategy ----------------------------------------------------------------
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

    def _noise_seed(self, *parts: int) -> int:
        """Seed of privacy noise: secret unless `privacy.reproducible_noise` (experiments only)."""
        if self.config.privacy.unit == "none" or self.config.privacy.reproducible_noise:
            return derive_seed(self.config.federation.seed, *parts)
        return secrets.randbits(63)

    def _noise_rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng(self._noise_seed(*parts))

    def _round_seed(self, r: int) -> int:
        """The round's public seed (DDG rotation, shared mask, graph; SPEC 7.1): drawn by the
        server from the OS CSPRNG once per round under privacy, broadcast with the round."""
        if self.config.privacy.unit == "none" or self.config.privacy.reproducible_noise:
            return derive_seed(self.config.federation.seed, r, 5)
        seeds = self.__dict__.setdefault("_round_seeds", {})
        if r not in seeds:
            seeds.clear()
            seeds[r] = secrets.randbits(63)
        return seeds[r]

    def _apply(self, agg: RoundAggregate) -> None:
        if agg.mean_update is None:
            log.warning("round: no update aggregated; the global policy is unchanged")
            return
        if isinstance(self.strategy, Scaffold):
            d = self.dim
            self.global_params = self.strategy.apply_scaffold(
                self.global_params, agg.mean_update[:d], agg.mean_update[d:],
                num_sampled=len(agg.included), num_total=len(self.site_names))
        else:
            self.global_params = self.strategy.apply(self.global_params, agg.mean_update)
        self.global_params = np.asarray(self.global_params, dtype=np.float32)

    def _apply_async(self, uploads: list, rng: np.random.Generator) -> np.ndarray | None:
        """FedAsync in simulation: updates arrive in a random order; the i-th arrival is i versions stale."""
        if not uploads:
            return None
        start = self.global_params.copy()
        for staleness, idx in enumerate(rng.permutation(len(uploads))):
            local_params = start + uploads[idx].vector
            self.global_params = np.asarray(self.strategy.apply_async(self.global_params, local_params, staleness),
                                            dtype=np.float32)
        return self.global_params - start
