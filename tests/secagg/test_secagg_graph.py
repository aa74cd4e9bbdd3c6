import pytest
from hypothesis import given, settings, strategies as st

from secure_fedrl.secagg.graph import effective_degree, neighbours


@given(n=st.integers(2, 60), k=st.integers(1, 70), seed=st.binary(min_size=32, max_size=32))
@settings(max_examples=60, deadline=None)
def test_graph_is_symmetric_regular_and_loop_free(n, k, seed):
    ids = list(range(1, n + 1))
    g = neighbours(ids, degree=k, graph_seed=seed)
    keff = effective_degree(n, k)
    for u, vs in g.items():
        assert u not in vs
        assert len(vs) == keff
        for v in vs:
            assert u in g[v]


def test_graph_is_derived_from_the_seed():
    ids = list(range(1, 41))
    a = neighbours(ids, degree=6, graph_seed=b"a" * 32)
    assert a == neighbours(ids, degree=6, graph_seed=b"a" * 32)
    assert a != neighbours(ids, degree=6, graph_seed=b"b" * 32)


def test_complete_graph_when_degree_is_none_or_large():
    ids = [3, 9, 27, 81]
    for k in (None, 3, 10):
        g = neighbours(ids, degree=k, graph_seed=bytes(32))
        assert all(g[u] == set(ids) - {u} for u in ids)


def test_harary_graph_is_connected():
    ids = list(range(1, 101))
    g = neighbours(ids, degree=4, graph_seed=bytes(32))
    seen, todo = {1}, [1]
    while todo:
        for v in g[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    assert seen == set(ids)


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_bad_degree_rejected(bad):
    with pytest.raises(ValueError, match="degree"):
        neighbours([1, 2, 3], degree=bad, graph_seed=bytes(32))


def test_secure_threshold_is_a_strict_majority_of_holders():
    from secure_fedrl.secagg.graph import holders_per_site, secure_threshold

    assert holders_per_site(50, None) == 50 and secure_threshold(50) == 26
    assert holders_per_site(100, 14) == 15 and secure_threshold(15) == 8
    # with c colluders: 2t > holders + c (two views need 2(t - c) + c holders)
    assert secure_threshold(8, max_colluding=1) == 5 and secure_threshold(15, max_colluding=3) == 10
    for h in range(1, 40):
        for c in range(0, h):
            t = secure_threshold(h, max_colluding=c)
            assert 2 * t > h + c and 2 * (t - 1) <= h + c
    assert holders_per_site(9, 3) == 5  # odd degree on an odd number of sites rounds up to 4


def test_parameter_table_in_spec_matches_the_function():
    import re
    from pathlib import Path

    from secure_fedrl.secagg.graph import secagg_plus_parameters

    spec = (Path(__file__).resolve().parents[2] / "protocols" / "SPEC.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \| ([^|]+?) \| ([^|]+?) \|$", spec, flags=re.M)
    assert [int(r[0]) for r in rows] == [10, 50, 100, 200, 1000, 2000, 10000]
    for n, *cells in rows:
        for cell, kw in zip(cells, (dict(max_colluding=0), dict(max_colluding=1), dict(gamma=0.05))):
            k, t = secagg_plus_parameters(int(n), dropout=0.05, sigma=40, eta=20, **kw)
            assert cell == f"{'complete' if k is None else k}, {t}", (n, kw)


def test_grinding_table_in_spec_matches_the_function():
    """SPEC 8's cost of a hash-over-adverts seed: g = log2 sum_{j<=n/10} C(n, j), k, t at sigma + g."""
    import math
    import re
    from pathlib import Path

    from secure_fedrl.secagg.graph import secagg_plus_parameters

    spec = (Path(__file__).resolve().parents[2] / "protocols" / "SPEC.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([^|]+?) \| ([^|]+?) \| ([^|]+?) \| ([^|]+?) \|$", spec, flags=re.M)
    assert [int(r[0]) for r in rows] == [100, 200, 1000, 2000]
    for n, g, *cells in rows:
        n = int(n)
        bits = math.log2(sum(math.comb(n, j) for j in range(math.ceil(0.1 * n) + 1)))
        assert g == f"{bits:.1f}"
        for cell, (kw, sigma) in zip(cells, ((dict(max_colluding=0), 40), (dict(max_colluding=0), 40 + bits),
                                             (dict(gamma=0.05), 40), (dict(gamma=0.05), 40 + bits))):
            k, t = secagg_plus_parameters(n, dropout=0.05, sigma=sigma, eta=20, **kw)
            assert cell == f"{k}, {t}", (n, kw, sigma)


def test_parameters_meet_their_bounds():
    from secure_fedrl.secagg.graph import secagg_plus_parameters_detail, secure_threshold

    for n in (50, 100, 1000):
        for kw in (dict(max_colluding=0), dict(max_colluding=2), dict(gamma=0.05)):
            p = secagg_plus_parameters_detail(n, dropout=0.05, **kw)
            assert p.log2_privacy_failure <= -40 and p.log2_robustness_failure <= -20
            h = effective_degree(n, p.k) + 1
            c = kw.get("max_colluding", 0)
            assert p.t >= secure_threshold(h, max_colluding=c) and p.t <= h
            assert p.k is None or p.k < n - 1
    with pytest.raises(ValueError):
        secagg_plus_parameters_detail(1)
    with pytest.raises(ValueError):
        secagg_plus_parameters_detail(10, max_colluding=1, gamma=0.1)
