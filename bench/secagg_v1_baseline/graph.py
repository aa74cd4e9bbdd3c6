"""Neighbour graphs: the complete graph (SecAgg) and a seeded Harary graph (SecAgg+).

SecAgg+ (Bell et al. 2020) replaces the complete graph by a sparse k-regular graph with
k = O(log n), relabelled by a random permutation so that the server cannot pick who neighbours
whom. Every party derives the same graph from the round's graph seed; no graph is sent.
"""

from __future__ import annotations

import hashlib
import math
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


def secure_threshold(n: int, degree: int | None) -> int:
    """Smallest threshold with t > half of every holder set, which the malicious-server
    consistency argument needs (SPEC.md section 8)."""
    return holders_per_site(n, degree) // 2 + 1
