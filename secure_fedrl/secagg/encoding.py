"""Fixed-point encoding of float vectors into the ring Z_{2^b} used by secure aggregation.

Only the ring primitives shared with the privacy mechanisms live here for now.
"""

from __future__ import annotations

import numpy as np


def to_ring(values: np.ndarray, bits: int = 32) -> np.ndarray:
    """Reduce signed integers mod 2^bits, returned as uint32 (two's-complement wrap)."""
    _check_bits(bits)
    wrapped = np.asarray(values, dtype=np.int64).astype(np.uint64) & np.uint64((1 << bits) - 1)
    return wrapped.astype(np.uint32)


def centered_lift(ring_values: np.ndarray, bits: int = 32) -> np.ndarray:
    """Map ring elements to the signed representatives in [-2^(bits-1), 2^(bits-1))."""
    _check_bits(bits)
    v = np.asarray(ring_values, dtype=np.int64) & ((1 << bits) - 1)
    half = 1 << (bits - 1)
    return np.where(v >= half, v - (1 << bits), v)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer in [1, 32], got {bits!r}")
