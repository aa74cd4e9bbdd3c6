"""Edges of secagg/graph.py that mutation testing (mutmut 3.8.1) found unpinned: the Harary
graph at degree n - 2, the argument checks of the threshold rules, the floor of the honest-input
bound, multi-hop neighbourhoods, and the parameter search's keyword arguments and defaults."""

import pytest

from secure_fedrl.secagg.graph import (effective_degree, min_honest_inputs, neighbours,
                                       secagg_plus_parameters, secagg_plus_parameters_detail,
                                       secure_threshold, within_hops)


@pytest.mark.parametrize("n", [4, 6, 8])
def test_degree_n_minus_2_on_even_n_is_a_sparse_graph_not_the_complete_one(n):
    assert effective_degree(n, n - 2) == n - 2
    g = neighbours(list(range(1, n + 1)), degree=n - 2, graph_seed=bytes(32))
    assert all(len(vs) == n - 2 for vs in g.values())


def test_threshold_rules_check_their_arguments():
    with pytest.raises(ValueError, match="holders must be a positive integer"):
        secure_threshold(0)
    assert secure_threshold(1) == 1
    with pytest.raises(ValueError, match="max_colluding must be a non-negative integer"):
        min_honest_inputs(3, max_colluding=-1)
    with pytest.raises(ValueError, match="threshold must be a positive integer"):
        min_honest_inputs(0)
    assert min_honest_inputs(1) == 1


@pytest.mark.parametrize("t, c, want", [(5, 0, 5), (5, 4, 1), (5, 5, 0), (3, 7, 0)])
def test_min_honest_inputs_never_claims_an_honest_input_that_is_not_guaranteed(t, c, want):
    # c >= t colluders can make up a whole unmaskable sum: the bound is 0, never 1
    assert min_honest_inputs(t, max_colluding=c) == want


def test_within_hops_keeps_the_start_and_every_earlier_hop():
    path = {1: frozenset({2}), 2: frozenset({1, 3}), 3: frozenset({2, 4}), 4: frozenset({3, 5}), 5: frozenset({4})}
    assert within_hops(path, {1}, 0) == {1}
    assert within_hops(path, {1}, 1) == {1, 2}
    assert within_hops(path, {1}, 2) == {1, 2, 3}
    assert within_hops(path, {1, 5}, 1) == {1, 2, 4, 5}


def test_parameter_search_defaults_and_keywords_are_the_documented_ones():
    default = secagg_plus_parameters(100)
    assert default == secagg_plus_parameters(100, dropout=0.05, sigma=40.0, eta=20.0) == (22, 12)
    d = secagg_plus_parameters_detail(100)
    assert (d.n, d.k, d.t) == (100, 22, 12) and d.log2_privacy_failure <= -40 and d.log2_robustness_failure <= -20
    # each keyword is used, and with the same meaning in both functions
    for kw in ({"sigma": 80.0}, {"eta": 60.0}, {"dropout": 0.2}, {"max_colluding": 2}, {"gamma": 0.05}):
        k, t = secagg_plus_parameters(100, **kw)
        detail = secagg_plus_parameters_detail(100, **kw)
        assert (detail.k, detail.t) == (k, t) and k > 22, kw
    assert secagg_plus_parameters_detail(100, sigma=80.0).log2_privacy_failure <= -80
    assert secagg_plus_parameters_detail(100, eta=60.0).log2_robustness_failure <= -60
