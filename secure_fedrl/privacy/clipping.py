"""L2 clipping of a whole update: the sensitivity bound every client-level mechanism relies on.

Both the central Gaussian mechanism (`central.py`) and the distributed discrete Gaussian
(`ddg.py`) calibrate their noise to the clip norm C, so clipping must be exact and must never let
a NaN/Inf through (a NaN norm compares False against C and would silently skip the clip).
"""

from __future__ import annotations

import math

import numpy as np

from secure_fedrl.errors import PrivacyError, UpdateRejected

__all__ = ["clip_l2", "check_clip_norm"]


def check_clip_norm(max_norm: float) -> float:
    """Return `max_norm` as a float, or raise PrivacyError if it is not a finite positive number."""
    try:
        c = float(max_norm)
    except (TypeError, ValueError):
        raise PrivacyError(f"clip norm C must be a positive number, got {max_norm!r}") from None
    if not math.isfinite(c) or c <= 0.0:
        raise PrivacyError(f"clip norm C must be finite and > 0, got {max_norm!r}")
    return c


def clip_l2(vec: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """Scale `vec` so that its L2 norm is at most `max_norm`.

    Returns `(clipped, original_norm)`; `clipped` is a new float64 array of the input's shape (the
    caller's array is never mutated). The norm is computed in float64 and the scale factor is
    shrunk by one ulp when needed, so `||clipped||_2 <= max_norm` holds for the float64 result.
    Non-finite input raises UpdateRejected: it cannot be clipped to a meaningful vector.
    """
    c = check_clip_norm(max_norm)
    x = np.array(vec, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(x)):
        raise UpdateRejected("update contains NaN or Inf and cannot be clipped")
    norm = float(np.linalg.norm(x.ravel()))
    if norm > c:
        x *= c / norm
        # Guard against the product landing a hair above C after rounding.
        while float(np.linalg.norm(x.ravel())) > c:
            x *= np.nextafter(1.0, 0.0)
    return x, norm
