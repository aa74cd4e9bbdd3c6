"""Privacy budgets: refuse a round *before* it starts if it would exceed the target (epsilon, delta).

Pure objects over an accountant: ``preview`` answers "what would epsilon be after this round",
``commit`` records the round only if it fits. ``SiteBudgets`` keeps one budget per site for
trajectory-level DP, where every site is its own privacy unit. ``SiteGuard`` is a site's own
check against the server (client level): it charges only the site's own participations and
refuses a round that would exceed its budget; in gamma mode it also counts the SecAgg+ attempts
the site helped seed (GraphReveals) and refuses one that would take its delta past the cap.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from secure_fedrl.errors import ConfigError, PrivacyBudgetExceeded, PrivacyError
from secure_fedrl.privacy.accountants import (
    Accountant,
    Mechanism,
    check_delta,
    make_accountant,
)

__all__ = ["GRAPH_DELTA_SHARE", "PrivacyBudget", "RoundCost", "SiteBudgets", "SiteGuard"]

#: gamma mode: a site's graph term A_u x failure stays <= privacy.delta / GRAPH_DELTA_SHARE, so its
#: delta stays <= (1 + 1/GRAPH_DELTA_SHARE) privacy.delta (SPEC 8, docs/privacy-model.md).
GRAPH_DELTA_SHARE = 100


@dataclass(frozen=True)
class RoundCost:
    """What one round costs, per threat model (docs/privacy-model.md).

    `server`: the charge to EACH participating site against the server (None: no guarantee, the
    server sees the updates). `release`: the charge to the federation against release-only
    observers (amplified by the secret sample). `noise_shares` and `params` are what the ledger
    records so an auditor can recompute both (FORMAT.md, "Privacy semantics (v2)").
    """

    server: Mechanism | None
    release: Mechanism
    noise_shares: int = 0
    params: Mapping[str, float] = field(default_factory=dict)
    sigma_effective: float = 0.0


def _check_target(target_epsilon: Any) -> float:
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)):
        raise PrivacyError(f"target_epsilon must be a real number, got {target_epsilon!r}")
    eps = float(target_epsilon)
    if math.isnan(eps) or eps <= 0.0 or math.isinf(eps):
        raise PrivacyError(f"target_epsilon must be finite and > 0, got {target_epsilon}")
    return eps


@dataclass
class PrivacyBudget:
    """A target (epsilon, delta) and the accountant that tracks spend against it.

    ``accountant`` is a name ("rdp" / "prv") or an ``Accountant`` (used as is, e.g. one rebuilt
    from the ledger). ``label`` names the budget in error messages (e.g. the site).
    """

    target_epsilon: float
    delta: float
    accountant: Accountant | str = "rdp"
    label: str = "federation"
    rounds_committed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.target_epsilon = _check_target(self.target_epsilon)
        self.delta = check_delta(self.delta)
        if isinstance(self.accountant, str):
            self.accountant = make_accountant(self.accountant)
        elif not isinstance(self.accountant, Accountant):
            raise ConfigError(f"accountant must be a name or an Accountant, got {self.accountant!r}")
        if self.spent > self.target_epsilon:
            raise PrivacyBudgetExceeded(
                f"{self.label}: accountant already spent epsilon {self.spent:.4g} "
                f"> target {self.target_epsilon:g}"
            )

    @property
    def spent(self) -> float:
        """Epsilon spent so far at this budget's delta."""
        return self.accountant.get_epsilon(self.delta)

    @property
    def remaining(self) -> float:
        return max(self.target_epsilon - self.spent, 0.0)

    def preview(self, mechanism: Mechanism) -> float:
        """Epsilon after ``mechanism`` were run next; nothing is recorded."""
        return self.accountant.epsilon_after(mechanism, self.delta)

    def can_afford(self, mechanism: Mechanism) -> bool:
        return self.preview(mechanism) <= self.target_epsilon

    def check(self, mechanism: Mechanism) -> float:
        """Raise ``PrivacyBudgetExceeded`` if ``mechanism`` would exceed; else the new epsilon."""
        after = self.preview(mechanism)
        if not after <= self.target_epsilon:
            raise PrivacyBudgetExceeded(
                f"{self.label}: next round would bring epsilon to {after:.4g} > budget "
                f"{self.target_epsilon:g} (delta={self.delta:g}; {self.spent:.4g} spent "
                f"over {self.rounds_committed} rounds)"
            )
        return after

    def commit(self, mechanism: Mechanism) -> float:
        """Record ``mechanism`` if it fits (else raise, recording nothing); return new epsilon."""
        after = self.check(mechanism)
        self.accountant.apply(mechanism)
        self.rounds_committed += 1
        return after

    def state_dict(self) -> dict[str, Any]:
        return {
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "label": self.label,
            "rounds_committed": self.rounds_committed,
            "accountant": self.accountant.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "PrivacyBudget":
        try:
            acct_state = state["accountant"]
            acct = make_accountant(acct_state["mechanism"])
            acct.load_state_dict(dict(acct_state))
            budget = cls(state["target_epsilon"], state["delta"], acct,
                         label=state.get("label", "federation"))
            budget.rounds_committed = int(state.get("rounds_committed", 0))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"privacy budget state is malformed: missing {exc}") from exc
        return budget


