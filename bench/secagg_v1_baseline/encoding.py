"""Fixed-point encoding of float vectors into the ring Z_{2^b} used by secure aggregation.

`to_ring` / `centered_lift` are the ring primitives shared with the privacy mechanisms; `encode` /
`decode_sum` turn float updates into ring elements and a ring sum back into floats, with the
checks that make a silent wrap-around impossible (n * clip * scale must fit the ring).
"""

from __future__ import annotations

import numpy as np

from secure_fedrl.errors import ConfigError, ProtocolError, UpdateRejected


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


# ----------------------------------------------------------------------------- float codec


def ring_capacity_check(*, num_sites: int, clip: float, scale: float, bits: int) -> None:
    """Raise ConfigError unless the sum of `num_sites` encoded vectors cannot wrap around.

    Each encoded coordinate lies in [-(clip*scale + 1), clip*scale + 1] (clip bounds every
    coordinate, randomized rounding adds < 1), so the sum fits the centred range
    [-2^(bits-1), 2^(bits-1)) iff num_sites * (clip*scale + 1) < 2^(bits-1).
    """
    _check_bits(bits)
    if not isinstance(num_sites, (int, np.integer)) or num_sites < 1:
        raise ConfigError(f"num_sites must be a positive integer, got {num_sites!r}")
    if not (np.isfinite(clip) and clip > 0):
        raise ConfigError(f"clip must be a positive finite float, got {clip!r}")
    if not (np.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale must be a positive finite float, got {scale!r}")
    worst = num_sites * (np.floor(clip * scale) + 1)
    if worst >= 2 ** (bits - 1):
        raise ConfigError(
            f"{num_sites} sites x clip {clip} x scale {scale} needs {worst:.3g} per coordinate, "
            f"which does not fit in Z_2^{bits} (limit {2 ** (bits - 1)}): lower scale or raise bits"
        )


def clip_l2(x: np.ndarray, clip: float) -> np.ndarray:
    """Scale `x` down to L2 norm `clip` if it is longer (the client-level DP clip)."""
    norm = float(np.linalg.norm(x))
    return x * (clip / norm) if norm > clip else x


def encode(
    x: np.ndarray,
    *,
    clip: float,
    scale: float,
    bits: int = 32,
    rng: np.random.Generator,
    num_sites: int | None = None,
) -> np.ndarray:
    """Float vector -> uint32 ring elements: L2-clip to `clip`, scale, unbiased randomized rounding.

    Randomized rounding (floor + Bernoulli(fraction)) keeps E[decode(encode(x))] = x, so the
    quantisation error of a sum of many sites averages out instead of biasing the update.
    With `num_sites`, also checks that the sum of that many encodings cannot wrap.
    """
    if num_sites is not None:
        ring_capacity_check(num_sites=num_sites, clip=clip, scale=scale, bits=bits)
    else:
        ring_capacity_check(num_sites=1, clip=clip, scale=scale, bits=bits)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError("rng must be a numpy.random.Generator")
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise UpdateRejected(f"encode expects a 1-D vector, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UpdateRejected("update contains NaN or Inf")
    return encode_with_uniforms(a, rng.random(a.size), clip=clip, scale=scale, bits=bits)


def encode_with_uniforms(
    x: np.ndarray, uniforms: np.ndarray, *, clip: float, scale: float, bits: int = 32
) -> np.ndarray:
    """`encode` with the rounding draws given explicitly (u in [0,1): round up iff u < fraction).

    Exposed so conformance vectors can pin the rounding without a particular PRNG.
    """
    a = clip_l2(np.asarray(x, dtype=np.float64), clip)
    a = np.clip(a, -clip, clip) * scale
    low = np.floor(a)
    q = low + (np.asarray(uniforms, dtype=np.float64) < (a - low))
    return to_ring(q.astype(np.int64), bits)


def decode_sum(
    u: np.ndarray,
    *,
    scale: float,
    bits: int = 32,
    num_sites: int,
    clip: float,
    extra_norm: float = 0.0,
) -> np.ndarray:
    """Ring sum of `num_sites` encodings -> float64 sum, refusing impossible results.

    The sum of n honest encodings has L2 norm at most n * (clip + sqrt(d)/scale) (clip plus the
    rounding of each coordinate) and each coordinate at most n * (clip + 1/scale) in absolute
    value. A larger decoded sum means a wrapped ring or a site that cheated its bound: it is
    refused with ProtocolError rather than released. `extra_norm` widens the L2 bound for noise
    added on purpose (e.g. distributed DP noise shares).
    """
    ring_capacity_check(num_sites=num_sites, clip=clip, scale=scale, bits=bits)
    if not (np.isfinite(extra_norm) and extra_norm >= 0):
        raise ConfigError(f"extra_norm must be a non-negative float, got {extra_norm!r}")
    arr = np.asarray(u)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ProtocolError(f"decode_sum expects a 1-D integer ring vector, got {arr.dtype} {arr.shape}")
    total = centered_lift(arr, bits).astype(np.float64) / scale
    d = total.size
    l2_bound = num_sites * (clip + np.sqrt(d) / scale) + extra_norm
    norm = float(np.linalg.norm(total))
    if norm > l2_bound * (1 + 1e-12):
        raise ProtocolError(
            f"decoded sum has L2 norm {norm:.6g} > {l2_bound:.6g}, the most {num_sites} clipped sites "
            f"can produce: refusing to release it"
        )
    return total
