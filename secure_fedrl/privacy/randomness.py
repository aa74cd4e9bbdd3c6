"""The draws the privacy analysis treats as random, taken from the OS CSPRNG (`secrets`).

Amplification by sampling is a theorem about a sample nobody can predict: a sample derived from
the federation seed is known to anyone holding the config, and then no discount is valid. So
client sampling and DP-SGD's episode sampling come from here, never from a seeded generator
(`privacy.reproducible_noise` is the experiments-only escape, handled by the callers).

Bernoulli(q) is drawn as `randbelow(2^53) < floor(q * 2^53)`: the inclusion probability is at
most q (never above it), and every bound we charge is non-decreasing in q. Pure: no I/O beyond
the CSPRNG itself.
"""

from __future__ import annotations

import math
import secrets
from typing import Sequence

import numpy as np

from secure_fedrl.errors import PrivacyError

__all__ = ["secret_bernoulli", "secret_bernoulli_mask", "secret_poisson_sample", "secret_sample",
           "secret_seed"]

_BITS = 53
_ONE = 1 << _BITS


def _threshold(q: float) -> int:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or math.isnan(q) or not 0.0 <= q <= 1.0:
        raise PrivacyError(f"sampling probability must be in [0, 1], got {q!r}")
    return math.floor(float(q) * _ONE)


def secret_bernoulli(q: float) -> bool:
    """One Bernoulli draw with P[True] = floor(q 2^53) / 2^53 <= q, from `secrets`."""
    return secrets.randbelow(_ONE) < _threshold(q)


def secret_bernoulli_mask(n: int, q: float) -> np.ndarray:
    """n independent secret Bernoulli(q) draws as a bool array (DP-SGD episode sampling)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise PrivacyError(f"mask length must be a non-negative integer, got {n!r}")
    t = _threshold(q)
    return np.fromiter((secrets.randbelow(_ONE) < t for _ in range(int(n))), dtype=bool, count=int(n))


def secret_poisson_sample(names: Sequence[str], q: float) -> list[str]:
    """Poisson sampling: each name independently with probability q (order kept)."""
    t = _threshold(q)
    return [name for name in names if secrets.randbelow(_ONE) < t]


def secret_sample(names: Sequence[str], count: int) -> list[str]:
    """`count` distinct names uniformly at random (fixed-size sampling), in the input order."""
    if count < 0 or count > len(names):
        raise PrivacyError(f"cannot sample {count} of {len(names)}")
    chosen = set(secrets.SystemRandom().sample(range(len(names)), count))
    return [name for i, name in enumerate(names) if i in chosen]


def secret_seed(bits: int = 63) -> int:
    """A fresh seed for a PRNG stream whose outputs never leave the site (noise, rounding)."""
    return secrets.randbits(bits)
