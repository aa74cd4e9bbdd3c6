"""The run's privacy bookkeeping: noise calibration, both guarantees, budgets, the ledger.

Two guarantees per round (docs/privacy-model.md): against the SERVER (no amplification by
sampling; each site charged for its own participations, DDG with the m honest shares a sum must
hold) and against RELEASE-ONLY observers (amplified by the secret sample). `privacy.threat_model`
picks the one the budget and calibration target; both are recorded in every ledger row and in the
metrics. Against the server each site keeps its own `SiteGuard` and refuses a round that would
exceed its budget (in-process here; at the site in a deployment).

The ledger is the system of record: on open, every accountant is rebuilt by replaying the rows
(from the parameters each row records, not from the config), so a crash between the ledger write
and the checkpoint can only over-count, never under-count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import numpy as np

from secure_fedrl.config import Config, max_participations, resolved_mechanism, resolved_threat_model
from secure_fedrl.errors import ConfigError, LedgerError, PrivacyBudgetExceeded, PrivacyError
from secure_fedrl.privacy.accountants import (
    RDP_ORDERS,
    Accountant,
    GaussianStep,
    RDPCurveStep,
    make_accountant,
)
from secure_fedrl.privacy.budget import ReleaseAccount, RoundCost, SiteGuard

log = logging.getLogger(__name__)


class PrivacyPlan:
    def __init__(self, config: Config, site_names: Sequence[str], *, ledger_path) -> None:
        self.config = config
        self.p = config.privacy
        self.unit = self.p.unit
        self.site_names = list(site_names)
        self.ledger_path = ledger_path
        self.ledger = None
        self.rounds = config.federation.rounds
        self.mechanism = resolved_mechanism(config)
        self.threat_model = resolved_threat_model(config) if self.unit != "none" else "none"
        self.sampling = "reproducible" if self.p.reproducible_noise else "secret"
        self.buffered = config.strategy.name == "fedbuff"
        sa = config.secure_aggregation
        self.max_colluding = sa.max_colluding_sites if sa.enabled else 0
        # gamma mode: the ledger's `max_colluding` is the per-holder-set c_max the round's
        # thresholds used (no new ledger field: FORMAT v2), set once the aggregator is bound.
        self.colluding_fraction = float(sa.colluding_fraction) if sa.enabled else 0.0
        # Client level, gamma mode: each round attempt may fail the t - c_max bound with
        # probability <= 2^-40 (graph_failure); the sum over the recorded rounds is added to the
        # delta the rows and metrics state (epsilon itself is computed at privacy.delta).
        self.graph_failure = 0.0
        self._client_rows = 0
        self.max_participations = max_participations(config) if self.unit == "client" else 0
        self.sigma = 0.0
        self.sample_rate = 0.0
        self.source: Any = None  # the aggregator: prices a client-level round (`round_cost`)
        self.release: Accountant | ReleaseAccount | None = None  # client level: release-only observers
        self.guards: dict[str, SiteGuard] = {}  # each site's own account against the server
        self._worst_server = 0.0
        self._pending_sites: dict[str, tuple[int, float]] = {}
        self._last_round_metrics: dict[str, Any] = {}
        self._costs: dict[tuple[int, float], RoundCost] = {}
        if self.unit == "none":
            return
        if self.unit == "client":
            s = config.sampling
            # FedBuff takes whoever finishes first: no secret sampling, so no amplification.
            self.sample_rate = s.fraction if s.poisson and not self.buffered else 1.0
            # Sites refuse on their own budget only when it is the one promised (server threat model).
            enforce = self.threat_model == "server"
            if self.mechanism == "ddg":
                self.release = ReleaseAccount(self.sample_rate, delta=self.p.delta,
                                              cap_target=self.p.target_epsilon if enforce else None)
            else:
                self.release = make_accountant(self.p.accountant)
        else:
            self.sample_rate = self.p.sample_rate
            self.sigma = self._calibrate(self.sample_rate, self.rounds * self.p.noisy_steps)
            enforce = True
        accountant = "rdp" if self.mechanism == "ddg" else self.p.accountant
        for name in self.site_names:
            self.guards[name] = SiteGuard(name, target_epsilon=self.p.target_epsilon, delta=self.p.delta,
                                          accountant=accountant, enforce=enforce)

    def _calibrate(self, sample_rate: float, steps: int) -> float:
        from secure_fedrl.privacy import noise_multiplier_for

        if self.p.noise_multiplier > 0:
            return self.p.noise_multiplier
        sigma = noise_multiplier_for(self.p.target_epsilon, self.p.delta, sample_rate, steps,
                                     accountant=self.p.accountant)
        log.info("calibrated noise multiplier %.4f for epsilon %.3g over %d steps at q=%.4g",
                 sigma, self.p.target_epsilon, steps, sample_rate)
        return sigma

    def bind(self, source: Any) -> None:
        """Attach the aggregator that prices client-level rounds, and calibrate sigma with it.

        Calibration uses the very costs rounds are charged with: under the server threat model
        `max_participations` participations of one site at the per-site cost, under the release
        threat model all rounds at the release cost.
        """
        self.source = source
        if self.colluding_fraction > 0 and hasattr(source, "max_colluding") and hasattr(source, "plan_sites"):
            self.max_colluding = source.max_colluding(source.plan_sites)
        if hasattr(source, "graph_failure"):
            self.graph_failure = float(source.graph_failure()) if self.unit == "client" else 0.0
        if self.unit != "client":
            return
        if self.p.noise_multiplier > 0:
            self.sigma = self.p.noise_multiplier
        else:
            self.sigma = self._calibrate_with(source)
        if hasattr(source, "bind_sigma"):
            source.bind_sigma(self.sigma)

    def planned_sites(self) -> int:
        """Sites a round is planned for (the calibration's n): the expected Poisson sample, or
        FedBuff's buffer size."""
        if self.buffered:
            return max(2, min(int(self.config.strategy.params.get("buffer_size", 10)), len(self.site_names)))
        return max(2, round(self.sample_rate * len(self.site_names)))

    def _calibrate_with(self, source: Any) -> float:
        from secure_fedrl.privacy import calibrate_noise

        planned = self.planned_sites()
        server = self.threat_model == "server"
        compositions = self.max_participations if server else self.rounds

        def eps(sigma: float) -> float:
            try:
                cost = source.round_cost(planned, sigma=sigma)
            except PrivacyError:  # too little noise for the mechanism's grid: treat as no privacy
                return math.inf
            step = cost.server if server else cost.release
            if step is None:
                return math.inf
            return make_accountant("rdp" if self.mechanism == "ddg" else self.p.accountant).epsilon_after(
                dataclasses.replace(step, num_steps=compositions), self.p.delta)

        what = (f"over {compositions} participations per site (against the server)" if server else
                f"over {self.rounds} rounds at sample_rate={self.sample_rate:g} (against release-only observers)")
        sigma = calibrate_noise(eps, self.p.target_epsilon, context=f"{what}, delta={self.p.delta:g}")
        log.info("calibrated noise multiplier %.4f for epsilon %.3g %s", sigma, self.p.target_epsilon, what)
        return sigma

    def round_cost(self, planned: int) -> RoundCost:
        key = (max(int(planned), 2), self.sigma)
        cost = self._costs.get(key)
        if cost is None:
            cost = self.source.round_cost(key[0])
            if len(self._costs) > 256:
                self._costs.clear()
            self._costs[key] = cost
        return cost

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self, *, config_hash: str, resume_after_round: int, key_dir: Any = None,
             passphrase: bytes | None = None, expected_head: Any = None) -> None:
        """Open the ledger (signing key from `key_dir`, outside the run directory) and replay it.

        On resume `expected_head` is the (seq, row_hash) the checkpoint recorded: a ledger that
        no longer holds that row was rolled back (or rewritten) and is refused, as is one whose
        last round is older than the checkpoint's. Replaying rebuilds the federation's release
        account and every site's account (and participation count) from the rows alone.
        """
        if self.unit == "none":
            return
        from secure_fedrl.ledger import PrivacyLedger

        # On resume a missing ledger is an error, never a fresh one with zero spend.
        self.ledger = PrivacyLedger.open(self.ledger_path, config_hash=config_hash, key_dir=key_dir,
                                         passphrase=passphrase, create=resume_after_round == 0)
        self._ledger_public_key = self.ledger.public_key_hex
        if expected_head is not None:
            self.ledger.check_contains(int(expected_head[0]), str(expected_head[1]),
                                       what=f"the checkpoint of round {resume_after_round}")
        last = self.ledger.last_round()
        # Every client-level round appends a row numbered >= the run's round; a trajectory-level
        # round without training sites appends none, so there the recorded head is the check.
        if resume_after_round > 0 and (last is None or last < resume_after_round) and (
                self.unit == "client" or expected_head is None):
            raise LedgerError(f"privacy ledger {self.ledger_path} ends at round {last} but the "
                              f"checkpoint is at round {resume_after_round}: the ledger is older "
                              f"than the run (rolled back?); refusing to resume")
        for row in self.ledger.rows():
            self._replay(row)
            if row.round > resume_after_round:
                log.warning("ledger holds round %d beyond the checkpoint (round %d): its spend stays counted",
                            row.round, resume_after_round)

    def _guard(self, site: str, seq: int) -> SiteGuard:
        guard = self.guards.get(site)
        if guard is None:
            raise ConfigError(f"privacy ledger row {seq} names site {site!r}, unknown to this config")
        return guard

    def _charge_client_round(self, cost: Any, participants: Any, *, seq: int | None = None) -> dict[str, float]:
        """Charge one client-level round: the release account, and each participant's own guard.

        Returns each participant's epsilon against the server (none when the mechanism gives no
        guarantee against it: participations are still counted). Shared by recording and replay,
        so a resumed run charges exactly what the live run did.
        """
        self._release_apply(cost)
        site_eps: dict[str, float] = {}
        for site in participants:
            guard = self.guards[site] if seq is None else self._guard(site, seq)
            if cost.server is not None:
                site_eps[site] = guard.charge(cost.server)
                self._worst_server = max(self._worst_server, site_eps[site])
            else:
                guard.participations += 1
        return site_eps

    def _replay(self, row: Any) -> None:
        """Charge one ledger row again from what it records, and refuse an under-count."""
        if row.unit == "trajectory":
            eps = self._guard(row.site, row.seq).charge(GaussianStep(row.sigma_effective, row.sample_rate, row.steps))
            self._worst_server = max(self._worst_server, eps)
            self._check_replayed(row, "epsilon_server", row.epsilon_server, eps)
            return
        if self.release is None:
            raise ConfigError(f"privacy ledger row {row.seq} is client-level; this config is not")
        self._client_rows += 1
        cost = row_cost(row)
        for site, eps in self._charge_client_round(cost, row.participants, seq=row.seq).items():
            self._check_replayed(row, f"site_epsilon_server[{site}]", row.site_epsilon_server.get(site, 0.0), eps)
        server, release = self._epsilons(cost)
        self._check_replayed(row, "epsilon_server", row.epsilon_server, server)
        self._check_replayed(row, "epsilon_release", row.epsilon_release, release)

    @staticmethod
    def _check_replayed(row: Any, what: str, recorded: float, replayed: float) -> None:
        if replayed < recorded * (1 - 1e-6):
            raise LedgerError(f"privacy ledger row {row.seq} records {what} {recorded:.6g} but replaying the "
                              f"ledger gives {replayed:.6g}: refusing to go on with an under-count")

    def ledger_head(self) -> tuple[int, str] | None:
        """(seq, row hash) of the ledger's last row, for checkpoints and metrics; None without DP."""
        return None if self.ledger is None else self.ledger.head()

    @property
    def ledger_public_key(self) -> str | None:
        """The ledger's Ed25519 public key (hex), for the auditor to pin; None without DP."""
        return getattr(self, "_ledger_public_key", None)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    # -- budget ---------------------------------------------------------------------------------
    def eligible_sites(self, names: Sequence[str]) -> list[str]:
        """Trajectory level: sites whose own budget still affords a round (client level: all;
        there each sampled site decides in `admit_round`, after the secret draw)."""
        if self.unit != "trajectory":
            return list(names)
        step = GaussianStep(self.sigma, self.sample_rate, self.p.noisy_steps)
        return [n for n in names if self.guards[n].admits(step)]

    def can_afford(self, names: Sequence[str], planned: int) -> list[str]:
        """Client level (FedBuff): the sites whose own budget still affords a round of `planned`."""
        if self.unit != "client":
            return list(names)
        cost = self.round_cost(planned)
        if cost.server is None:
            return list(names)
        return [n for n in names if self.guards[n].admits(cost.server)]

    def admit_round(self, round_id: int, sampled: Sequence[str]) -> list[str]:
        """Client level: the sampled sites that take part, after each site's own budget check.

        Against the server each sampled site refuses a round whose per-site cost would take it
        over its budget (the round is re-priced for the sites that remain, until none refuses).
        Raises PrivacyBudgetExceeded before the round starts when the targeted guarantee is
        spent: the release budget (release threat model), or every site's (server threat model).
        """
        self._last_round_metrics = {}
        if self.unit != "client":
            return list(sampled)
        taking_part = list(sampled)
        refused: list[str] = []
        cost = self.round_cost(len(taking_part))
        while cost.server is not None and taking_part:
            no = [s for s in taking_part if not self.guards[s].admits(cost.server)]
            if not no:
                break
            refused.extend(no)
            taking_part = [s for s in taking_part if s not in no]
            cost = self.round_cost(len(taking_part))
        cap = getattr(self.source, "max_round_sites", None)
        if cap is not None and len(taking_part) > cap:  # ring sized for `cap`: drop the excess at random
            from secure_fedrl.privacy.randomness import secret_sample

            kept = (secret_sample(taking_part, cap) if not self.p.reproducible_noise else
                    list(np.random.default_rng([self.config.federation.seed, round_id, 7]).permutation(
                        taking_part)[:cap]))
            self._last_round_metrics["sites_cut"] = len(taking_part) - len(kept)
            taking_part = [s for s in taking_part if s in set(kept)]
        self._last_round_metrics["sites_refused"] = sorted(refused)
        # What was drawn (secret from outsiders, known to the server): recorded, never re-derived.
        self._last_round_metrics["sampled"] = sorted(taking_part)
        if refused:
            log.info("round %d: %d site(s) refused (own budget against the server)", round_id, len(refused))
        if self.threat_model == "release":
            after = self._release_after(cost)
            if after > self.p.target_epsilon:
                raise PrivacyBudgetExceeded(
                    f"round {round_id} would bring epsilon against release-only observers to {after:.3f} > "
                    f"budget {self.p.target_epsilon:g} (delta={self.p.delta:g}); "
                    f"{self._release_epsilon():.3f} spent so far")
        elif not taking_part and cost.server is not None and not any(
                g.admits(cost.server) for g in self.guards.values()):
            raise PrivacyBudgetExceeded(f"every site has spent its privacy budget against the server "
                                        f"({self.p.target_epsilon:g}, delta={self.p.delta:g})")
        return taking_part

    def trajectory_dp(self, site: str):
        if self.unit != "trajectory":
            return None
        from secure_fedrl.rl.dp_training import TrajectoryDP

        return TrajectoryDP(max_grad_norm=self.p.clip, noise_multiplier=self.sigma,
                            sample_rate=self.sample_rate, steps=self.p.noisy_steps,
                            secret_sampling=not self.p.reproducible_noise)

    def after_local_training(self, site: str, round_id: int, result: Any) -> None:
        if self.unit == "trajectory":
            self._pending_sites[site] = (int(result.dp_steps), float(result.dp_sample_rate))

    def after_planned_training(self, site: str) -> None:
        """Trajectory level, the server's record of a site it handed a round: the configured
        DP-SGD steps and sample rate (what a site trains with; the site's own guard keeps the
        authoritative account)."""
        if self.unit == "trajectory":
            self._pending_sites[site] = (int(self.p.noisy_steps), float(self.sample_rate))

    # -- recording ------------------------------------------------------------------------------
    def _ledger_round(self, round_id: int) -> int:
        """A round re-run after a crash keeps its first rows (still counted) and takes the next id."""
        last = self.ledger.last_round()
        ledger_round = round_id if last is None or last < round_id else last + 1
        self._last_round_metrics["ledger_round"] = ledger_round
        return ledger_round

    def delta_total(self, rows: int | None = None) -> float:
        """The delta the run's guarantees hold at: privacy.delta, plus in gamma mode (client level)
        2^-40 for each client-level round recorded (`rows`, default all so far): a round whose
        graph put more than c_max colluders into a holder set may unmask a sum with fewer than m
        honest noise shares. Charged for every round, released or not (an upper bound: only
        participants' privacy is at stake, each in fewer rounds)."""
        n = self._client_rows if rows is None else rows
        return min(self.p.delta + n * self.graph_failure, 1.0 - 1e-12)

    def _v2(self, max_colluding: int | None = None) -> dict[str, Any]:
        enforcing = self.unit == "trajectory" or self.threat_model == "server"
        return {"threat_model": self.threat_model,
                "max_colluding": self.max_colluding if max_colluding is None else int(max_colluding),
                "sampling": self.sampling, "site_budget": self.p.target_epsilon if enforcing else math.inf}

    def record_site_spend(self, round_id: int) -> None:
        """Trajectory level: append (and fsync) every site's DP-SGD spend of this round.

        Called as soon as local training is done, before anything is aggregated: the spend
        happened at the sites, whatever becomes of their updates. The same number holds against
        the server (noise and episode sample at the site) and against release-only observers.
        """
        if self.unit != "trajectory":
            return
        from secure_fedrl.ledger import LedgerEntry

        ledger_round = self._ledger_round(round_id)
        for site, (steps, q) in sorted(self._pending_sites.items()):
            if steps <= 0:
                continue
            eps = self.guards[site].charge(GaussianStep(self.sigma, q, steps))
            self._worst_server = max(self._worst_server, eps)
            self.ledger.append(LedgerEntry(
                round=ledger_round, unit="trajectory", site=site, mechanism=self.mechanism, clip=self.p.clip,
                sigma_planned=self.sigma, sigma_effective=self.sigma, sample_rate=q, steps=steps,
                sites_planned=1, sites_survived=1, accountant=self.p.accountant,
                epsilon={self.p.accountant: eps}, delta=self.p.delta, epsilon_server=eps, epsilon_release=eps,
                **self._v2()))
        self._pending_sites.clear()

    def _epsilons(self, cost: RoundCost) -> tuple[float, float]:
        """(worst site against the server, federation against release-only observers) so far."""
        server = math.inf if cost.server is None else self._worst_server
        release = min(self._release_epsilon(), server)
        return server, release

    def _release_apply(self, cost: RoundCost) -> None:
        if isinstance(self.release, ReleaseAccount):
            self.release.apply(np.asarray(cost.server.rdp) * cost.server.num_steps)
        else:
            self.release.apply(cost.release)

    def _release_after(self, cost: RoundCost) -> float:
        if isinstance(self.release, ReleaseAccount):
            return self.release.epsilon_after(np.asarray(cost.server.rdp) * cost.server.num_steps, self.p.delta)
        return self.release.epsilon_after(cost.release, self.p.delta)

    def _release_epsilon(self) -> float:
        return self.release.get_epsilon(self.p.delta)

    def record_round(self, round_id: int, aggregate: Any) -> None:
        """Client level: append (and fsync) the round's row; called before the aggregate is applied.

        Every round is charged against release-only observers, including rounds that released
        nothing (whether a round aborts depends on who took part); against the server each
        participant (its masked input or update left it) is charged, whatever the survivors.
        """
        if self.unit != "client":
            return
        from secure_fedrl.ledger import LedgerEntry

        ledger_round = self._ledger_round(round_id)
        info = aggregate.privacy
        self._client_rows += 1
        planned = int(info.get("sites_planned", len(aggregate.included)))
        cost = info.get("cost") or self.round_cost(planned)
        participants = sorted(info.get("participants", aggregate.included))
        site_eps = self._charge_client_round(cost, participants)
        server, release = self._epsilons(cost)
        enforced = server if self.threat_model == "server" else release
        survivors = int(info.get("survivors", len(aggregate.included)))
        sigma_eff = float(info.get("sigma_effective", cost.sigma_effective or self.sigma))
        clip = float(info.get("clip", self.p.clip))
        self.ledger.append(LedgerEntry(
            round=ledger_round, unit="client", mechanism=self.mechanism, clip=clip,
            sigma_planned=self.sigma, sigma_effective=sigma_eff, sample_rate=self.sample_rate,
            sites_planned=max(planned, len(participants)), sites_survived=min(survivors, max(planned, len(participants))),
            accountant=self.p.accountant, epsilon={self.p.accountant: enforced}, delta=self.delta_total(),
            epsilon_server=server, epsilon_release=release, noise_shares=cost.noise_shares,
            params=dict(cost.params), participants=participants, site_epsilon_server=site_eps,
            **self._v2(info.get("max_colluding"))))
        self._last_round_metrics.update({"noise_multiplier_effective": sigma_eff, "clip": clip,
                                         "participants": participants, "noise_shares": cost.noise_shares,
                                         "max_colluding": int(info.get("max_colluding", self.max_colluding))})

    # -- reporting ------------------------------------------------------------------------------
    def epsilons(self) -> tuple[float, float] | None:
        """(epsilon_server, epsilon_release) so far: worst site where accounting is per site."""
        if self.unit == "none":
            return None
        if self.unit == "trajectory":
            return self._worst_server, self._worst_server
        if self.mechanism == "gaussian":
            return math.inf, self._release_epsilon()
        return self._worst_server, min(self._release_epsilon(), self._worst_server)

    def epsilon_spent(self) -> float | None:
        """The epsilon the budget is on (threat model's), worst site where accounting is per site."""
        eps = self.epsilons()
        if eps is None:
            return None
        return eps[0] if self.threat_model == "server" else eps[1]

    def round_metrics(self) -> dict[str, Any]:
        if self.unit == "none":
            return {}
        server, release = self.epsilons()
        out = {"privacy_unit": self.unit, "noise_multiplier": self.sigma, "delta": self.delta_total(),
               "delta_accounting": self.p.delta, "delta_graph": self._client_rows * self.graph_failure,
               "colluding_fraction": self.colluding_fraction, "max_colluding": self.max_colluding,
               "epsilon_budget": self.p.target_epsilon, "threat_model": self.threat_model,
               "epsilon_server": server, "epsilon_release": release, "sampling": self.sampling}
        if self.unit == "client":
            out["max_participations"] = self.max_participations
        out.update(self._last_round_metrics)
        return out


def row_cost(row: Any) -> RoundCost:
    """What a client-level ledger row cost, rebuilt from the row alone (FORMAT.md, v2)."""
    if row.mechanism == "ddg":
        from secure_fedrl.privacy.ddg import privacy_from_recorded

        priv = privacy_from_recorded(clip=row.clip, params=dict(row.params), noise_shares=row.noise_shares)
        orders = np.asarray(RDP_ORDERS)
        return RoundCost(server=RDPCurveStep(tuple(priv.rdp(orders)), row.steps),
                         release=RDPCurveStep(tuple(priv.release_rdp(orders, row.sample_rate)), row.steps),
                         noise_shares=row.noise_shares, params=dict(row.params),
                         sigma_effective=priv.effective_noise_multiplier)
    if row.mechanism == "gaussian":
        return RoundCost(server=None, release=GaussianStep(row.sigma_effective, row.sample_rate, row.steps),
                         sigma_effective=row.sigma_effective)
    raise LedgerError(f"privacy ledger row {row.seq}: unknown client-level mechanism {row.mechanism!r}")

