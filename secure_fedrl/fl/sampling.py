"""Per-round client sampling (partial participation), seeded through a numpy Generator.

Two schemes, because they feed different privacy analyses:
- fixed size (count, or fraction → max(1, ⌊fraction·n⌋) as in McMahan et al. 2017): sampling
  without replacement, the usual FedAvg setting;
- Poisson (`poisson=True`): each site joins independently with probability `fraction`, so the
  round size is random (possibly zero). Client-level DP amplification by subsampling (the
  accountants' sample rate q) assumes exactly this scheme.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from secure_fedrl.errors import ConfigError

__all__ = ["sample_clients", "fixed_sample_size"]


def fixed_sample_size(num_sites: int, fraction: float) -> int:
    """max(1, ⌊fraction·n⌋), robust to float noise (0.29·100 is 28.999…, meant as 29)."""
    return max(1, int(math.floor(fraction * num_sites + 1e-9)))


def sample_clients(
    site_ids: Sequence[str],
    *,
    rng: np.random.Generator,
    count: int | None = None,
    fraction: float | None = None,
    poisson: bool = False,
) -> list[str]:
    """Pick this round's sites; exactly one of `count` / `fraction`. Result keeps input order."""
    if isinstance(site_ids, (str, bytes)):
        raise ConfigError("site_ids must be a sequence of site ids, not a single string")
    ids = list(site_ids)
    if not ids:
        raise ConfigError("site_ids is empty: there is no site to sample")
    for s in ids:
        if not isinstance(s, str) or not s:
            raise ConfigError(f"site ids must be non-empty strings, got {s!r}")
    if len(set(ids)) != len(ids):
        dup = sorted({s for s in ids if ids.count(s) > 1})
        raise ConfigError(f"duplicate site ids: {', '.join(dup)}")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if (count is None) == (fraction is None):
        raise ConfigError("give exactly one of count or fraction")
    if not isinstance(poisson, bool):
        raise ConfigError(f"poisson must be true or false, got {poisson!r}")
    n = len(ids)

    if count is not None:
        if poisson:
            raise ConfigError(
                "poisson sampling takes a fraction (inclusion probability), not a count"
            )
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise ConfigError(f"count must be an integer, got {count!r}")
        if not 1 <= count <= n:
            raise ConfigError(f"count must be in [1, {n}] (number of sites), got {count}")
        m = int(count)
    else:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
            raise ConfigError(f"fraction must be a number, got {fraction!r}")
        q = float(fraction)
        if not (math.isfinite(q) and 0.0 < q <= 1.0):
            raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
        if poisson:
            keep = rng.random(n) < q
            return [s for s, k in zip(ids, keep) if k]
        m = fixed_sample_size(n, q)

    chosen = np.sort(rng.choice(n, size=m, replace=False))
    return [ids[i] for i in chosen]
