"""Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1 (a Mersenne prime).

p > 2^256, so a 32-byte secret (read big-endian) is one field element with no encoding tricks;
shares are field elements serialised as 66-byte big-endian integers. Reconstruction is Lagrange
interpolation at 0 with the coefficients for one set of x-coordinates computed once (cached) and
reused for every secret shared among the same holders: this is what makes unmasking cheap.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from secure_fedrl.errors import BelowThresholdError, ProtocolError

from .primitives import RandBytes

PRIME = (1 << 521) - 1
SHARE_BYTES = 66
SECRET_BYTES = 32
_MASK521 = (1 << 521) - 1


def random_field_element(randbytes: RandBytes = os.urandom) -> int:
    """Uniform element of GF(p): 66 random bytes, big-endian, low 521 bits, rejected if >= p."""
    while True:
        v = int.from_bytes(randbytes(SHARE_BYTES), "big") & _MASK521
        if v < PRIME:
            return v


def split(
    secret: bytes,
    *,
    threshold: int,
    xs: Sequence[int],
    randbytes: RandBytes = os.urandom,
) -> dict[int, int]:
    """Share `secret` so any `threshold` of the holders `xs` recover it; returns {x: share}.

    Coefficients a_1..a_{t-1} are drawn in order from `randbytes`; f(x) = secret + sum a_i x^i.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    xs = list(xs)
    _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}] (number of holders)")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [random_field_element(randbytes) for _ in range(threshold - 1)]
    return {x: _horner(coeffs, x) for x in xs}


def split_with_coefficients(secret: bytes, coefficients: Sequence[int], xs: Sequence[int]) -> dict[int, int]:
    """Deterministic sharing with given a_1..a_{t-1} (conformance vectors)."""
    coeffs = [int.from_bytes(secret, "big")] + [int(c) % PRIME for c in coefficients]
    return {x: _horner(coeffs, x) for x in xs}


def _horner(coeffs: list[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % PRIME
    return acc


def _check_xs(xs: Iterable[int]) -> None:
    seen = set()
    for x in xs:
        if not isinstance(x, int) or not 0 < x < PRIME:
            raise ValueError(f"share x-coordinate must be an integer in [1, p), got {x!r}")
        if x in seen:
            raise ValueError(f"duplicate share x-coordinate {x}")
        seen.add(x)


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum l_i f(x_i) for polynomials of degree < len(xs)."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def reconstruct(shares: Mapping[int, int], *, threshold: int, what: str = "secret") -> bytes:
    """Recover a 32-byte secret from at least `threshold` shares {x: y}.

    Uses the `threshold` smallest x (deterministic, so one coefficient set serves many secrets).
    Raises BelowThresholdError with fewer shares, ProtocolError if the result is not a 32-byte value.
    """
    if len(shares) < threshold:
        raise BelowThresholdError(f"{what}: {len(shares)} shares, threshold is {threshold}")
    xs = tuple(sorted(shares)[:threshold])
    _check_xs(xs)
    lam = lagrange_at_zero(xs)
    value = sum(l * shares[x] for l, x in zip(lam, xs)) % PRIME
    if value >> (8 * SECRET_BYTES):
        raise ProtocolError(f"{what}: reconstructed value is not a 32-byte secret (bad shares)")
    return value.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(y: int) -> bytes:
    if not 0 <= y < PRIME:
        raise ValueError("share value out of field range")
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ProtocolError(f"share must be {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ProtocolError("share value is not a field element (>= p)")
    return y
