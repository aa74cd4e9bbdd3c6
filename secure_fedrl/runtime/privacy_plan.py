"""The server's privacy bookkeeping for one run: noise calibration, budget checks, the ledger.

The ledger is the system of record: on open, the accountants are rebuilt by replaying every
ledger row, so a crash between the ledger write and the checkpoint can only over-count (the
round is re-run and recorded again), never under-count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

from secure_fedrl.config import Config
from secure_fedrl.errors import ConfigError, LedgerError, PrivacyBudgetExceeded, PrivacyError
from secure_fedrl.privacy.accountants import Accountant, GaussianStep, Mechanism, make_accountant

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
        self.mechanism = "none"
        self.sigma = 0.0
        self.sample_rate = 0.0
        self.accountants: dict[str | None, Accountant] = {}
        self.source: Any = None  # the aggregator: prices a client-level round (`mechanism`)
        self._pending_sites: dict[str, tuple[int, float]] = {}
        self._last_round_metrics: dict[str, Any] = {}
        if self.unit == "none":
            return
        if self.unit == "client":
            s = config.sampling
            self.sample_rate = s.fraction if s.poisson else 1.0
            self.mechanism = self.p.mechanism if self.p.mechanism != "auto" else (
                "ddg" if config.secure_aggregation.enabled else "gaussian")
            self.accountants[None] = make_accountant(self.p.accountant)  # sigma: see bind()
        else:
            self.mechanism = "dp-sgd"
            self.sample_rate = self.p.sample_rate
            self.sigma = self._calibrate(self.sample_rate, self.rounds * self.p.noisy_steps)
            for name in self.site_names:
                self.accountants[name] = make_accountant(self.p.accountant)

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

        Calibration uses the very mechanism each round is charged with (for the distributed
        discrete Gaussian: its generic subsampled RDP at the release threshold), so the planned
        rounds fit the budget exactly as they will be accounted.
        """
        self.source = source
        if self.unit != "client":
            return
        if self.p.noise_multiplier > 0:
            self.sigma = self.p.noise_multiplier
        else:
            self.sigma = self._calibrate_with(source)
        if hasattr(source, "bind_sigma"):
            source.bind_sigma(self.sigma)

    def _calibrate_with(self, source: Any) -> float:
        from secure_fedrl.privacy import calibrate_noise

        planned = max(2, round(self.sample_rate * len(self.site_names)))

        def eps(sigma: float) -> float:
            try:
                step = source.mechanism(sampled=planned, sigma=sigma)
            except PrivacyError:  # too little noise for the mechanism's grid: treat as no privacy
                return math.inf
            return make_accountant(self.p.accountant).epsilon_after(
                dataclasses.replace(step, num_steps=self.rounds), self.p.delta)

        sigma = calibrate_noise(eps, self.p.target_epsilon, context=f"over {self.rounds} rounds at "
                                f"sample_rate={self.sample_rate:g}, delta={self.p.delta:g}")
        log.info("calibrated noise multiplier %.4f for epsilon %.3g over %d rounds", sigma,
                 self.p.target_epsilon, self.rounds)
        return sigma

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self, *, config_hash: str, resume_after_round: int) -> None:
        if self.unit == "none":
            return
        from secure_fedrl.ledger import PrivacyLedger

        # On resume a missing ledger is an error, never a fresh one with zero spend.
        self.ledger = PrivacyLedger.open(self.ledger_path, config_hash=config_hash,
                                         create=resume_after_round == 0)
        last_row: dict[str | None, Any] = {}
        for row in self.ledger.rows():
            acct = self.accountants.get(row.site)
            if acct is None:
                raise ConfigError(f"privacy ledger row {row.seq} names site {row.site!r}, unknown to this config")
            acct.apply(self._row_mechanism(row))
            last_row[row.site] = row
            if row.round > resume_after_round:
                log.warning("ledger holds round %d beyond the checkpoint (round %d): its spend stays counted",
                            row.round, resume_after_round)
        for scope, row in last_row.items():
            recorded = row.epsilon.get(self.p.accountant)
            replayed = self.accountants[scope].get_epsilon(self.p.delta)
            if recorded is not None and replayed < recorded * (1 - 1e-6):
                raise LedgerError(f"privacy ledger row {row.seq} records epsilon {recorded:.6g} but replaying the "
                                  f"ledger gives {replayed:.6g}: refusing to go on with an under-count")

    def _row_mechanism(self, row: Any) -> Mechanism:
        """What a ledger row cost, rebuilt from the row itself (the ledger is the system of record)."""
        if row.mechanism == "ddg":
            return self.source.mechanism(sampled=max(row.sites_planned, 2), survivors=row.sites_survived or None,
                                         sigma=row.sigma_planned)
        return GaussianStep(row.sigma_effective, row.sample_rate, row.steps)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    # -- budget ---------------------------------------------------------------------------------
    def eligible_sites(self, names: Sequence[str]) -> list[str]:
        """Trajectory level: sites whose own budget still affords a round."""
        if self.unit != "trajectory":
            return list(names)
        step = GaussianStep(self.sigma, self.sample_rate, self.p.noisy_steps)
        return [n for n in names
                if self.accountants[n].epsilon_after(step, self.p.delta) <= self.p.target_epsilon]

    def check_round(self, round_id: int, *, planned_sites: int) -> None:
        """Refuse (before it starts) a client-level round that could exceed the budget.

        Priced at its worst case: under distributed noise, only `threshold` survivors.
        """
        if self.unit != "client":
            return
        acct = self.accountants[None]
        eps = acct.epsilon_after(self.source.mechanism(sampled=max(planned_sites, 2)), self.p.delta)
        if eps > self.p.target_epsilon:
            raise PrivacyBudgetExceeded(
                f"round {round_id} would bring epsilon to {eps:.3f} > budget {self.p.target_epsilon:g} "
                f"(delta={self.p.delta:g}); {acct.get_epsilon(self.p.delta):.3f} spent so far")

    def trajectory_dp(self, site: str):
        if self.unit != "trajectory":
            return None
        from secure_fedrl.rl.dp_training import TrajectoryDP

        return TrajectoryDP(max_grad_norm=self.p.clip, noise_multiplier=self.sigma,
                            sample_rate=self.sample_rate, steps=self.p.noisy_steps)

    def after_local_training(self, site: str, round_id: int, result: Any) -> None:
        if self.unit == "trajectory":
            self._pending_sites[site] = (int(result.dp_steps), float(result.dp_sample_rate))

    # -- recording ------------------------------------------------------------------------------
    def _ledger_round(self, round_id: int) -> int:
        """A round re-run after a crash keeps its first rows (still counted) and takes the next id."""
        last = self.ledger.last_round()
        ledger_round = round_id if last is None or last < round_id else last + 1
        self._last_round_metrics = {"ledger_round": ledger_round}
        return ledger_round

    def record_site_spend(self, round_id: int) -> None:
        """Trajectory level: append (and fsync) every site's DP-SGD spend of this round.

        Called as soon as local training is done, before anything is aggregated: the spend
        happened at the sites, whatever becomes of their updates.
        """
        if self.unit != "trajectory":
            return
        from secure_fedrl.ledger import LedgerEntry

        ledger_round = self._ledger_round(round_id)
        for site, (steps, q) in sorted(self._pending_sites.items()):
            if steps <= 0:
                continue
            acct = self.accountants[site]
            acct.apply(GaussianStep(self.sigma, q, steps))
            self.ledger.append(LedgerEntry(
                round=ledger_round, unit="trajectory", site=site, mechanism=self.mechanism, clip=self.p.clip,
                sigma_planned=self.sigma, sigma_effective=self.sigma, sample_rate=q, steps=steps,
                sites_planned=1, sites_survived=1, accountant=self.p.accountant,
                epsilon={self.p.accountant: acct.get_epsilon(self.p.delta)}, delta=self.p.delta))
        self._pending_sites.clear()

    def record_round(self, round_id: int, aggregate: Any) -> None:
        """Client level: append (and fsync) the round's row; called before the aggregate is applied.

        Every round is charged, including rounds that released nothing: whether a round aborts
        depends on who took part.
        """
        if self.unit != "client":
            return
        from secure_fedrl.ledger import LedgerEntry

        ledger_round = self._ledger_round(round_id)
        info = aggregate.privacy
        planned = int(info.get("sites_planned", len(aggregate.included)))
        mechanism = info.get("mechanism_step") or self.source.mechanism(sampled=planned)
        survivors = int(info.get("survivors_priced", len(aggregate.included)))
        sigma_eff = float(info.get("sigma_effective", self.sigma))
        acct = self.accountants[None]
        acct.apply(mechanism)
        self.ledger.append(LedgerEntry(
            round=ledger_round, unit="client", mechanism=self.mechanism, clip=float(info.get("clip", self.p.clip)),
            sigma_planned=self.sigma, sigma_effective=sigma_eff, sample_rate=self.sample_rate,
            sites_planned=planned, sites_survived=survivors, accountant=self.p.accountant,
            epsilon={self.p.accountant: acct.get_epsilon(self.p.delta)}, delta=self.p.delta))
        self._last_round_metrics["noise_multiplier_effective"] = sigma_eff
        self._last_round_metrics["clip"] = float(info.get("clip", self.p.clip))

    # -- reporting ------------------------------------------------------------------------------
    def epsilon_spent(self) -> float | None:
        """Client level: the federation's epsilon; trajectory level: the largest site epsilon."""
        if self.unit == "none":
            return None
        values = [a.get_epsilon(self.p.delta) for a in self.accountants.values() if len(a)]
        return max(values) if values else 0.0

    def round_metrics(self) -> dict[str, Any]:
        if self.unit == "none":
            return {}
        out = {"privacy_unit": self.unit, "noise_multiplier": self.sigma, "delta": self.p.delta,
               "epsilon_budget": self.p.target_epsilon}
        out.update(self._last_round_metrics)
        return out
