"""Checking and averaging site updates (flat float32 vectors, Δ = θ_local − θ_global).

Pure math: no I/O, no torch. The round loop calls `check_update` on every vector a site hands
over (a bad one is dropped and the round goes on), then averages what survived.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from secure_fedrl.errors import SecureFedRLError, UpdateRejected

__all__ = ["VectorError", "WeightedSum", "as_vector", "check_update", "weighted_mean"]


class VectorError(SecureFedRLError, ValueError):
    """A vector passed to the fl math (not a site's update) has the wrong dtype, shape or length.

    This is a wiring bug of the caller, unlike `UpdateRejected`, which blames a site.
    """


def check_update(
    vec: object, *, dim: int, site: str, max_norm: float | None = None
) -> np.ndarray:
    """Return `vec` if it is a usable update of `dim` float32 values, else raise `UpdateRejected`.

    Strict on dtype on purpose: a float64 or int vector means the site runs different code than
    ours, and silently casting would hide that. `max_norm` (e.g. the DP clipping bound C, with
    some float slack) rejects updates whose L2 norm exceeds it. The message is one line naming
    the site.
    """
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
        raise VectorError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(vec, np.ndarray):
        raise UpdateRejected(f"site {site!r}: update is a {type(vec).__name__}, not a numpy array")
    if vec.dtype != np.float32:
        raise UpdateRejected(f"site {site!r}: update dtype is {vec.dtype}, expected float32")
    if vec.ndim != 1:
        raise UpdateRejected(f"site {site!r}: update has shape {vec.shape}, expected ({dim},)")
    if vec.shape[0] != dim:
        raise UpdateRejected(f"site {site!r}: update has length {vec.shape[0]}, expected {dim}")
    if not np.isfinite(vec).all():
        n_nan = int(np.isnan(vec).sum())
        n_inf = int(np.isinf(vec).sum())
        raise UpdateRejected(f"site {site!r}: update has {n_nan} NaN and {n_inf} Inf values")
    if max_norm is not None:
        bound = float(max_norm)
        if not (math.isfinite(bound) and bound > 0):
            raise VectorError(f"max_norm must be finite and > 0, got {max_norm!r}")
        norm = float(np.linalg.norm(vec.astype(np.float64)))
        if norm > bound:
            raise UpdateRejected(
                f"site {site!r}: update L2 norm {norm:.6g} exceeds the bound {bound:.6g}"
            )
    return vec


def as_vector(vec: object, *, what: str, dim: int | None = None) -> np.ndarray:
    """Validate an internal float32 1-D vector (optionally of length `dim`); raise `VectorError`."""
    if not isinstance(vec, np.ndarray) or vec.dtype != np.float32 or vec.ndim != 1:
        desc = f"{vec.dtype}{vec.shape}" if isinstance(vec, np.ndarray) else type(vec).__name__
        raise VectorError(f"{what} must be a 1-D float32 numpy array, got {desc}")
    if dim is not None and vec.shape[0] != dim:
        raise VectorError(f"{what} has length {vec.shape[0]}, expected {dim}")
    return vec


def weighted_mean(
    updates: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    """Σ w_i Δ_i / Σ w_i as float32; `weights=None` means uniform.

    Accumulates in place into one output vector with one scratch vector (2 × dim floats of extra
    memory, whatever the number of sites), which bench/aggregation.py measures to be faster than
    stacking the updates into one (n × dim) matrix and calling BLAS.
    """
    n = len(updates)
    if n == 0:
        raise VectorError("weighted_mean needs at least one update")
    if weights is None:
        w = [1.0] * n
    else:
        if len(weights) != n:
            raise VectorError(f"got {n} updates but {len(weights)} weights")
        w = [float(x) for x in weights]
        for i, x in enumerate(w):
            if not math.isfinite(x) or x < 0:
                raise VectorError(f"weight {i} must be finite and >= 0, got {weights[i]!r}")
    total = math.fsum(w)
    if total <= 0:
        raise VectorError("weights sum to zero")
    first = as_vector(updates[0], what="update 0")
    dim = first.shape[0]
    out = np.zeros(dim, dtype=np.float32)
    scratch = np.empty(dim, dtype=np.float32)
    for i, (u, wi) in enumerate(zip(updates, w)):
        as_vector(u, what=f"update {i}", dim=dim)
        if wi == 0.0:
            continue
        np.multiply(u, np.float32(wi / total), out=scratch)
        np.add(out, scratch, out=out)
    return out


class WeightedSum:
    """Streaming Σ w_i·Δ_i for updates that arrive one by one (in-the-clear mode).

    Holds one float32 vector (plus one scratch vector) whatever the number of sites, so the
    server need not keep every update until the round closes; `mean()` divides by Σ w_i.
    """

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise VectorError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self._sum = np.zeros(self.dim, dtype=np.float32)
        self._scratch = np.empty(self.dim, dtype=np.float32)
        self.count = 0
        self.total_weight = 0.0

    def add(self, update: np.ndarray, weight: float = 1.0) -> None:
        """Add w·Δ (Δ should have passed `check_update` already)."""
        u = as_vector(update, what="update", dim=self.dim)
        w = float(weight)
        if not math.isfinite(w) or w < 0:
            raise VectorError(f"weight must be finite and >= 0, got {weight!r}")
        np.multiply(u, np.float32(w), out=self._scratch)
        np.add(self._sum, self._scratch, out=self._sum)
        self.count += 1
        self.total_weight += w

    def mean(self) -> np.ndarray:
        """Σ w_i·Δ_i / Σ w_i as a new float32 vector."""
        if self.total_weight <= 0:
            raise VectorError("no update with positive weight was added")
        return self._sum / np.float32(self.total_weight)

