"""Budget refusal: a round that would exceed (epsilon, delta) is refused before it runs."""

from __future__ import annotations

import json

import pytest

from secure_fedrl.errors import ConfigError, PrivacyBudgetExceeded, PrivacyError
from secure_fedrl.privacy import epsilon
from secure_fedrl.privacy.accountants import GaussianStep, ZCDPStep, make_accountant
from secure_fedrl.privacy.budget import PrivacyBudget, SiteBudgets

SIGMA, Q, DELTA = 1.0, 0.2, 1e-5
STEP = GaussianStep(SIGMA, Q)


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_commits_exactly_the_affordable_rounds(name):
    target = 3.0
    budget = PrivacyBudget(target, DELTA, name)
    committed = 0
    with pytest.raises(PrivacyBudgetExceeded, match="would bring epsilon to .* > budget 3"):
        while True:
            assert budget.can_afford(STEP) == (budget.preview(STEP) <= target)
            budget.commit(STEP)
            committed += 1
    assert committed == budget.rounds_committed > 0
    # the refused round left no trace
    assert budget.accountant.total_steps == committed
    assert budget.spent == pytest.approx(epsilon(SIGMA, Q, committed, DELTA, name), rel=1e-9)
    assert budget.spent <= target < epsilon(SIGMA, Q, committed + 1, DELTA, name)
    assert not budget.can_afford(STEP)
    assert budget.remaining == pytest.approx(target - budget.spent)


def test_preview_does_not_record():
    budget = PrivacyBudget(10.0, DELTA)
    budget.commit(STEP)
    spent = budget.spent
    after = budget.preview(GaussianStep(SIGMA, Q, 5))
    assert budget.spent == spent and after > spent
    assert budget.accountant.total_steps == 1


def test_generic_mechanism_budget():
    budget = PrivacyBudget(2.0, DELTA, "rdp")
    assert budget.commit(ZCDPStep(0.01)) > 0
    with pytest.raises(PrivacyBudgetExceeded):
        budget.commit(ZCDPStep(1.0))
    with pytest.raises(ConfigError, match="only Poisson-subsampled Gaussian"):
        PrivacyBudget(2.0, DELTA, "prv").commit(ZCDPStep(0.01))


def test_rebuilt_accountant_already_over_budget_is_refused():
    acct = make_accountant("rdp")
    acct.step(noise_multiplier=0.5, sample_rate=1.0, num_steps=100)
    with pytest.raises(PrivacyBudgetExceeded, match="already spent"):
        PrivacyBudget(1.0, DELTA, acct)


@pytest.mark.parametrize(
    "target,delta,needle",
    [(0.0, DELTA, "target_epsilon"), (-1.0, DELTA, "target_epsilon"),
     (float("nan"), DELTA, "target_epsilon"), (1.0, 0.0, "delta"), (1.0, 1.5, "delta")],
)
def test_bad_budget(target, delta, needle):
    with pytest.raises(PrivacyError, match=needle):
        PrivacyBudget(target, delta)


def test_bad_accountant():
    with pytest.raises(ConfigError, match="accountant must be one of"):
        PrivacyBudget(1.0, DELTA, "gdp")


def test_state_round_trip():
    budget = PrivacyBudget(5.0, DELTA, "rdp", label="fed")
    for _ in range(3):
        budget.commit(STEP)
    state = json.loads(json.dumps(budget.state_dict()))
    again = PrivacyBudget.from_state_dict(state)
    assert again.spent == pytest.approx(budget.spent, rel=1e-12)
    assert again.rounds_committed == 3 and again.label == "fed"
    with pytest.raises(ConfigError, match="malformed"):
        PrivacyBudget.from_state_dict({"delta": DELTA})


def test_site_budgets_are_independent_and_all_or_nothing():
    sites = SiteBudgets(["a", "b"], target_epsilon=5.0, delta=DELTA)
    small, big = GaussianStep(SIGMA, Q), GaussianStep(0.5, 1.0, 50)
    sites.commit({"a": small})
    assert sites["a"].spent > 0 and sites["b"].spent == 0
    with pytest.raises(PrivacyBudgetExceeded, match="site 'b'"):
        sites.commit({"a": small, "b": big})
    assert sites["a"].rounds_committed == 1  # a's round was not recorded either
    assert sites.affordable({"a": small, "b": big}) == ["a"]
    with pytest.raises(ConfigError, match="unknown site"):
        sites["c"]
    with pytest.raises(ConfigError, match="unique"):
        SiteBudgets(["a", "a"], target_epsilon=1.0, delta=DELTA)
    state = json.loads(json.dumps(sites.state_dict()))
    again = SiteBudgets(["a", "b"], target_epsilon=5.0, delta=DELTA)
    again.load_state_dict(state)
    assert again.spent() == pytest.approx(sites.spent())
