"""Differential privacy: accountants, calibration, budget, adaptive clipping.

The two stable entry points are ``epsilon`` (what a planned run spends) and
``noise_multiplier_for`` (the least noise that meets a target). Both account a Poisson-subsampled
Gaussian composed over ``steps`` with Opacus's RDP (orders extended to 512) or PRV analysis.
"""

from __future__ import annotations

import math
from typing import Callable

from secure_fedrl.errors import PrivacyError
from secure_fedrl.privacy.accountants import (
    Accountant,
    GaussianStep,
    PRVAccountant,
    RDPAccountant,
    RDPCurveStep,
    ZCDPStep,
    check_delta,
    check_noise_multiplier,
    check_sample_rate,
    check_steps,
    make_accountant,
)

__all__ = [
    "Accountant",
    "GaussianStep",
    "PRVAccountant",
    "RDPAccountant",
    "RDPCurveStep",
    "ZCDPStep",
    "calibrate_noise",
    "epsilon",
    "make_accountant",
    "noise_multiplier_for",
]

#: Relative tolerance of ``noise_multiplier_for`` on sigma: the returned sigma s meets the
#: target and s * (1 - SIGMA_RTOL) does not (up to accountant monotonicity).
SIGMA_RTOL = 1e-3


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: str = "rdp") -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps at ``delta`` (an upper bound).

    ``noise_multiplier`` <= 0 is refused (sigma = 0 means no privacy: epsilon would be inf);
    ``steps`` = 0 spends nothing and gives 0.
    """
    sigma = check_noise_multiplier(noise_multiplier)
    q = check_sample_rate(sample_rate)
    n = check_steps("steps", steps)
    d = check_delta(delta)
    acct = make_accountant(accountant)
    if n:
        acct.step(noise_multiplier=sigma, sample_rate=q, num_steps=n)
    return acct.get_epsilon(d)


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                         accountant: str = "rdp", *, max_sigma: float = 1000.0,
                         min_sigma: float = 1e-2, rtol: float = SIGMA_RTOL) -> float:
    """Smallest noise multiplier whose epsilon over ``steps`` is <= ``target_epsilon``.

    Brackets by doubling/halving from sigma = 1, then bisects until the bracket is within
    ``rtol`` (relative). The upper end is returned, so the result always meets the target (it is
    at most ``rtol`` more noise than needed). If even ``min_sigma`` meets the target, ``min_sigma``
    is returned. Raises ``PrivacyError`` when ``max_sigma`` cannot meet the target.
    """
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)):
        raise PrivacyError(f"target_epsilon must be a real number, got {target_epsilon!r}")
    target = float(target_epsilon)
    if math.isnan(target) or target <= 0.0 or math.isinf(target):
        raise PrivacyError(f"target_epsilon must be finite and > 0, got {target_epsilon}")
    d = check_delta(delta)
    q = check_sample_rate(sample_rate)
    n = check_steps("steps", steps, minimum=1)
    hi_cap = check_noise_multiplier(max_sigma)
    lo_cap = check_noise_multiplier(min_sigma)
    if lo_cap > hi_cap:
        raise PrivacyError(f"min_sigma ({lo_cap}) must be <= max_sigma ({hi_cap})")
    if not 0.0 < rtol < 1.0:
        raise PrivacyError(f"rtol must be in (0, 1), got {rtol}")
    make_accountant(accountant)  # fail fast on an unknown name

    def eps(sigma: float) -> float:
        return epsilon(sigma, q, n, d, accountant)

    return calibrate_noise(eps, target, max_sigma=hi_cap, min_sigma=lo_cap, rtol=rtol,
                           context=f"for {n} steps at sample_rate={q:g}, delta={d:g}")


def calibrate_noise(eps: Callable[[float], float], target_epsilon: float, *, max_sigma: float = 1000.0,
                    min_sigma: float = 1e-2, rtol: float = SIGMA_RTOL, context: str = "") -> float:
    """Smallest sigma in [min_sigma, max_sigma] with ``eps(sigma) <= target_epsilon``.

    ``eps`` must be non-increasing in sigma (more noise, less privacy loss): any mechanism whose
    whole-run epsilon the caller can compute, e.g. the distributed discrete Gaussian's. Brackets by
    doubling/halving from sigma = 1, then bisects to ``rtol`` and returns the upper end, so the
    result always meets the target. PrivacyError when ``max_sigma`` cannot meet it.
    """
    target, hi_cap, lo_cap = float(target_epsilon), float(max_sigma), float(min_sigma)
    # Bracket: eps(lo) > target >= eps(hi).
    hi = min(max(1.0, lo_cap), hi_cap)
    if eps(hi) <= target:
        lo = hi
        while True:
            if lo <= lo_cap:
                return lo_cap
            lo = max(lo / 2.0, lo_cap)
            if eps(lo) > target:
                break
            hi = lo
    else:
        lo = hi
        while True:
            if hi >= hi_cap:
                raise PrivacyError(
                    f"target_epsilon {target:g} is unreachable at max_sigma={hi_cap:g} "
                    f"(epsilon {eps(hi_cap):.4g} {context})".replace(" )", ")")
                )
            hi = min(hi * 2.0, hi_cap)
            if eps(hi) <= target:
                break
            lo = hi
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