class SiteBudgets:
    """One ``PrivacyBudget`` per site (trajectory-level DP: each site's data is its own unit)."""

    def __init__(self, sites: Iterable[str], *, target_epsilon: float, delta: float,
                 accountant: str = "rdp") -> None:
        names = list(sites)
        if not names:
            raise ConfigError("SiteBudgets needs at least one site")
        if len(set(names)) != len(names):
            raise ConfigError("SiteBudgets: site names must be unique")
        self.budgets: dict[str, PrivacyBudget] = {
            s: PrivacyBudget(target_epsilon, delta, accountant, label=f"site {s!r}") for s in names
        }

    def __getitem__(self, site: str) -> PrivacyBudget:
        try:
            return self.budgets[site]
        except KeyError:
            raise ConfigError(f"unknown site {site!r}") from None

    def __iter__(self):
        return iter(self.budgets)

    def __len__(self) -> int:
        return len(self.budgets)

    def spent(self) -> dict[str, float]:
        return {s: b.spent for s, b in self.budgets.items()}

    def affordable(self, mechanisms: Mapping[str, Mechanism]) -> list[str]:
        """Sites whose own budget can afford their proposed mechanism."""
        return [s for s, m in mechanisms.items() if self[s].can_afford(m)]

    def commit(self, mechanisms: Mapping[str, Mechanism]) -> dict[str, float]:
        """All-or-nothing: check every site first, then record each; return new epsilons."""
        for s, m in mechanisms.items():
            self[s].check(m)
        return {s: self[s].commit(m) for s, m in mechanisms.items()}

    def state_dict(self) -> dict[str, Any]:
        return {s: b.state_dict() for s, b in self.budgets.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.budgets):
            raise ConfigError("SiteBudgets state names different sites")
        self.budgets = {s: PrivacyBudget.from_state_dict(state[s]) for s in state}


