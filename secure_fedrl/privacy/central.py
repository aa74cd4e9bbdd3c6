"""Central DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private
Recurrent Language Models"): the mechanism for federations WITHOUT secure aggregation.

Each site's whole update is clipped to L2 norm C (client-level unit); the trusted server sums the
clipped updates and adds N(0, (z C)^2) to every coordinate of the SUM, then the strategy divides
by its (fixed) denominator. The server sees individual updates here -- use `ddg.py` when it must
not.

Accounting (what the ledger and the accountant are given each round, as an
`accountants.GaussianStep(z, q)`):
* mechanism: Gaussian with noise multiplier z = `noise_multiplier`, i.e. std z*C relative to the
  L2 sensitivity C of the sum under add/remove of one site (a site's clipped update has norm <= C);
* sampling rate: q = the probability with which each site is sampled into the round, with
  independent (Poisson) sampling -- that is what the subsampled-Gaussian RDP / PRV accountants
  assume. Fixed-size sampling or "whoever shows up" is not Poisson and needs other accounting;
* one accountant step per round. Dropped sites only remove signal, never noise (the server adds
  all of it), so survivors do not change the central mechanism's privacy.

Noise randomness: tests pass a seeded numpy Generator; production passes `rng=None` and gets a
Generator seeded with 128 bits from `secrets` (a float Gaussian from a seeded PRNG is the usual
DP-library compromise; its floating-point artefacts are documented by Mironov 2012 and are out of
scope here).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from secure_fedrl.errors import PrivacyError, UpdateRejected
from secure_fedrl.privacy.accountants import check_noise_multiplier
from secure_fedrl.privacy.clipping import check_clip_norm, clip_l2

__all__ = ["add_central_noise", "central_dp_sum", "clip_and_sum"]


def _generator(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(secrets.randbits(128))
    if not isinstance(rng, np.random.Generator):
        raise PrivacyError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def clip_and_sum(updates: Sequence[np.ndarray], *, clip_norm: float) -> tuple[np.ndarray, int]:
    """Clip each flat update to L2 <= C and sum them. Returns (sum, number of updates clipped)."""
    c = check_clip_norm(clip_norm)
    if len(updates) == 0:
        raise UpdateRejected("no updates to aggregate")
    first = np.asarray(updates[0])
    if first.ndim != 1:
        raise UpdateRejected(f"updates must be flat vectors, got shape {first.shape}")
    total = np.zeros(first.shape[0], dtype=np.float64)
    n_clipped = 0
    for i, u in enumerate(updates):
        arr = np.asarray(u)
        if arr.shape != first.shape:
            raise UpdateRejected(f"update {i} has shape {arr.shape}, expected {first.shape}")
        clipped, norm = clip_l2(arr, c)
        n_clipped += norm > c
        total += clipped
    return total, int(n_clipped)


def add_central_noise(
    clipped_sum: np.ndarray,
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Return `clipped_sum + N(0, (z C)^2 I)` as a new float64 array (the input is untouched)."""
    c = check_clip_norm(clip_norm)
    z = check_noise_multiplier(noise_multiplier)
    s = np.asarray(clipped_sum, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise UpdateRejected("clipped sum contains NaN or Inf")
    return s + _generator(rng).normal(0.0, z * c, size=s.shape)


def central_dp_sum(
    updates: Sequence[np.ndarray],
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Central DP-FedAvg aggregation: clip every update to C, sum, add N(0, (z C)^2) once."""
    total, _ = clip_and_sum(updates, clip_norm=clip_norm)
    return add_central_noise(total, clip_norm=clip_norm, noise_multiplier=noise_multiplier, rng=rng)
