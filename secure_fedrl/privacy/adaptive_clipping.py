"""Adaptive clipping by private quantile tracking (Andrew, Thakkar, McMahan, Ramaswamy 2021).

Why: a fixed clip norm C is either too small (bias) or too large (noise); the paper tracks the
gamma-quantile of the clients' update norms privately instead. Each round, every participating
client reports b_i = 1[||Delta_i|| <= C]; the server releases the noised fraction

    b~ = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2     (m: expected clients per round)

and updates geometrically, C <- C * exp(-eta_C * (b~ - gamma)).

Privacy: the count query (sensitivity 1/2: centred as b_i - 1/2) and the update sum
(sensitivity C, noise z_Delta * C) are one Gaussian mechanism in disguise. The paper's choice

    z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)

makes their composition exactly as private as a single Gaussian with multiplier z, so the
accountant is stepped with the *total* z (``accounting_noise_multiplier``), while the update is
noised with the larger z_Delta. Requires 2 sigma_b > z. Pure and seeded: no I/O, the noise comes
from a caller-supplied ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from secure_fedrl.errors import ConfigError, PrivacyError

__all__ = [
    "AdaptiveClippingConfig",
    "QuantileClipper",
    "next_clip",
    "noised_fraction",
    "update_noise_multiplier",
]


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise PrivacyError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0.0 or (v == 0.0 and not allow_zero):
        raise PrivacyError(f"{name} must be finite and {'>=' if allow_zero else '>'} 0, got {value}")
    return v


def update_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update's noise multiplier so that the update
    sum plus the noised clipped count together cost exactly a Gaussian with multiplier z."""
    z = _positive("noise_multiplier", noise_multiplier)
    sigma_b = _positive("count_noise_std", count_noise_std)
    inv = z ** -2 - (2.0 * sigma_b) ** -2
    if inv <= 0.0:
        raise PrivacyError(
            f"count_noise_std must exceed noise_multiplier / 2 = {z / 2:g} "
            f"(got {sigma_b:g}): otherwise the count alone spends the whole budget"
        )
    return inv ** -0.5


def noised_fraction(norms: Sequence[float] | np.ndarray, clip: float, *, expected_clients: float,
                    count_noise_std: float, rng: np.random.Generator) -> float:
    """b~: fraction of updates with norm <= clip, with N(0, count_noise_std^2) on the count.

    The count is of centred bits b_i - 1/2 (as Andrew et al. and TF-Privacy do): adding or
    removing one client moves it by 1/2, the sensitivity `update_noise_multiplier`'s split of the
    budget assumes. b~ = (sum_i (b_i - 1/2) + N) / m + 1/2.
    """
    c = _positive("clip", clip)
    m = _positive("expected_clients", expected_clients)
    sigma_b = _positive("count_noise_std", count_noise_std, allow_zero=True)
    if not isinstance(rng, np.random.Generator):
        raise PrivacyError("rng must be a numpy.random.Generator")
    arr = np.asarray(norms, dtype=np.float64)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise PrivacyError("norms must be a 1-D array of finite, non-negative numbers")
    centred = float(np.count_nonzero(arr <= c)) - 0.5 * arr.size
    return (centred + float(rng.normal(0.0, sigma_b))) / m + 0.5


def next_clip(clip: float, fraction: float, *, target_quantile: float,
              learning_rate: float) -> float:
    """Geometric update C * exp(-eta_C (b~ - gamma)): multiplicative, so C stays positive and the
    step is scale-free (the paper's choice over the linear update)."""
    c = _positive("clip", clip)
    if not 0.0 < target_quantile < 1.0:
        raise PrivacyError(f"target_quantile must be in (0, 1), got {target_quantile}")
    eta = _positive("learning_rate", learning_rate)
    if isinstance(fraction, bool) or not math.isfinite(float(fraction)):
        raise PrivacyError(f"fraction must be finite, got {fraction!r}")
    return c * math.exp(-eta * (float(fraction) - target_quantile))


@dataclass(frozen=True)
class AdaptiveClippingConfig:
    """Hyperparameters of quantile tracking (defaults from the paper's experiments)."""

    initial_clip: float = 0.1
    """C_0; the geometric update reaches the quantile in O(log(C*/C_0)/eta) rounds."""
    target_quantile: float = 0.5
    """gamma: fraction of updates that should be left unclipped."""
    learning_rate: float = 0.2
    """eta_C of the geometric update."""
    count_noise_std: float | None = None
    """sigma_b on the clipped count; None -> expected_clients / 20 (the paper's rule)."""

    def __post_init__(self) -> None:
        _positive("initial_clip", self.initial_clip)
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        _positive("learning_rate", self.learning_rate)
        if self.count_noise_std is not None:
            _positive("count_noise_std", self.count_noise_std)


class QuantileClipper:
    """Stateful tracker: holds C and returns what one round must use and account.

    ``noise_multiplier`` is the total z the accountant is stepped with (``accounting_noise_
    multiplier``); ``update_noise_multiplier`` (z_Delta) is what the update sum is noised with.
    """

    def __init__(self, config: AdaptiveClippingConfig, *, noise_multiplier: float,
                 expected_clients: float) -> None:
        self.config = config
        self.expected_clients = _positive("expected_clients", expected_clients)
        self.count_noise_std = (
            config.count_noise_std if config.count_noise_std is not None
            else self.expected_clients / 20.0
        )
        self.accounting_noise_multiplier = _positive("noise_multiplier", noise_multiplier)
        self.update_noise_multiplier = update_noise_multiplier(
            self.accounting_noise_multiplier, self.count_noise_std)
        self.clip = float(config.initial_clip)
        self.rounds = 0

    def update(self, norms: Sequence[float] | np.ndarray, *, rng: np.random.Generator) -> float:
        """After a round: feed the participants' (pre-clipping) update norms; returns the new C."""
        b = noised_fraction(norms, self.clip, expected_clients=self.expected_clients,
                            count_noise_std=self.count_noise_std, rng=rng)
        return self.update_from_fraction(b)

    def update_from_fraction(self, fraction: float) -> float:
        """Same, when the noised fraction was computed elsewhere (e.g. summed under SecAgg)."""
        self.clip = next_clip(self.clip, fraction, target_quantile=self.config.target_quantile,
                              learning_rate=self.config.learning_rate)
        self.rounds += 1
        return self.clip

    def state_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip = _positive("clip", state["clip"])
        self.rounds = int(state["rounds"])
