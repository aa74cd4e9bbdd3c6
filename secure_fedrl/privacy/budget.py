"""Privacy budgets: refuse a round *before* it starts if it would exceed the target (epsilon, delta).

Pure objects over an accountant: ``preview`` answers "what would epsilon be after this round",
``commit`` records the round only if it fits. ``SiteBudgets`` keeps one budget per site for
trajectory-level DP, where every site is its own privacy unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from secure_fedrl.errors import ConfigError, PrivacyBudgetExceeded, PrivacyError
from secure_fedrl.privacy.accountants import (
    Accountant,
    Mechanism,
    check_delta,
    make_accountant,
)

__all__ = ["PrivacyBudget", "SiteBudgets"]


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
