"""Neighbour graphs: the complete graph (SecAgg) and a seeded Harary graph (SecAgg+).

SecAgg+ (Bell et al. 2020) replaces the complete graph by a sparse k-regular graph with
k = O(log n), relabelled by a random permutation so that the server cannot pick who neighbours
whom. Every party derives the same graph from the round's graph seed; no graph is sent.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence


def site_order(site_ids: Sequence[int], graph_seed: bytes) -> list[int]:
    """Seeded permutation: ids sorted by SHA-256("secure-fedrl/secagg/graph" || seed || u32be(id))."""
    if len(graph_seed) != 32:
        raise ValueError("graph seed must be 32 bytes")
    prefix = b"secure-fedrl/secagg/graph" + bytes(graph_seed)
    return sorted(site_ids, key=lambda i: hashlib.sha256(prefix + int(i).to_bytes(4, "big")).digest())


def effective_degree(n: int, degree: int | None) -> int:
    """The degree actually used: n-1 for the complete graph, k rounded up to even when n is odd."""
    if degree is None or degree >= n - 1:
        return n - 1
    if degree % 2 and n % 2:
        return degree + 1
    return degree


def neighbours(site_ids: Sequence[int], *, degree: int | None, graph_seed: bytes) -> dict[int, frozenset[int]]:
    """Map each site to its neighbours (never itself).

    degree None (or >= n-1): complete graph. Otherwise the Harary graph H_{k,n} on the seeded
    order: position i is joined to i±1..i±floor(k/2) (cyclically) and, for odd k with even n,
    to the opposite position i+n/2. For odd k with odd n, k+1 is used (a k-regular graph on an odd
    number of vertices with odd k does not exist).
    """
    ids = list(site_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("site ids must be distinct")
    if degree is not None and (not isinstance(degree, int) or degree < 1):
        raise ValueError(f"graph degree must be a positive integer or None, got {degree!r}")
    k = effective_degree(n, degree)
    if k >= n - 1:
        return {u: frozenset(v for v in ids if v != u) for u in ids}
    order = site_order(ids, graph_seed)
    adj: dict[int, set[int]] = {u: set() for u in ids}
    half = k // 2
    for i, u in enumerate(order):
        for step in range(1, half + 1):
            v = order[(i + step) % n]
            adj[u].add(v)
            adj[v].add(u)
        if k % 2:
            v = order[(i + n // 2) % n]
            adj[u].add(v)
            adj[v].add(u)
    return {u: frozenset(vs) for u, vs in adj.items()}


def default_degree(n: int) -> int:
    """k ~ 2 log2 n, the SecAgg+ regime the benchmarks use."""
    return max(2, math.ceil(2 * math.log2(max(n, 2))))


def holders_per_site(n: int, degree: int | None) -> int:
    """Size of every holder set (a site plus its neighbours): the largest valid threshold."""
    return effective_degree(n, degree) + 1


def secure_threshold(holders: int, *, max_colluding: int = 0) -> int:
    """Smallest Shamir threshold t with 2t > holders + max_colluding (SPEC.md section 8).

    Each honest site signs one survivor set; a holder reveals a site's shares only under a view
    that t holders of that site signed. Two different views signed by t holders each need
    2(t - c) + c <= holders sites, so with 2t > holders + c at most one view per site exists and
    the server never gets both secrets of an honest site.
    """
    if not isinstance(holders, int) or holders < 1:
        raise ValueError(f"holders must be a positive integer, got {holders!r}")
    if not isinstance(max_colluding, int) or max_colluding < 0:
        raise ValueError(f"max_colluding must be a non-negative integer, got {max_colluding!r}")
    return (holders + max_colluding) // 2 + 1


def min_honest_inputs(threshold: int, *, max_colluding: int = 0) -> int:
    """Fewest HONEST sites' inputs in any sum a malicious server (controlling delivery, colluding
    with up to `max_colluding` sites) can unmask, when threshold >= secure_threshold(...).

    An honest site masks only if it paired with >= t-1 peers and confirms (signs) a survivor set
    only if >= t-1 of them survived in it; its self-mask is revealed only under that set, whose
    every member is certified by t of its own holders, so no paired survivor's masking key can be
    revealed. Any unmaskable sum holding an honest u therefore holds u and its >= t-1 paired
    survivors, of which at most c collude: >= t - c honest inputs (proof: SPEC.md section 8).
    """
    if not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"threshold must be a positive integer, got {threshold!r}")
    if not isinstance(max_colluding, int) or max_colluding < 0:
        raise ValueError(f"max_colluding must be a non-negative integer, got {max_colluding!r}")
    return max(threshold - max_colluding, 0)


def within_hops(graph: dict[int, frozenset[int]], start: "set[int] | frozenset[int]", hops: int) -> frozenset[int]:
    """Every site at most `hops` edges from a site of `start` (start included)."""
    seen = set(start)
    frontier = set(start)
    for _ in range(hops):
        nxt = set()
        for u in frontier:
            nxt |= graph[u]
        frontier = nxt - seen
        seen |= frontier
    return frozenset(seen)


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class GraphParameters:
    """SecAgg+ degree k and threshold t for n sites, with the failure bounds they were chosen by.

    `c_max`: the colluders any holder set may hold that t was sized for (2t > h + c_max): the hard
    bound in c mode, the hypergeometric bound in gamma / colluders mode (whose tail is part of
    `log2_privacy_failure`), exactly the corrupt count on the complete graph."""

    n: int
    k: int | None
    t: int
    log2_privacy_failure: float
    log2_robustness_failure: float
    c_max: int = 0


def _log2(p: float) -> float:
    return -math.inf if p <= 0 else math.log2(p)


def colluders_per_holder_set(n: int, degree: int | None, colluders: int, *,
                             sigma: float = 40.0) -> tuple[int, float]:
    """(c_max, log2 failure): the colluders any honest site's holder set holds, when `colluders`
    of the round's n sites collude and the graph is drawn independently of who they are.

    Complete graph (degree None or >= n-1: every site holds every share): c_max = min(colluders,
    n-1) exactly (an honest site's holders are it and all n-1 others), failure -inf (none).
    SecAgg+ (Harary graph on a seeded permutation): an honest u's h-1 neighbours are a uniform
    (h-1)-subset of the other n-1 sites, so its corrupt holders are Hypergeometric(n-1,
    colluders, h-1); c_max is the least c with n * P[> c] <= 2^-sigma (union bound over sites).

    The probability is only meaningful because the graph seed is the commit-reveal seed
    (SPEC.md sections 2 and 8, "Graph seed"): uniform to every honest site whatever the server
    and the colluders (a set fixed before the round) did, short of aborting. It is a per round
    attempt failure of the privacy bound t - c_max, so the runtime adds it to delta.
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if isinstance(colluders, bool) or not isinstance(colluders, int) or colluders < 0:
        raise ValueError(f"colluders must be a non-negative integer, got {colluders!r}")
    if not sigma > 0:
        raise ValueError("sigma must be positive")
    return _colluders_per_holder_set(n, effective_degree(n, degree), min(colluders, n - 1), float(sigma))


@lru_cache(maxsize=4096)
def _colluders_per_holder_set(n: int, k: int, corrupt: int, sigma: float) -> tuple[int, float]:
    from scipy.stats import hypergeom

    h = k + 1
    if k >= n - 1 or corrupt == 0:
        return min(corrupt, h - 1), -math.inf
    log2n = math.log2(n)
    c_max = 0
    while True:
        lp = _log2(float(hypergeom.sf(c_max, n - 1, corrupt, h - 1))) + log2n
        if lp <= -sigma or c_max >= h - 1:
            return c_max, lp
        c_max += 1


def secagg_plus_parameters(
    n: int,
    *,
    max_colluding: int | None = None,
    gamma: float | None = None,
    colluders: int | None = None,
    dropout: float = 0.05,
    sigma: float = 40.0,
    eta: float = 20.0,
) -> tuple[int | None, int]:
    """(k, t) for n sites: the least Harary degree k (None = complete graph) such that

    * privacy: 2t > (k+1) + c for every holder set, where c is `max_colluding` (a hard bound on
      colluders, no probability involved), or with a corruption fraction `gamma` (floor(gamma n)
      colluders placed independently of the graph seed) or an explicit corrupt count
      `colluders` (the runtime's gamma mode gives min(floor(gamma N), n): a server that knows its
      colluders can put all of them into a small round) the number of corrupt holders c_u in
      every neighbourhood stays <= c_max except with probability <= 2^-sigma (exact
      hypergeometric tail, union bound over the n neighbourhoods, `colluders_per_holder_set`),
      and t = floor((k+1+c_max)/2)+1;
    * the honest-survivor graph stays connected except with probability <= 2^-sigma: on the
      Harary ring a site removed (dropped with prob `dropout`, or corrupt) disconnects it only
      through k/2 consecutive removed positions (union bound n * p^(k/2), Bell et al. 2020 §3);
    * robustness: every neighbourhood keeps >= t honest survivors except with probability
      <= 2^-eta (exact binomial tail of i.i.d. dropouts, union bound over neighbourhoods).

    Bell et al. (CCS 2020) show k = O(log n) suffices; this computes the concrete k from exact
    tails instead of the asymptotic constant. See SPEC.md section 2 (and its table).
    """
    return _secagg_plus(n, max_colluding, gamma, dropout, sigma, eta, colluders)[:2]


def secagg_plus_parameters_detail(n: int, **kw) -> GraphParameters:
    """As secagg_plus_parameters, with the log2 failure probabilities actually reached and c_max."""
    unknown = set(kw) - {"max_colluding", "gamma", "colluders", "dropout", "sigma", "eta"}
    if unknown:
        raise TypeError(f"unexpected arguments {sorted(unknown)}")
    k, t, lp, lr, c_max = _secagg_plus(n, kw.get("max_colluding"), kw.get("gamma"), kw.get("dropout", 0.05),
                                       kw.get("sigma", 40.0), kw.get("eta", 20.0), kw.get("colluders"))
    return GraphParameters(n, k, t, lp, lr, c_max)


@lru_cache(maxsize=256)
def _secagg_plus(n, max_colluding, gamma, dropout, sigma, eta, colluders=None):
    from scipy.stats import binom

    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    given = [x is not None for x in (max_colluding, gamma, colluders)]
    if sum(given) > 1:
        raise ValueError("give either max_colluding or gamma, not both" if colluders is None
                         else "give only one of max_colluding, gamma and colluders")
    if not any(given):
        max_colluding = 0
    if max_colluding is not None and (not isinstance(max_colluding, int) or not 0 <= max_colluding < n):
        raise ValueError(f"max_colluding must be an integer in [0, n), got {max_colluding!r}")
    if gamma is not None and not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma!r}")
    if colluders is not None and (isinstance(colluders, bool) or not isinstance(colluders, int)
                                  or not 0 <= colluders <= n):
        raise ValueError(f"colluders must be an integer in [0, n], got {colluders!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if sigma <= 0 or eta <= 0:
        raise ValueError("sigma and eta must be positive")
    log2n = math.log2(n)
    probabilistic = max_colluding is None
    if gamma is not None:
        corrupt = math.floor(gamma * n)
    elif colluders is not None:
        corrupt = colluders
    else:
        corrupt = max_colluding
    p_removed = min(1.0, dropout + corrupt / n)

    def evaluate(k):
        h = effective_degree(n, k) + 1
        complete = k is None or effective_degree(n, k) >= n - 1
        # colluders a holder set may hold (hard bound, or hypergeometric tail)
        if not probabilistic:
            c_max, lp_corrupt = min(max_colluding, h - 1), -math.inf
        else:
            c_max, lp_corrupt = colluders_per_holder_set(n, k, corrupt, sigma=sigma)
        t = secure_threshold(h, max_colluding=c_max)  # <= h: c_max <= h - 1 on both paths
        # connectivity of honest survivors on the Harary ring (k even: runs of k/2 removed)
        if complete:
            lp_conn = -math.inf
        else:
            run = effective_degree(n, k) // 2
            lp_conn = log2n + run * _log2(p_removed) if p_removed > 0 else -math.inf
        lp = max(lp_corrupt, lp_conn)
        # robustness: honest survivors among the h holders >= t; worst case c_max colluders
        honest = h - c_max
        lr = _log2(float(binom.cdf(t - 1, honest, 1.0 - dropout))) + (0 if complete else log2n)
        return t, lp, lr, c_max

    for k in list(range(2, n - 1)) + [None]:
        t, lp, lr, c_max = evaluate(k)
        if k is None or (lp <= -sigma and lr <= -eta):
            if k is not None and effective_degree(n, k) >= n - 1:
                k = None
            return k, t, lp, lr, c_max
    raise AssertionError("unreachable")  # pragma: no cover
