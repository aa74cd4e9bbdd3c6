"""The SecAgg+ parameter search `graph._secagg_plus` (SPEC.md section 2, "Choosing k and t"),
pinned where mutation testing found it unpinned (mutmut 3.8.1, run with its `lru_cache`
removed so the search itself is mutated): argument ranges and their messages, the search range
(k starts at 2, k = n - 2 is a sparse candidate, an odd n's k = n - 2 is the complete graph),
the inclusive `<= 2^-sigma` / `<= 2^-eta` bounds, the hypergeometric rule for c_max under
`gamma`, and the failure probabilities `secagg_plus_parameters_detail` reports for the
complete graph (one holder set, no ring: no union bound, no connectivity term)."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binom, hypergeom

from secure_fedrl.secagg.graph import effective_degree, secagg_plus_parameters, secagg_plus_parameters_detail


def _detail(n, **kw):
    d = secagg_plus_parameters_detail(n, **kw)
    return d.k, d.t, d.log2_privacy_failure, d.log2_robustness_failure


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("n, kw, message", [
    (1, {}, "n must be an integer >= 2, got 1"),
    (10, dict(max_colluding=1, gamma=0.1), "give either max_colluding or gamma, not both"),
    (10, dict(max_colluding=-1), "max_colluding must be an integer in [0, n), got -1"),
    (10, dict(max_colluding=10), "max_colluding must be an integer in [0, n), got 10"),
    (10, dict(gamma=1.0), "gamma must be in [0, 1), got 1.0"),
    (10, dict(gamma=-0.01), "gamma must be in [0, 1), got -0.01"),
    (10, dict(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
    (10, dict(dropout=-0.01), "dropout must be in [0, 1), got -0.01"),
    (10, dict(sigma=0.0), "sigma and eta must be positive"),
    (10, dict(eta=0.0), "sigma and eta must be positive"),
])
def test_an_out_of_range_argument_is_a_named_value_error(n, kw, message):
    with pytest.raises(ValueError) as err:
        secagg_plus_parameters(n, **kw)
    assert str(err.value) == message


def test_the_edges_of_each_range_are_accepted():
    # n = 2: the only graph is the complete one, both sites hold every share (t = h = 2)
    assert secagg_plus_parameters(2) == (None, 2)
    # max_colluding = n - 1: still valid, t = h = n
    assert secagg_plus_parameters(10, max_colluding=9) == (None, 10)
    assert secagg_plus_parameters(5, max_colluding=3) == (None, 5)
    # gamma = 0 means no colluders: the same parameters as max_colluding = 0
    assert secagg_plus_parameters(100, gamma=0.0) == secagg_plus_parameters(100, max_colluding=0) == (22, 12)
    assert secagg_plus_parameters(100, gamma=0.001) == (22, 12)  # floor(0.1) = 0 colluders
    assert secagg_plus_parameters(10, gamma=0.99) == (None, 10)
    # sigma = eta = 1 are positive, hence allowed
    d = secagg_plus_parameters_detail(100, sigma=1.0, eta=1.0)
    assert d.log2_privacy_failure <= -1 and d.log2_robustness_failure <= -1


# ----------------------------------------------------------------------------- search range


@pytest.mark.parametrize("n", [100, 101])
def test_no_dropout_no_colluders_gives_the_least_degree_two(n):
    # nothing is ever removed: the ring k = 2 (t = 2) is connected and robust with probability 1;
    # k = 0 and k = 1 (a matching) are not SecAgg+ graphs and are never candidates
    assert _detail(n, dropout=0.0) == (2, 2, -math.inf, -math.inf)


def test_degree_n_minus_2_is_a_sparse_candidate_on_even_n():
    # n = 10, dropout 0.01: k = 7 fails connectivity at sigma = 20 (3 removed in a row:
    # 10 * 0.01^3), k = 8 passes it (10 * 0.01^4) and robustness (10 * P[Bin(9, 0.99) < 5])
    k, t, lp, lr = _detail(10, dropout=0.01, sigma=20.0)
    assert (k, t) == (8, 5)
    assert lp == pytest.approx(math.log2(10) + 4 * math.log2(0.01))
    assert lr == pytest.approx(math.log2(10) + math.log2(binom.cdf(4, 9, 0.99)))
    # at sigma = 40 no sparse graph is connected enough: k = 8 is checked as a ring, not as complete
    assert secagg_plus_parameters(10, dropout=0.01) == (None, 6)


def test_degree_n_minus_2_on_odd_n_is_reported_as_the_complete_graph():
    # n = 11: k = 9 rounds up to 10 = n - 1, the complete graph; it is chosen (no sparse k passes
    # connectivity) and must come back as None, never as 9
    assert secagg_plus_parameters(11, dropout=0.01) == (None, 6)


# ----------------------------------------------------------------------------- complete graph


def test_the_complete_graph_reports_one_holder_set_and_no_ring():
    # SPEC 2: n = 10 reaches only 2^-13.9 robustness: P[Bin(10, 0.95) < 6], no factor n
    k, t, lp, lr = _detail(10)
    assert (k, t, lp) == (None, 6, -math.inf)
    assert lr == pytest.approx(math.log2(binom.cdf(5, 10, 0.95))) and f"{lr:.1f}" == "-13.9"


def test_the_complete_graph_found_at_degree_n_minus_2_reports_its_own_bounds():
    # n = 11, sigma = 25: k = 9 (= complete) is where the search stops; a ring check there
    # (11 * 0.01^5, and a union bound over 11 holder sets) would also pass, so only the
    # reported bounds tell whether it was evaluated as the complete graph
    k, t, lp, lr = _detail(11, dropout=0.01, sigma=25.0)
    assert (k, t, lp) == (None, 6, -math.inf)
    assert lr == pytest.approx(math.log2(binom.cdf(5, 11, 0.99)))


def test_all_but_one_colluding_leaves_one_honest_holder():
    # n = 2, c = 1: t = 2 but one honest site: robustness fails with probability 1
    assert _detail(2, max_colluding=1) == (None, 2, -math.inf, 0.0)
    # gamma = 0.9 of 10: all 9 others collude, c_max = h - 1 = 9 exactly (a hard bound, P = 0)
    assert _detail(10, gamma=0.9) == (None, 10, -math.inf, 0.0)


def test_one_colluder_in_ten_with_gamma():
    # floor(0.1 * 10) = 1 colluder among the 9 others of the one holder set: c_max = 1, t = 6
    assert secagg_plus_parameters(10, gamma=0.1) == (None, 6)


# ----------------------------------------------------------------------------- bounds


def test_the_privacy_and_robustness_bounds_are_inclusive():
    # "except with probability <= 2^-sigma" (and 2^-eta): asking for exactly the probability a
    # choice reaches keeps that choice
    _, _, lp, lr = _detail(100)
    assert secagg_plus_parameters(100, sigma=-lp) == (22, 12)
    assert secagg_plus_parameters(100, eta=-lr) == (22, 12)
    # with gamma, the least c_max whose tail reaches exactly 2^-sigma is kept
    base = _detail(1000, gamma=0.05)
    assert base[:2] == (136, 84)
    assert _detail(1000, gamma=0.05, sigma=-base[2]) == base


def _spec_c_max(n, gamma, h, sigma):
    """SPEC 2: the least c_max with n * P[Hypergeometric(n-1, floor(gamma n), h-1) > c_max] <= 2^-sigma."""
    corrupt = math.floor(gamma * n)
    for c in range(h):
        tail = hypergeom.sf(c, n - 1, corrupt, h - 1) if corrupt else 0.0
        if tail == 0 or math.log2(n) + math.log2(tail) <= -sigma:
            return c
    raise AssertionError("no c_max")


@pytest.mark.parametrize("n, gamma, sigma", [(1000, 0.05, 40.0), (1000, 0.05, 42.2), (200, 0.1, 40.0),
                                             (500, 0.02, 30.0)])
def test_gamma_threshold_follows_the_hypergeometric_rule(n, gamma, sigma):
    k, t, lp, lr = _detail(n, gamma=gamma, sigma=sigma)
    assert k is not None
    h = effective_degree(n, k) + 1
    c = _spec_c_max(n, gamma, h, sigma)
    assert t == (h + c) // 2 + 1
    tail = hypergeom.sf(c, n - 1, math.floor(gamma * n), h - 1)
    lp_conn = math.log2(n) + (effective_degree(n, k) // 2) * math.log2(0.05 + math.floor(gamma * n) / n)
    lp_corrupt = -math.inf if tail == 0 else math.log2(n) + math.log2(tail)
    assert lp == pytest.approx(max(lp_corrupt, lp_conn), rel=1e-9)
    assert lr == pytest.approx(math.log2(n) + math.log2(binom.cdf(t - 1, h - c, 0.95)), rel=1e-9)
    assert lp <= -sigma and lr <= -20


def test_gamma_tail_uses_the_n_minus_1_other_sites():
    # at sigma = 42.2 the c_max that sufficed at 40 (2^-42.17 at k = 136) no longer does: the next
    # one raises t, and k = 139 is the least degree robust with it. A slightly smaller population
    # or draw count in the hypergeometric tail would keep k = 136, t = 84.
    assert secagg_plus_parameters(1000, gamma=0.05, sigma=42.2) == (139, 86)