class SiteGuard:
    """One site's budget against the server, kept by the site itself (docs/privacy-model.md).

    Why a separate object: against the server there is no amplification by sampling, so each
    site is charged only for the rounds its masked input (or update) actually left it, and it
    alone decides whether to take part. The decision uses only the site's own participations
    and the round's attested mechanism, never its data, so it does not itself leak. In-process
    today; the site runtime owns it in a deployment. ``enforce=False`` (release threat model)
    keeps the accounting but never refuses on epsilon.

    Gamma mode (``graph_failure`` > 0: the per-attempt probability, 2^-40, that some SecAgg+
    holder set holds more than c_max colluders, SPEC 8): the guard also counts A_u, the round
    attempts in which the site sent a GraphReveal (aborted ones included: each is a fresh draw
    of the graph), and states the site's guarantee (epsilon at ``delta``, ``delta`` + A_u x
    failure). A malicious server can abort and retry without end, so the guard refuses the
    reveal that would take A_u x failure above delta / GRAPH_DELTA_SHARE (whatever ``enforce``
    says): at most ``max_graph_reveals`` = floor(delta / (100 failure)) attempts, ~1.1e5 at
    delta = 1e-5, and the site's delta never exceeds 1.01 delta. Pure: no I/O.
    """

    def __init__(self, site: str, *, target_epsilon: float, delta: float,
                 accountant: Accountant | str = "rdp", enforce: bool = True, graph_failure: float = 0.0) -> None:
        self.site = site
        self.enforce = bool(enforce)
        self.budget = PrivacyBudget(target_epsilon, delta, accountant, label=f"site {site}")
        self.participations = 0
        if isinstance(graph_failure, bool) or not isinstance(graph_failure, (int, float)) \
                or not 0.0 <= graph_failure < 1.0:
            raise PrivacyError(f"site {site}: graph_failure must be a probability in [0, 1), got {graph_failure!r}")
        self.graph_failure = float(graph_failure)
        self.graph_reveals = 0

    @property
    def epsilon(self) -> float:
        """The site's epsilon against the server so far (at ``delta``)."""
        return self.budget.spent

    @property
    def delta(self) -> float:
        """privacy.delta: the delta every epsilon is computed at."""
        return self.budget.delta

    @property
    def delta_graph(self) -> float:
        """A_u x failure: what the SecAgg+ graph adds to the site's delta (0 outside gamma mode)."""
        return self.graph_reveals * self.graph_failure

    def guarantee(self) -> tuple[float, float]:
        """(epsilon_u, delta_u): the site's own statement against the server, epsilon at
        ``delta`` and delta_u = ``delta`` + A_u x failure (<= 1.01 ``delta`` under the cap)."""
        return self.epsilon, self.delta + self.delta_graph

    @property
    def max_graph_reveals(self) -> int | None:
        """The most GraphReveals the site sends: floor(delta / (GRAPH_DELTA_SHARE x failure)),
        in exact rationals; None outside gamma mode (failure 0: nothing to bound)."""
        if self.graph_failure == 0.0:
            return None
        return math.floor(Fraction(self.delta) / (GRAPH_DELTA_SHARE * Fraction(self.graph_failure)))

    def admits_graph_reveal(self) -> bool:
        """Would the site send one more GraphReveal? (Records nothing.)"""
        cap = self.max_graph_reveals
        return cap is None or self.graph_reveals < cap

    def check_graph_reveal(self) -> None:
        """Raise ``PrivacyBudgetExceeded`` (one line: the site, its count, the cap) unless
        ``admits_graph_reveal``."""
        if not self.admits_graph_reveal():
            raise PrivacyBudgetExceeded(
                f"site {self.site}: its graph-attempt budget is spent: {self.graph_reveals} SecAgg+ graph "
                f"reveals sent, the cap is {self.max_graph_reveals} (delta {self.delta:g} / "
                f"{GRAPH_DELTA_SHARE} over {self.graph_failure:.3g} per attempt); refusing another attempt")

    def count_graph_reveal(self) -> int:
        """Record one GraphReveal about to leave the site (before it leaves); returns A_u.
        Refuses (records nothing) where ``check_graph_reveal`` does."""
        self.check_graph_reveal()
        self.graph_reveals += 1
        return self.graph_reveals

    def restore_graph_reveals(self, count: Any) -> None:
        """A saved A_u (the site's state): never lowers the count (a crash may over-count,
        never under-count); refuses a count that is not a non-negative integer."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PrivacyError(f"site {self.site}: saved graph_reveals must be a non-negative integer, got {count!r}")
        self.graph_reveals = max(self.graph_reveals, count)

    def admits(self, mechanism: Mechanism) -> bool:
        """Would the site take part in a round costing ``mechanism``? (Records nothing.)"""
        return not self.enforce or self.budget.can_afford(mechanism)

    def charge(self, mechanism: Mechanism) -> float:
        """Record one participation (its input left the site); returns the new epsilon.

        Charged even when it exceeds the budget (a refused round never gets here; a replayed
        ledger must count everything it holds)."""
        self.budget.accountant.apply(mechanism)
        self.budget.rounds_committed += 1
        self.participations += 1
        return self.budget.spent


class ReleaseAccount:
    """The federation's DDG account against release-only observers (docs/privacy-model.md, Thm R).

    Two valid upper bounds on the same Renyi divergence, taken pointwise per order:

    * product: sum over rounds of the Bernoulli-mixture curve of each round's per-site cost;
    * capped (only when sites enforce their own budget against the server, so that no site takes
      part more than P times): (1/(a-1)) log E_{K ~ Bin(R, q)} exp((a-1) eps_max(a) min(K, P)),
      eps_max the pointwise maximum of the rounds' per-site costs, P the most participations a
      site's guard can admit at the pointwise-minimum cost.

    Pure; rebuilt from the ledger rows on resume.
    """

    def __init__(self, sample_rate: float, *, delta: float, cap_target: float | None = None) -> None:
        from secure_fedrl.privacy.accountants import RDP_ORDERS, check_sample_rate

        self.q = check_sample_rate(sample_rate)
        self.delta = check_delta(delta)
        self.cap_target = None if cap_target is None else _check_target(cap_target)
        n = len(RDP_ORDERS)
        self.rounds = 0
        self._product = np.zeros(n)
        self._max = np.zeros(n)
        self._min = np.full(n, np.inf)

    def apply(self, server_curve: Any) -> None:
        """Charge one round whose per-participant cost is `server_curve` (RDP on RDP_ORDERS)."""
        from secure_fedrl.privacy.accountants import bernoulli_mixture_rdp

        c = np.asarray(server_curve, dtype=np.float64)
        self._product = self._product + bernoulli_mixture_rdp(c, self.q)
        self._max = np.maximum(self._max, c)
        self._min = np.minimum(self._min, c)
        self.rounds += 1

    def cap(self) -> int | None:
        """P: most participations any enforcing site can have had (None: no cap)."""
        from secure_fedrl.privacy.accountants import rdp_to_epsilon

        if self.cap_target is None or self.rounds == 0:
            return None
        k = 0
        while k < self.rounds and rdp_to_epsilon(self._min * (k + 1), self.delta) <= self.cap_target:
            k += 1
        return k

    def curve(self) -> np.ndarray:
        """The RDP curve charged so far (pointwise minimum of the two bounds)."""
        p = self.cap()
        if p is None or p >= self.rounds:
            return self._product.copy()
        return np.minimum(self._product, capped_binomial_rdp(self._max, self.q, self.rounds, p))

    def get_epsilon(self, delta: float) -> float:
        from secure_fedrl.privacy.accountants import rdp_to_epsilon

        return rdp_to_epsilon(self.curve(), check_delta(delta))

    def epsilon_after(self, server_curve: Any, delta: float) -> float:
        trial = ReleaseAccount(self.q, delta=self.delta, cap_target=self.cap_target)
        trial.rounds, trial._product, trial._max, trial._min = (self.rounds, self._product, self._max,
                                                                  self._min)
        trial.apply(server_curve)
        return trial.get_epsilon(delta)


def capped_binomial_rdp(eps_max: Any, q: float, rounds: int, cap: int) -> np.ndarray:
    """(1/(a-1)) log sum_k Bin(rounds, q)(k) exp((a-1) eps_max(a) min(k, cap)) on RDP_ORDERS."""
    from scipy.special import logsumexp
    from scipy.stats import binom

    from secure_fedrl.privacy.accountants import RDP_ORDERS

    a = np.asarray(RDP_ORDERS, dtype=np.float64)[:, None]
    eps = np.asarray(eps_max, dtype=np.float64)[:, None]
    k = np.arange(rounds + 1, dtype=np.float64)[None, :]
    logpmf = binom.logpmf(k, rounds, q)
    with np.errstate(invalid="ignore"):
        terms = logpmf + (a - 1.0) * eps * np.minimum(k, cap)
    out = logsumexp(terms, axis=1) / (a[:, 0] - 1.0)
    out = np.where(np.isinf(eps[:, 0]), np.inf, out)
    return np.maximum(out, 0.0)
