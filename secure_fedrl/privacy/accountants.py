"""Privacy accountants behind one small interface: Opacus's RDP and PRV analyses.

Both accountants wrap Opacus 1.6.0 math (``opacus.accountants.analysis``); nothing here
re-derives a privacy bound. What we add, and why:

* ``"rdp"``: Opacus's RDP of the Poisson-subsampled Gaussian with a *wider* grid of orders
  (``RDP_ORDERS``: a superset of Opacus's default, dense near 1 with fractional orders, and up to
  512). Opacus's default grid stops at 63, which is ~2x loose for large sigma and small q; a
  superset can only lower the minimum over orders, so we are never above Opacus's own number.
  The running RDP vector is kept, so a step costs one vector add and ``get_epsilon`` is O(orders).
  Generic mechanisms (the distributed discrete Gaussian) enter as an RDP curve (``step_rdp``) or
  as rho-zCDP (``step_zcdp``: RDP(alpha) = alpha * rho).
* ``"prv"``: Opacus's PRV discretisation and FFT composition (Gopi et al. 2021). It supports only
  Poisson-subsampled Gaussians: other mechanisms raise ``ConfigError``. Opacus's final
  epsilon search overflows (returns inf) once the privacy loss passes ~709 (exp overflow), and its
  mesh would need tens of millions of points for huge epsilons; we therefore cap the mesh size by
  widening ``eps_error`` (still a valid upper bound), redo the epsilon search in an overflow-free
  form when Opacus gives no finite answer, and always return ``min(PRV upper, RDP upper)``: both
  are upper bounds, so the result never under-reports.

GDP (Opacus's CLT-based accountant) under-reports for subsampled Gaussians and is deliberately
not offered. Accountants are pure: no I/O, state only in memory (``state_dict`` for persistence).
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
from scipy.fft import next_fast_len
from opacus.accountants.analysis import rdp as _opacus_rdp
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    discretize,
)
from opacus.accountants.rdp import RDPAccountant as _OpacusRDPAccountant

from secure_fedrl.errors import ConfigError, PrivacyError

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "GaussianStep",
    "Mechanism",
    "PRVAccountant",
    "RDPAccountant",
    "RDPCurveStep",
    "RDP_ORDERS",
    "ZCDPStep",
    "bernoulli_mixture",
    "bernoulli_mixture_rdp",
    "make_accountant",
]

#: RDP orders: Opacus's defaults (1.1..10.9 by 0.1, 12..63) plus 1.01..1.09 (huge-epsilon
#: regime, optimum close to 1), 11, and 64..512 (large sigma, small q).
RDP_ORDERS: tuple[float, ...] = tuple(
    sorted(
        set(
            [1.0 + x / 100.0 for x in range(1, 10)]
            + [float(a) for a in _OpacusRDPAccountant.DEFAULT_ALPHAS]
            + [float(a) for a in range(11, 64)]
            + [float(a) for a in range(64, 129, 2)]
            + [float(a) for a in range(136, 257, 8)]
            + [320.0, 384.0, 448.0, 512.0]
        )
    )
)

_ORDERS_ARRAY = np.asarray(RDP_ORDERS, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# validation


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise PrivacyError(f"{name} must not be NaN")
    return value


def check_noise_multiplier(noise_multiplier: Any) -> float:
    """sigma > 0 and finite; sigma = 0 would mean no privacy (epsilon = inf), so it is refused."""
    sigma = _check_real("noise_multiplier", noise_multiplier)
    if sigma <= 0.0:
        raise PrivacyError(
            f"noise_multiplier must be > 0, got {sigma} (0 means no privacy: epsilon = inf)"
        )
    if math.isinf(sigma):
        raise PrivacyError("noise_multiplier must be finite")
    return sigma


def check_sample_rate(sample_rate: Any) -> float:
    q = _check_real("sample_rate", sample_rate)
    if not 0.0 < q <= 1.0:
        raise PrivacyError(f"sample_rate must be in (0, 1], got {q}")
    return q


def check_steps(name: str, steps: Any, *, minimum: int = 0) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise PrivacyError(f"{name} must be an integer, got {steps!r}")
    if steps < minimum:
        raise PrivacyError(f"{name} must be >= {minimum}, got {steps}")
    return int(steps)


def check_delta(delta: Any) -> float:
    d = _check_real("delta", delta)
    if not 0.0 < d < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {d}")
    return d


# --------------------------------------------------------------------------------------------
# mechanisms (one accounting step each; serialisable)


@dataclass(frozen=True)
class GaussianStep:
    """Poisson-subsampled Gaussian with L2 sensitivity 1 (noise std = noise_multiplier)."""

    noise_multiplier: float
    sample_rate: float
    num_steps: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        object.__setattr__(self, "num_steps", check_steps("num_steps", self.num_steps))


@dataclass(frozen=True)
class ZCDPStep:
    """A rho-zCDP mechanism (e.g. the distributed discrete Gaussian): RDP(alpha) = alpha * rho."""

    rho: float
    num_steps: int = 1

    def __post_init__(self) -> None:
        rho = _check_real("rho", self.rho)
        if not 0.0 <= rho < math.inf:
            raise PrivacyError(f"rho must be finite and >= 0, got {rho}")
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "num_steps", check_steps("num_steps", self.num_steps))


@dataclass(frozen=True)
class RDPCurveStep:
    """Any mechanism given by its RDP curve, already evaluated on ``RDP_ORDERS``.

    Build it with ``RDPCurveStep.from_fn(fn)``; storing values (not the function) keeps the
    history serialisable.
    """

    rdp: tuple[float, ...]
    num_steps: int = 1

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.rdp)
        if len(values) != len(RDP_ORDERS):
            raise PrivacyError(
                f"rdp curve must have {len(RDP_ORDERS)} values (one per RDP_ORDERS), "
                f"got {len(values)}"
            )
        if any(math.isnan(v) or v < 0.0 for v in values):
            raise PrivacyError("rdp curve values must be >= 0 (inf allowed), not NaN or negative")
        object.__setattr__(self, "rdp", values)
        object.__setattr__(self, "num_steps", check_steps("num_steps", self.num_steps))

    @classmethod
    def from_fn(cls, rdp_curve_fn: Callable[[Any], Any], *, num_steps: int = 1) -> "RDPCurveStep":
        """Evaluate ``rdp_curve_fn`` on ``RDP_ORDERS``: vectorised (array in, array out) when
        it supports that, else one scalar order at a time."""
        try:
            values = np.asarray(rdp_curve_fn(_ORDERS_ARRAY.copy()), dtype=np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None or values.shape != _ORDERS_ARRAY.shape:
            values = np.asarray([float(rdp_curve_fn(float(a))) for a in RDP_ORDERS])
        return cls(tuple(values.tolist()), num_steps)


Mechanism = Union[GaussianStep, ZCDPStep, RDPCurveStep]

_KINDS: dict[str, type] = {"gaussian": GaussianStep, "zcdp": ZCDPStep, "rdp_curve": RDPCurveStep}


def _to_dict(m: Mechanism) -> dict[str, Any]:
    if isinstance(m, GaussianStep):
        return {"kind": "gaussian", "noise_multiplier": m.noise_multiplier,
                "sample_rate": m.sample_rate, "num_steps": m.num_steps}
    if isinstance(m, ZCDPStep):
        return {"kind": "zcdp", "rho": m.rho, "num_steps": m.num_steps}
    return {"kind": "rdp_curve", "rdp": list(m.rdp), "num_steps": m.num_steps}


def _from_dict(d: Any) -> Mechanism:
    if not isinstance(d, dict) or d.get("kind") not in _KINDS:
        raise ConfigError(f"history entry is not a known mechanism: {d!r}")
    fields = {k: v for k, v in d.items() if k != "kind"}
    if d["kind"] == "rdp_curve":
        fields["rdp"] = tuple(fields.get("rdp", ()))
    try:
        return _KINDS[d["kind"]](**fields)
    except TypeError as exc:
        raise ConfigError(f"history entry has wrong fields: {d!r}") from exc


def _merge(history: list[Mechanism], m: Mechanism) -> None:
    """Append ``m``, merging it into the last entry when only num_steps differs (Opacus style)."""
    if m.num_steps == 0:
        return
    if history:
        last = history[-1]
        if type(last) is type(m):
            same = (
                (isinstance(m, GaussianStep) and last.noise_multiplier == m.noise_multiplier
                 and last.sample_rate == m.sample_rate)
                or (isinstance(m, ZCDPStep) and last.rho == m.rho)
                or (isinstance(m, RDPCurveStep) and last.rdp == m.rdp)
            )
            if same:
                history[-1] = _with_steps(m, last.num_steps + m.num_steps)
                return
    history.append(m)


def _unchecked_gaussian(noise_multiplier: float, sample_rate: float, n: int) -> GaussianStep:
    """A GaussianStep from already-validated fields (skips __post_init__ on the hot path)."""
    m = object.__new__(GaussianStep)
    object.__setattr__(m, "noise_multiplier", noise_multiplier)
    object.__setattr__(m, "sample_rate", sample_rate)
    object.__setattr__(m, "num_steps", n)
    return m


def _with_steps(m: Mechanism, n: int) -> Mechanism:
    if isinstance(m, GaussianStep):
        return GaussianStep(m.noise_multiplier, m.sample_rate, n)
    if isinstance(m, ZCDPStep):
        return ZCDPStep(m.rho, n)
    return RDPCurveStep(m.rdp, n)


# --------------------------------------------------------------------------------------------
# RDP math (Opacus), cached per (sigma, q)

_RDP_CACHE: dict[tuple[float, float], np.ndarray] = {}
_RDP_CACHE_MAX = 4096


def gaussian_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """One step's RDP vector on ``RDP_ORDERS`` (Opacus ``compute_rdp``), memoised: it is the
    only expensive part of RDP accounting and rounds reuse the same (sigma, q)."""
    key = (float(noise_multiplier), float(sample_rate))
    vec = _RDP_CACHE.get(key)
    if vec is None:
        vec = np.asarray(
            _opacus_rdp.compute_rdp(q=key[1], noise_multiplier=key[0], steps=1,
                                    orders=list(RDP_ORDERS)),
            dtype=np.float64,
        )
        vec.setflags(write=False)
        if len(_RDP_CACHE) >= _RDP_CACHE_MAX:
            _RDP_CACHE.clear()
        _RDP_CACHE[key] = vec
    return vec


def _mechanism_rdp(m: Mechanism) -> np.ndarray:
    if isinstance(m, GaussianStep):
        return gaussian_rdp(m.noise_multiplier, m.sample_rate) * m.num_steps
    if isinstance(m, ZCDPStep):
        return _ORDERS_ARRAY * (m.rho * m.num_steps)
    return np.asarray(m.rdp, dtype=np.float64) * m.num_steps


def bernoulli_mixture(rdp: Sequence[float] | np.ndarray, orders: Sequence[float] | np.ndarray,
                      sample_rate: float) -> np.ndarray:
    """RDP of a mechanism whose unit takes part with secret probability q, at real orders > 1:

        eps'(alpha) = log(1 - q + q exp((alpha - 1) eps(alpha))) / (alpha - 1)

    Why this and not the Gaussian-specific subsampling bounds: it needs only that the two
    neighbouring worlds are mixtures with the SAME weights over the unit's secret inclusion
    (zero-out: the unit takes part in both, with its real or a zero update) and that an
    included round costs at most eps(alpha). Joint convexity of (P, Q) -> int P^a Q^(1-a) then
    gives the bound (docs/privacy-model.md, Theorem R), whatever else inclusion changes (e.g.
    the extra DDG noise share). Never above ``rdp``; equal to it at q = 1.
    """
    q = check_sample_rate(sample_rate)
    eps = np.asarray(rdp, dtype=np.float64)
    a = np.asarray(orders, dtype=np.float64)
    if eps.shape != a.shape:
        raise PrivacyError(f"rdp curve has {eps.shape} values for {a.shape} orders")
    if np.any(a <= 1.0):
        raise PrivacyError("RDP orders must be > 1")
    if np.any(np.isnan(eps)) or np.any(eps < 0.0):
        raise PrivacyError("rdp curve values must be >= 0 (inf allowed), not NaN or negative")
    if q == 1.0:
        return eps.copy()
    am1 = a - 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.logaddexp(math.log1p(-q), math.log(q) + am1 * eps) / am1
    out = np.where(np.isinf(eps), np.inf, out)
    return np.minimum(np.maximum(out, 0.0), eps)


def bernoulli_mixture_rdp(rdp: Sequence[float] | np.ndarray, sample_rate: float) -> np.ndarray:
    """``bernoulli_mixture`` on ``RDP_ORDERS`` (the accountants' grid)."""
    return bernoulli_mixture(rdp, _ORDERS_ARRAY, sample_rate)


def rdp_to_epsilon(rdp: np.ndarray, delta: float) -> float:
    """Opacus's RDP -> (eps, delta) conversion (Balle et al. 2020, Thm 21), min over orders."""
    if not np.any(rdp):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns when the optimum is at a grid edge
        eps, _ = _opacus_rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    eps = float(eps)
    if math.isnan(eps):
        return math.inf
    return max(eps, 0.0)


# --------------------------------------------------------------------------------------------
# interface


class Accountant(ABC):
    """Opacus-style accountant: ``step`` records spend, ``get_epsilon`` reports it.

    ``history`` lists the mechanisms composed so far (consecutive identical ones merged).
    """

    name: str = ""

    def __init__(self) -> None:
        self.history: list[Mechanism] = []

    # -- recording
    def step(self, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
        """Record ``num_steps`` Poisson-subsampled Gaussian steps."""
        last = self.history[-1] if self.history else None
        if (
            type(last) is GaussianStep
            and isinstance(noise_multiplier, float)
            and isinstance(sample_rate, float)
            and type(num_steps) is int
            and num_steps > 0
            and noise_multiplier == last.noise_multiplier
            and sample_rate == last.sample_rate
        ):
            # Fast path for the common "same round again": the parameters equal an entry that
            # was validated already, so only the count changes (keeps 10k rounds well < 1 s).
            self._extend_last(num_steps)
            return
        self.apply(GaussianStep(noise_multiplier, sample_rate, num_steps))

    def _extend_last(self, num_steps: int) -> None:
        last = self.history[-1]
        self.history[-1] = _unchecked_gaussian(last.noise_multiplier, last.sample_rate,
                                               last.num_steps + num_steps)

    @abstractmethod
    def apply(self, mechanism: Mechanism) -> None:
        """Record one mechanism (any ``Mechanism`` the accountant supports)."""

    # -- reporting
    @abstractmethod
    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (an upper bound; inf when unbounded)."""

    def epsilon_after(self, mechanism: Mechanism, delta: float) -> float:
        """Epsilon if ``mechanism`` were applied next; the accountant is left unchanged."""
        trial = self.copy()
        trial.apply(mechanism)
        return trial.get_epsilon(delta)

    def copy(self) -> "Accountant":
        return copy.deepcopy(self)

    def __len__(self) -> int:
        return len(self.history)

    @property
    def total_steps(self) -> int:
        return sum(m.num_steps for m in self.history)

    # -- persistence
    def state_dict(self) -> dict[str, Any]:
        return {"mechanism": self.name, "history": [_to_dict(m) for m in self.history]}

    def load_state_dict(self, state_dict: Any) -> None:
        if not isinstance(state_dict, dict) or "history" not in state_dict:
            raise ConfigError("accountant state_dict must be a dict with a 'history' key")
        if state_dict.get("mechanism") != self.name:
            raise ConfigError(
                f"accountant state_dict is for {state_dict.get('mechanism')!r}, not {self.name!r}"
            )
        fresh = type(self)()
        for entry in state_dict["history"]:
            fresh.apply(_from_dict(entry))
        self.__dict__.update(fresh.__dict__)


class RDPAccountant(Accountant):
    """Opacus RDP on ``RDP_ORDERS``, incremental: keeps the running RDP vector."""

    name = "rdp"

    def __init__(self) -> None:
        super().__init__()
        self._rdp = np.zeros(len(RDP_ORDERS), dtype=np.float64)

    def apply(self, mechanism: Mechanism) -> None:
        if not isinstance(mechanism, (GaussianStep, ZCDPStep, RDPCurveStep)):
            raise ConfigError(f"unsupported mechanism for rdp accountant: {mechanism!r}")
        self._rdp = self._rdp + _mechanism_rdp(mechanism)
        _merge(self.history, mechanism)

    def step_zcdp(self, rho: float, *, num_steps: int = 1) -> None:
        """Record a rho-zCDP mechanism (RDP(alpha) = alpha * rho)."""
        self.apply(ZCDPStep(rho, num_steps))

    def step_rdp(self, rdp_curve_fn: Callable[[float], float], *, num_steps: int = 1) -> None:
        """Record a mechanism given by its RDP curve alpha -> RDP(alpha)."""
        self.apply(RDPCurveStep.from_fn(rdp_curve_fn, num_steps=num_steps))

    def _extend_last(self, num_steps: int) -> None:
        last = self.history[-1]
        self._rdp += gaussian_rdp(last.noise_multiplier, last.sample_rate) * num_steps
        super()._extend_last(num_steps)

    @property
    def rdp(self) -> np.ndarray:
        """The running RDP vector on ``RDP_ORDERS`` (a copy)."""
        return self._rdp.copy()

    def get_epsilon(self, delta: float) -> float:
        return rdp_to_epsilon(self._rdp, check_delta(delta))

    def epsilon_after(self, mechanism: Mechanism, delta: float) -> float:
        return rdp_to_epsilon(self._rdp + _mechanism_rdp(mechanism), check_delta(delta))


class PRVAccountant(Accountant):
    """Opacus PRV (numerical composition) for Poisson-subsampled Gaussians only.

    ``eps_error`` 0.01 and ``delta_error`` delta/1000 (Opacus's defaults) keep the upper bound
    within ~0.01 of the PLD value, well inside the 2% / 0.02 accuracy target. For large epsilons
    the error allowance grows to ``rel_error`` (0.1%) of the RDP bound, and the mesh is capped at
    ``max_points``: the mesh is proportional to 1/eps_error, and a fixed 0.01 would need tens of
    millions of points at epsilon ~ 1000 for no useful gain. Results are memoised per
    (history, delta), so a budget's preview followed by its commit composes once; with one
    (sigma, q) throughout, the discretised step is reused across rounds (see ``_prv_epsilon``).
    Equal (sigma, q) entries are merged wherever they occur; beyond ``PRV_MAX_DISTINCT`` distinct
    pairs, sigma is rounded down and q up on a 1% grid (dominating, so never under-reporting).
    """

    name = "prv"

    def __init__(self, *, eps_error: float = 0.01, rel_error: float = 1e-3,
                 max_points: int = 2_000_000) -> None:
        super().__init__()
        if not 0.0 < eps_error <= 0.5:
            raise ConfigError(f"eps_error must be in (0, 0.5], got {eps_error}")
        if not 0.0 <= rel_error <= 0.01:
            raise ConfigError(f"rel_error must be in [0, 0.01], got {rel_error}")
        if max_points < 1000:
            raise ConfigError(f"max_points must be >= 1000, got {max_points}")
        self.eps_error = float(eps_error)
        self.rel_error = float(rel_error)
        self.max_points = int(max_points)
        self._cache: dict[tuple, Any] = {}

    def apply(self, mechanism: Mechanism) -> None:
        if not isinstance(mechanism, GaussianStep):
            raise ConfigError(
                "prv accountant supports only Poisson-subsampled Gaussian steps; "
                "use accountant 'rdp' for zCDP / RDP-curve mechanisms"
            )
        _merge(self.history, mechanism)

    def step_zcdp(self, rho: float, *, num_steps: int = 1) -> None:
        self.apply(ZCDPStep(rho, num_steps))

    def step_rdp(self, rdp_curve_fn: Callable[[float], float], *, num_steps: int = 1) -> None:
        self.apply(RDPCurveStep.from_fn(rdp_curve_fn, num_steps=num_steps))

    def get_epsilon(self, delta: float) -> float:
        return _prv_epsilon(tuple(self.history), check_delta(delta), self._errors(),
                            self.max_points, self._cache)

    def epsilon_after(self, mechanism: Mechanism, delta: float) -> float:
        if not isinstance(mechanism, GaussianStep):
            self.apply(mechanism)  # raises ConfigError
        history = list(self.history)
        _merge(history, mechanism)
        return _prv_epsilon(tuple(history), check_delta(delta), self._errors(),
                            self.max_points, self._cache)

    def _errors(self) -> tuple[float, float]:
        return (self.eps_error, self.rel_error)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(eps_error=self.eps_error, rel_error=self.rel_error,
                     max_points=self.max_points)
        return state

    def load_state_dict(self, state_dict: Any) -> None:
        super().load_state_dict(state_dict)
        self.eps_error = float(state_dict.get("eps_error", self.eps_error))
        self.rel_error = float(state_dict.get("rel_error", self.rel_error))
        self.max_points = int(state_dict.get("max_points", self.max_points))


def _prv_epsilon(history: tuple[GaussianStep, ...], delta: float, errors: tuple[float, float],
                 max_points: int, cache: dict[tuple, Any]) -> float:
    """min(PRV upper, RDP upper) for ``history``, memoised in ``cache``.

    Incremental case (one merged entry: the same sigma and q every round): the single step is
    discretised once on a domain that is safe for a *horizon* of 2^k >= T steps (a domain sized
    for more compositions is wider and finer, so it stays valid for fewer), and each round only
    redoes the FFT power and the epsilon search. Discretisation (CDF on the mesh, mean integral)
    is the expensive part, so a per-round check at round 10,000 costs one FFT.
    """
    if not history:
        return 0.0
    key = ("eps", history, delta, errors, max_points)
    if key in cache:
        return cache[key]
    rdp_eps = rdp_to_epsilon(sum(_mechanism_rdp(m) for m in history), delta)
    if not math.isfinite(rdp_eps):
        return math.inf
    history = _group_for_prv(history)
    if history is None:  # too many distinct mechanisms to discretise: RDP is the honest answer
        cache[key] = rdp_eps
        return rdp_eps
    if len(history) == 1:
        only = history[0]
        horizon = 1 << max(0, (only.num_steps - 1).bit_length())
        plan: tuple[GaussianStep, ...] = (GaussianStep(only.noise_multiplier, only.sample_rate,
                                                       horizon),)
        plan_eps = rdp_to_epsilon(_mechanism_rdp(plan[0]), delta)
    else:
        plan, plan_eps = history, rdp_eps
    eps_error = max(errors[0], errors[1] * plan_eps) if math.isfinite(plan_eps) else errors[0]
    prv_eps = _prv_upper(history, plan, delta, eps_error, max_points, cache)
    eps = min(prv_eps, rdp_eps)
    if len(cache) > 256:
        cache.clear()
    cache[key] = eps
    return eps


#: Above this many distinct (sigma, q) pairs, PRV rounds sigma down and q up onto a 1% grid
#: (a dominating mechanism: never under-reports) before discretising each one.
PRV_MAX_DISTINCT = 16
_GRID = math.log(1.01)


def _group_for_prv(history: Sequence[GaussianStep]) -> tuple[GaussianStep, ...] | None:
    """Merge equal (sigma, q) anywhere in the history (composition commutes: exact). If still
    more than PRV_MAX_DISTINCT, replace each by a dominating one (sigma rounded down, q rounded
    up on a 1% geometric grid; the PRV is monotone in both), else None."""

    def group(items: Sequence[tuple[float, float, int]]) -> dict[tuple[float, float], int]:
        out: dict[tuple[float, float], int] = {}
        for sigma, q, n in items:
            out[(sigma, q)] = out.get((sigma, q), 0) + n
        return out

    groups = group([(m.noise_multiplier, m.sample_rate, m.num_steps) for m in history])
    if len(groups) > PRV_MAX_DISTINCT:
        groups = group([
            (math.exp(math.floor(math.log(s) / _GRID) * _GRID) * (1 - 1e-12),
             min(1.0, math.exp(math.ceil(math.log(q) / _GRID) * _GRID) * (1 + 1e-12)), n)
            for (s, q), n in groups.items()
        ])
        if len(groups) > PRV_MAX_DISTINCT:
            return None
    return tuple(GaussianStep(s, q, n) for (s, q), n in groups.items())


def _prv_upper(history: Sequence[GaussianStep], plan: Sequence[GaussianStep], delta: float,
               eps_error: float, max_points: int, cache: dict[tuple, Any]) -> float:
    """Opacus PRV upper bound of ``history``, discretised on a domain safe for ``plan`` (same
    mechanisms, at least as many steps each); inf when no finite answer can be had (the caller
    takes the min with RDP, so inf never hides a finite bound)."""
    delta_error = delta / 1000.0
    counts = [m.num_steps for m in history]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            disc_key = ("dprvs", tuple(plan), delta, eps_error, max_points)
            if disc_key not in cache:
                for k in [k for k in cache if k[0] == "dprvs"][:-1]:  # keep at most two meshes
                    del cache[k]
                cache[disc_key] = _prv_discretize(plan, delta_error, eps_error, max_points)
            dprvs, eps_error = cache[disc_key]
            if dprvs is None:
                return math.inf
            dprv = compose_heterogeneous(dprvs=list(dprvs), num_self_compositions=counts)
            try:
                _, _, upper = dprv.compute_epsilon(delta, delta_error, eps_error)
                upper = float(upper)
            except (RuntimeError, ValueError, FloatingPointError, OverflowError):
                upper = math.nan
            if not math.isfinite(upper):
                upper = _stable_upper(dprv.pmf, dprv.domain.ts, delta - delta_error) + eps_error
    except Exception:  # noqa: BLE001 - any PRV failure falls back to the RDP bound (caller's min)
        return math.inf
    if math.isnan(upper):
        return math.inf
    return max(upper, 0.0)


def _prv_discretize(plan: Sequence[GaussianStep], delta_error: float, eps_error: float,
                    max_points: int) -> tuple[tuple | None, float]:
    """Opacus ``PRVAccountant._get_dprv`` up to composition, with the mesh capped at max_points
    (by widening eps_error, which keeps a valid but looser bound). (None, eps_error) if even
    eps_error = 1 would not fit."""
    counts = [m.num_steps for m in plan]
    total = sum(counts)
    L = _safe_domain_size(plan, eps_error, delta_error)
    if not math.isfinite(L):
        return None, eps_error
    spread = math.sqrt(total * math.log(12.0 / delta_error) / 2.0)
    points = 2.0 * L * spread / eps_error
    if points > max_points:
        eps_error = eps_error * points / max_points
        if eps_error > 1.0:  # Opacus's domain bound is only argued for eps_error < 1
            return None, eps_error
    domain = _fast_domain(L, eps_error / spread)
    prvs = [PoissonSubsampledGaussianPRV(m.sample_rate, m.noise_multiplier) for m in plan]
    tprvs = [TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max) for p in prvs]
    return tuple(discretize(t, domain) for t in tprvs), eps_error


def _fast_domain(L: float, dt: float) -> Domain:
    """Opacus's ``Domain.create_aligned(-L, L, dt)`` layout (t_min = -K dt, t_max = (K+1) dt,
    even size 2K+2, which its FFT composition assumes), widened to an FFT-friendly size: a
    size with a large prime factor makes each composition several times slower. A wider domain
    only lowers the truncated mass, so the bound stays valid."""
    K = int(math.ceil(L / dt))
    n = next_fast_len(2 * K + 2, real=True)
    while n % 2:
        n = next_fast_len(n + 1, real=True)
    K = (n - 2) // 2
    return Domain(t_min=-K * dt, t_max=(K + 1) * dt, size=n)


def _safe_domain_size(history: Sequence[GaussianStep], eps_error: float,
                      delta_error: float) -> float:
    """Opacus's ``compute_safe_domain_size`` (Gopi et al. remark 5.6), on our cached RDP vectors.

    Same formula; our order grid is a superset of Opacus's, so each RDP bound is at most Opacus's
    and still valid. Opacus recomputes its (slow, fractional-order) RDP twice per call.
    """
    total = sum(m.num_steps for m in history)
    L = rdp_to_epsilon(sum(_mechanism_rdp(m) for m in history), delta_error / 4.0)
    for m in history:
        L = max(L, rdp_to_epsilon(gaussian_rdp(m.noise_multiplier, m.sample_rate),
                                  delta_error / (8.0 * total)))
    return max(L, eps_error) + 3.0


def _stable_upper(pmf: np.ndarray, ts: np.ndarray, delta_target: float) -> float:
    """Smallest eps with delta(eps) <= delta_target for a discrete PRV, without exp overflow.

    delta(eps) = sum_{t_j >= eps} p_j (1 - exp(eps - t_j)) only ever takes exp of a
    non-positive number, unlike Opacus's exp(t) * cumsum(p * exp(-t)). Same piecewise solve as
    Opacus's ``find_epsilon``: on (t_{i-1}, t_i], delta(eps) = D1_i - exp(eps - t_i) * D2_i.
    """

    def delta_at(i: int) -> float:
        tail_p, tail_t = pmf[i:], ts[i:]
        return float(np.sum(tail_p * -np.expm1(ts[i] - tail_t)))

    n = len(ts)
    if delta_at(0) <= delta_target:
        return float(ts[0])
    if delta_at(n - 1) > delta_target:
        return math.inf
    lo, hi = 0, n - 1  # delta_at(lo) > target >= delta_at(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if delta_at(mid) > delta_target:
            lo = mid
        else:
            hi = mid
    d1 = float(np.sum(pmf[hi:]))
    d2 = float(np.sum(pmf[hi:] * np.exp(ts[hi] - ts[hi:])))
    if d2 <= 0.0 or d1 - delta_target <= 0.0:
        return float(ts[hi])
    return float(ts[hi] + math.log((d1 - delta_target) / d2))


# --------------------------------------------------------------------------------------------

ACCOUNTANTS: dict[str, type[Accountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}


def make_accountant(name: str) -> Accountant:
    """``"rdp"`` or ``"prv"``; GDP is deliberately absent (it under-reports)."""
    if not isinstance(name, str) or name.lower() not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {sorted(ACCOUNTANTS)}, got {name!r}")
    return ACCOUNTANTS[name.lower()]()
