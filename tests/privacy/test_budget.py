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


# -- SiteGuard in gamma mode: the site's own (epsilon, delta) and its cap on GraphReveals --------
from fractions import Fraction  # noqa: E402
import math  # noqa: E402

from secure_fedrl.privacy.budget import GRAPH_DELTA_SHARE, SiteGuard  # noqa: E402

FAILURE = 2.0 ** -40


def _guard(delta=DELTA, failure=FAILURE, **kw):
    return SiteGuard("s-7", target_epsilon=kw.pop("target", 5.0), delta=delta, graph_failure=failure, **kw)


def test_guard_states_epsilon_at_delta_and_delta_plus_its_reveals():
    g = _guard()
    assert g.guarantee() == (0.0, DELTA) and g.delta == DELTA and g.delta_graph == 0.0
    g.charge(STEP)
    assert g.count_graph_reveal() == 1 and g.count_graph_reveal() == 2
    eps, d = g.guarantee()
    assert eps == g.epsilon == g.budget.spent > 0  # epsilon at privacy.delta, not at d
    assert g.delta_graph == 2 * FAILURE and d == DELTA + 2 * FAILURE


def test_guard_cap_is_floor_delta_over_100_failures():
    """~1.1e5 attempts at delta 1e-5; exact at the boundary (rationals): cap x failure <= delta /
    100 < (cap + 1) x failure."""
    g = _guard()
    assert GRAPH_DELTA_SHARE == 100
    assert g.max_graph_reveals == 109951 == math.floor(1e-5 * 2 ** 40 / 100)
    for delta, cap in [(350 * FAILURE, 3), (300 * FAILURE, 3), (299 * FAILURE, 2), (100 * FAILURE, 1),
                       (99 * FAILURE, 0)]:
        g = _guard(delta)
        assert g.max_graph_reveals == cap, delta
        assert Fraction(cap) * Fraction(FAILURE) <= Fraction(delta) / 100 < Fraction(cap + 1) * Fraction(FAILURE)
    assert _guard(failure=1e-9).max_graph_reveals == 100  # not only 2^-40


def test_a_retrying_server_is_stopped_at_the_cap():
    """The server aborts and retries; the guard counts every reveal and refuses the one past the
    cap in one line naming the site, the count and the cap, recording nothing; delta_u stays
    <= 1.01 delta. enforce=False (release threat model) does not lift the cap."""
    for enforce in (True, False):
        g = _guard(350 * FAILURE, enforce=enforce)
        sent = 0
        while g.admits_graph_reveal():
            g.check_graph_reveal()
            g.count_graph_reveal()
            sent += 1
        assert sent == 3 == g.graph_reveals
        for call in (g.check_graph_reveal, g.count_graph_reveal):
            with pytest.raises(PrivacyBudgetExceeded) as err:
                call()
            msg = str(err.value)
            assert len(msg.splitlines()) == 1
            assert "site s-7" in msg and "3 SecAgg+ graph reveals sent" in msg and "the cap is 3" in msg
        assert g.graph_reveals == 3
        assert g.guarantee()[1] <= 1.01 * g.delta


def test_no_cap_outside_gamma_mode():
    g = _guard(failure=0.0)
    assert g.max_graph_reveals is None and g.admits_graph_reveal()
    g.restore_graph_reveals(10 ** 9)
    g.check_graph_reveal()
    assert g.count_graph_reveal() == 10 ** 9 + 1 and g.delta_graph == 0.0 and g.guarantee()[1] == DELTA
    assert SiteGuard("s", target_epsilon=1.0, delta=DELTA).graph_failure == 0.0


def test_restore_never_lowers_and_refuses_bad_counts():
    g = _guard()
    g.restore_graph_reveals(4)
    assert g.graph_reveals == 4
    g.restore_graph_reveals(2)  # an older state: the higher count stays (over-count, never under)
    assert g.graph_reveals == 4
    g.restore_graph_reveals(0)
    assert g.graph_reveals == 4
    for bad in (-1, True, 2.0, "3", None):
        with pytest.raises(PrivacyError, match="site s-7: saved graph_reveals must be a non-negative integer"):
            g.restore_graph_reveals(bad)
    assert g.graph_reveals == 4
    g = _guard(350 * FAILURE)
    g.restore_graph_reveals(3)  # restored at the cap: refuses at once
    assert not g.admits_graph_reveal()


@pytest.mark.parametrize("bad", [-1e-12, 1.0, 2.0, True, "2^-40", None, float("nan")])
def test_guard_refuses_a_bad_graph_failure(bad):
    with pytest.raises(PrivacyError, match="graph_failure must be a probability"):
        _guard(failure=bad)


def test_guard_defaults_enforce_and_counts_participations_one_by_one():
    """SiteGuard's own accounting (mutation-testing gaps): enforcing by default, the accountant it
    is given, errors labelled with the site, one participation and one round per charge."""
    g = SiteGuard("s-7", target_epsilon=0.5, delta=DELTA)
    assert g.enforce is True and g.participations == 0 and g.budget.rounds_committed == 0
    big = GaussianStep(0.3, 1.0)
    assert not g.admits(big)
    assert SiteGuard("s-7", target_epsilon=0.5, delta=DELTA, enforce=False).admits(big)
    assert SiteGuard("s-7", target_epsilon=0.5, delta=DELTA, enforce=0).enforce is False
    assert g.admits(GaussianStep(50.0, 0.01))
    with pytest.raises(PrivacyBudgetExceeded, match=r"^site s-7: next round"):
        g.budget.check(big)
    assert type(SiteGuard("s", target_epsilon=1.0, delta=DELTA, accountant="prv").budget.accountant) is \
        type(make_accountant("prv"))
    for k in (1, 2):
        g.charge(STEP)
        assert g.participations == k == g.budget.rounds_committed
