"""Server strategies: pure math that turns the mean site update into new global parameters.

Under secure aggregation the server only ever recovers the (weighted) SUM of the updates, so every
synchronous strategy is written against the mean update alone (`apply`); `aggregate` is the
in-the-clear convenience that averages first. Δ = θ_local − θ_global throughout, so a positive
step along Δ moves the global model towards the sites (no sign flips in the code below: FedOpt's
pseudo-gradient is −Δ, and its step x + η·m/(√v+τ) already accounts for it).

Each strategy checkpoints through `state_dict()` / `load_state_dict()` (flat dicts of numpy arrays
and scalars); the dict carries the hyperparameters too so that loading the state of a differently
configured strategy is refused instead of silently resuming something else.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from secure_fedrl.fl.registry import build_named
from secure_fedrl.errors import ConfigError, ProtocolError
from secure_fedrl.fl.updates import VectorError, as_vector, weighted_mean

__all__ = [
    "Strategy",
    "FedAvg",
    "FedProx",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "Scaffold",
    "ScaffoldClient",
    "ControlProposal",
    "FedAsync",
    "FedBuff",
    "Staleness",
    "ConstantStaleness",
    "PolynomialStaleness",
    "HingeStaleness",
    "make_staleness",
    "scaffold_client_control",
    "scaffold_corrected_gradient",
    "make_strategy",
    "STRATEGIES",
]


# --------------------------------------------------------------------------- validation helpers
def _real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real hyperparameter within [low, high] (ends open on request), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if low is not None and (x < low or (low_open and x == low)):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (x > high or (high_open and x == high)):
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return x


def _count(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _state_array(d: Mapping[str, Any], key: str) -> np.ndarray | None:
    v = d.get(key)
    if v is None:
        return None
    arr = np.asarray(v)
    if arr.ndim != 1:
        raise ConfigError(f"strategy state {key!r} must be a 1-D array, got shape {arr.shape}")
    return arr.astype(np.float32, copy=True)


# --------------------------------------------------------------------------- base
class Strategy(ABC):
    """Server-side update rule on flat float32 vectors.

    Subclasses implement `apply` and list their hyperparameters in `_hyper()`; state beyond the
    hyperparameters goes through `_state()` / `_load_state()`.
    """

    name: ClassVar[str]

    @property
    def client_prox_mu(self) -> float:
        """Proximal coefficient μ the local trainer adds as (μ/2)‖θ − θ_global‖²; 0 = none."""
        return 0.0

    @abstractmethod
    def apply(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """Return new global params from the current ones and the mean update (not in place)."""

    def aggregate(
        self,
        params: np.ndarray,
        updates: Sequence[np.ndarray],
        weights: Sequence[float] | None = None,
    ) -> np.ndarray:
        """In-the-clear convenience: `apply(params, weighted_mean(updates, weights))`."""
        return self.apply(params, weighted_mean(updates, weights))

    def _hyper(self) -> dict[str, float | int | str]:
        return {}

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, d: Mapping[str, Any]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """Strategy name, hyperparameters and optimizer state (arrays are copies)."""
        out: dict[str, Any] = {"strategy": self.name}
        out.update(self._hyper())
        out.update(self._state())
        return out

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore the state saved by `state_dict` of an identically configured strategy."""
        if d.get("strategy") != self.name:
            raise ConfigError(f"state is for strategy {d.get('strategy')!r}, not {self.name!r}")
        for key, mine in self._hyper().items():
            if key not in d:
                raise ConfigError(f"{self.name} state lacks hyperparameter {key!r}")
            theirs = d[key]
            if isinstance(mine, str):
                same = theirs == mine
            else:
                try:
                    same = float(theirs) == float(mine)
                except (TypeError, ValueError):
                    same = False
            if not same:
                raise ConfigError(
                    f"{self.name} state has {key}={theirs!r} but this strategy has {key}={mine!r}"
                )
        self._load_state(d)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({args})"


def _check_pair(params: np.ndarray, update: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = as_vector(params, what="params")
    d = as_vector(update, what=what, dim=x.shape[0])
    return x, d


# --------------------------------------------------------------------------- FedAvg / FedProx
class FedAvg(Strategy):
    """x ← x + η·Δ̄ (McMahan et al. 2017); η = 1 is plain model averaging."""

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = _real("server_lr", server_lr, low=0.0, low_open=True)

    def _hyper(self) -> dict[str, float | int | str]:
        return {"server_lr": self.server_lr}

    def apply(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        x, d = _check_pair(params, mean_update, "mean_update")
        out = d * np.float32(self.server_lr)
        out += x
        return out


class FedProx(FedAvg):
    """FedAvg on the server; the local objective gains (μ/2)‖θ − θ_global‖² (Li et al. 2020)."""

    name = "fedprox"

    def __init__(self, mu: float, *, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        self.mu = _real("mu", mu, low=0.0)

    @property
    def client_prox_mu(self) -> float:
        return self.mu

    def _hyper(self) -> dict[str, float | int | str]:
        return {"mu": self.mu, "server_lr": self.server_lr}


# --------------------------------------------------------------------------- FedOpt family
class _FedOpt(Strategy):
    """Reddi et al. 2021, Algorithm 2, with Δ_t the mean update (pseudo-gradient −Δ_t):

        m_t = β1·m_{t−1} + (1−β1)·Δ_t
        v_t = variant-specific second moment, v_{−1} = τ²
        x_{t+1} = x_t + η·m_t / (√v_t + τ)

    Bias correction is off by default, as in the paper's algorithm (its m_{−1} = 0 start is part of
    what was tuned); `bias_correction=True` divides m by (1−β1^t) and, for Adam/Yogi, v by (1−β2^t)
    as in Kingma & Ba. State (m, v, t) is float32 vectors plus an int.

    How and why this differs from Flower's FedOpt strategies (flwr.server.strategy.fedadam /
    fedyogi / fedadagrad): Flower starts v at 0 instead of the paper's v_{−1} = τ², so on
    coordinates with |Δ| ≪ τ its early steps are about twice ours (denominator ≈ τ instead of
    ≈ 2τ; the gap fades as β2 forgets τ², and never for Adagrad); and Flower's FedAdam always
    bias-corrects through the rate, η·√(1−β2^(r+1))/(1−β1^(r+1)) with its 1-based round r
    (exponent 2 on the first aggregation, τ outside the uncorrected √v), while its FedYogi and
    FedAdagrad do not correct. We follow Algorithm 2 because the paper's tuned η and τ assume it.
    Loaded with v = 0 (`load_state_dict`) and without correction, ours runs Flower's recursion
    (tests/fl/test_fl_fedopt_reference.py checks both against a float64 reference).
    """

    uses_beta2: ClassVar[bool] = True

    def __init__(
        self,
        *,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        bias_correction: bool = False,
    ) -> None:
        self.server_lr = _real("server_lr", server_lr, low=0.0, low_open=True)
        self.beta1 = _real("beta1", beta1, low=0.0, high=1.0, high_open=True)
        self.beta2 = _real("beta2", beta2, low=0.0, high=1.0, high_open=True)
        self.tau = _real("tau", tau, low=0.0, low_open=True)
        if not isinstance(bias_correction, bool):
            raise ConfigError(f"bias_correction must be true or false, got {bias_correction!r}")
        self.bias_correction = bias_correction
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.step_count = 0

    def _hyper(self) -> dict[str, float | int | str]:
        h: dict[str, float | int | str] = {"server_lr": self.server_lr, "beta1": self.beta1}
        if self.uses_beta2:
            h["beta2"] = self.beta2
        h["tau"] = self.tau
        h["bias_correction"] = int(self.bias_correction)
        return h

    def _state(self) -> dict[str, Any]:
        return {
            "m": None if self.m is None else self.m.copy(),
            "v": None if self.v is None else self.v.copy(),
            "step_count": self.step_count,
        }

    def _load_state(self, d: Mapping[str, Any]) -> None:
        m, v = _state_array(d, "m"), _state_array(d, "v")
        if (m is None) != (v is None) or (m is not None and v is not None and m.shape != v.shape):
            raise ConfigError(f"{self.name} state has inconsistent m and v")
        self.m, self.v = m, v
        self.step_count = _count("step_count", d.get("step_count"), low=0)

    @abstractmethod
    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """v_t from v_{t−1} and Δ_t² (may reuse d2's memory)."""

    def apply(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        x, d = _check_pair(params, mean_update, "mean_update")
        if self.m is None or self.v is None:
            m = np.zeros_like(x)
            v = np.full_like(x, np.float32(self.tau) ** 2)
        else:
            if self.m.shape != x.shape:
                raise VectorError(
                    f"{self.name} state has dim {self.m.shape[0]}, params have {x.shape[0]}"
                )
            m, v = self.m, self.v
        b1 = np.float32(self.beta1)
        m = m * b1
        m += np.float32(1.0 - self.beta1) * d
        v = self._second_moment(v, np.square(d))
        t = self.step_count + 1
        m_hat, v_hat = m, v
        if self.bias_correction:
            m_hat = m / np.float32(1.0 - self.beta1**t)
            if self.uses_beta2:
                v_hat = v / np.float32(1.0 - self.beta2**t)
        denom = np.sqrt(v_hat)
        denom += np.float32(self.tau)
        step = m_hat * np.float32(self.server_lr)
        step /= denom
        step += x
        self.m, self.v, self.step_count = m, v, t
        return step


class FedAdam(_FedOpt):
    """v_t = β2·v_{t−1} + (1−β2)·Δ_t²."""

    name = "fedadam"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        d2 *= np.float32(1.0 - self.beta2)
        d2 += np.float32(self.beta2) * v
        return d2


class FedYogi(_FedOpt):
    """v_t = v_{t−1} − (1−β2)·Δ_t²·sign(v_{t−1} − Δ_t²).

    Moves v towards Δ² by an additive (1−β2)·Δ² instead of Adam's multiplicative decay, so the
    effective step size shrinks less abruptly after a rare large update (Zaheer et al. 2018).
    """

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        sign = np.sign(v - d2)
        d2 *= np.float32(1.0 - self.beta2)
        d2 *= sign
        return v - d2


class FedAdagrad(_FedOpt):
    """v_t = v_{t−1} + Δ_t² (no β2; passing beta2 is a config error)."""

    name = "fedadagrad"
    uses_beta2 = False

    def __init__(
        self,
        *,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        tau: float = 1e-3,
        bias_correction: bool = False,
    ) -> None:
        super().__init__(
            server_lr=server_lr, beta1=beta1, tau=tau, bias_correction=bias_correction
        )

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        d2 += v
        return d2


# --------------------------------------------------------------------------- SCAFFOLD
def scaffold_client_control(
    c_i: np.ndarray,
    c: np.ndarray,
    x_global: np.ndarray,
    y_local: np.ndarray,
    local_steps: int,
    local_lr: float,
) -> np.ndarray:
    """Option II of Karimireddy et al. 2020, eq. (4): c_i⁺ = c_i − c + (x − y_i) / (K·η_l).

    Valid ONLY for plain SGD at a fixed rate η_l: (x − y_i)/(K·η_l) is then the mean corrected
    gradient of the K local steps. Under Adam, momentum or an annealed rate it is not a gradient
    at all (the run diverges or stalls), which is why the runtime uses option I
    (`ScaffoldClient.propose`). Kept for callers that run plain SGD and want the free estimate.
    """
    x = as_vector(x_global, what="x_global")
    dim = x.shape[0]
    ci = as_vector(c_i, what="c_i", dim=dim)
    cg = as_vector(c, what="c", dim=dim)
    y = as_vector(y_local, what="y_local", dim=dim)
    k = _count("local_steps", local_steps, low=1)
    lr = _real("local_lr", local_lr, low=0.0, low_open=True)
    out = x - y
    out *= np.float32(1.0 / (k * lr))
    out += ci
    out -= cg
    return out


def scaffold_corrected_gradient(grad: np.ndarray, c_i: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The local SCAFFOLD step direction g − c_i + c (the drift correction the trainer applies)."""
    g = as_vector(grad, what="grad")
    dim = g.shape[0]
    out = g - as_vector(c_i, what="c_i", dim=dim)
    out += as_vector(c, what="c", dim=dim)
    return out


@dataclass(frozen=True)
class ControlProposal:
    """A site's new control variate c_i⁺ and the delta Δc = c_i⁺ − c_i it uploads after Δy."""

    control: np.ndarray
    delta: np.ndarray
    _owner: int
    _generation: int


class ScaffoldClient:
    """One site's SCAFFOLD state: its control variate c_i, which only `commit` moves.

    Two steps, because the server's c is c + (1/N)·Σ Δc_i over the sites it AGGREGATED: a site
    that kept c_i⁺ although its upload was dropped (secure-aggregation dropout) or rejected would
    leave c ≠ mean(c_i) for good. So: `propose` after local training, upload `proposal.delta`,
    and `commit(proposal)` only once the server reports the upload among the aggregate's
    included sites; otherwise drop the proposal and keep c_i.
    """

    def __init__(self, dim: int, *, control: np.ndarray | None = None) -> None:
        dim = _count("dim", dim, low=1)
        self._c = (np.zeros(dim, dtype=np.float32) if control is None
                   else as_vector(control, what="control", dim=dim).astype(np.float32, copy=True))
        self._generation = 0

    @property
    def dim(self) -> int:
        return int(self._c.shape[0])

    @property
    def control_variate(self) -> np.ndarray:
        """c_i (a copy)."""
        return self._c.copy()

    def correction(self, c: np.ndarray) -> np.ndarray:
        """c − c_i: what the local trainer adds to every gradient of the federated parameters."""
        out = as_vector(c, what="c", dim=self.dim).astype(np.float32, copy=True)
        out -= self._c
        return out

    def propose(self, gradient_at_global: np.ndarray) -> ControlProposal:
        """Option I (eq. (4)): c_i⁺ = ∇f_i(x), a stochastic gradient of the local loss at the
        server model x, processed exactly as the trainer processes its gradients (clipping, DP
        noise) but without the correction. Correct for any local optimizer."""
        g = as_vector(gradient_at_global, what="gradient_at_global", dim=self.dim)
        return self._proposal(g.astype(np.float32, copy=True))

    def propose_option_ii(self, c: np.ndarray, x_global: np.ndarray, y_local: np.ndarray,
                          local_steps: int, local_lr: float) -> ControlProposal:
        """Option II (plain SGD at a fixed rate only; see `scaffold_client_control`)."""
        return self._proposal(scaffold_client_control(self._c, c, x_global, y_local, local_steps, local_lr))

    def _proposal(self, new_c: np.ndarray) -> ControlProposal:
        new_c = np.asarray(new_c, dtype=np.float32)
        return ControlProposal(control=new_c, delta=(new_c - self._c).astype(np.float32),
                               _owner=id(self), _generation=self._generation)

    def commit(self, proposal: ControlProposal) -> None:
        """c_i ← c_i⁺ of an accepted upload (once; only on the c_i it was proposed from)."""
        if not isinstance(proposal, ControlProposal) or proposal._owner != id(self):
            raise ProtocolError("scaffold: not a proposal of this site")
        if proposal._generation != self._generation:
            raise ProtocolError("scaffold: stale proposal (already committed, or c_i moved since)")
        self._c = proposal.control.copy()
        self._generation += 1

    def load(self, control: np.ndarray) -> None:
        """Restore c_i from a checkpoint (invalidates outstanding proposals)."""
        self._c = as_vector(control, what="control", dim=self.dim).astype(np.float32, copy=True)
        self._generation += 1


class Scaffold(Strategy):
    """SCAFFOLD server (Karimireddy et al. 2020): x ← x + η_g·mean(Δy), c ← c + (|S|/N)·mean(Δc).

    Needs both means, so use `apply_scaffold`; under secure aggregation the site masks the
    concatenation [Δy, Δc] and the server splits the unmasked sum. The control variate c starts at
    zero: pass `dim` or call `init_control(dim)` before the first round to hand it to sites.

    Sites use option I of eq. (4), c_i⁺ = ∇f_i(x) (`ScaffoldClient.propose`), with every local
    optimizer we ship (Adam, the default; SGD with momentum; an annealed rate). Why: option II,
    (x − y_i)/(K·η_l), is the mean gradient only for plain SGD at a fixed rate; under Adam it
    stalls 0.41 from the optimum of the heterogeneous quadratic in tests/fl/test_fl_scaffold.py
    after 60 rounds, where option I gets within 5e-5 (SGD, momentum, annealing: < 2e-6).
    Option I needs no extra pass in our trainers: their first optimizer step is taken at x, so its
    gradient (after the same clipping, and under trajectory DP the same noise, hence private) is
    the estimate. The fixed point is then exact for any optimizer that does not move at zero
    gradient; Adam keeps its own O(lr) limit cycle around it.

    The invariant c = mean_i(c_i) over all N sites holds only if Δc is averaged uniformly over
    exactly the sites that commit c_i⁺: use uniform weighting, and let a site commit only once its
    upload is in the aggregate (`ScaffoldClient.commit`, `fl.site.commit_accepted`).
    """

    name = "scaffold"

    def __init__(self, server_lr: float = 1.0, *, dim: int | None = None) -> None:
        self.server_lr = _real("server_lr", server_lr, low=0.0, low_open=True)
        self._c: np.ndarray | None = None
        if dim is not None:
            self.init_control(dim)

    def init_control(self, dim: int) -> np.ndarray:
        """Allocate c = 0 of length `dim` (no-op if it already has that length); return c."""
        dim = _count("dim", dim, low=1)
        if self._c is None:
            self._c = np.zeros(dim, dtype=np.float32)
        elif self._c.shape[0] != dim:
            raise VectorError(f"scaffold control variate has dim {self._c.shape[0]}, not {dim}")
        return self._c

    @property
    def control_variate(self) -> np.ndarray:
        """The server control variate c (a read-only view; send a copy to the sites)."""
        if self._c is None:
            raise VectorError("scaffold control variate is unset: pass dim= or call init_control")
        view = self._c.view()
        view.flags.writeable = False
        return view

    def _hyper(self) -> dict[str, float | int | str]:
        return {"server_lr": self.server_lr}

    def _state(self) -> dict[str, Any]:
        return {"control_variate": None if self._c is None else self._c.copy()}

    def _load_state(self, d: Mapping[str, Any]) -> None:
        self._c = _state_array(d, "control_variate")

    def apply(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        raise ConfigError(
            "scaffold needs the mean control-variate delta too: call apply_scaffold(params, "
            "mean_delta_y, mean_delta_c, num_sampled, num_total)"
        )

    def apply_scaffold(
        self,
        params: np.ndarray,
        mean_delta_y: np.ndarray,
        mean_delta_c: np.ndarray,
        num_sampled: int,
        num_total: int,
    ) -> np.ndarray:
        """Return new params and update c in place of the strategy state."""
        x, dy = _check_pair(params, mean_delta_y, "mean_delta_y")
        dc = as_vector(mean_delta_c, what="mean_delta_c", dim=x.shape[0])
        n_s = _count("num_sampled", num_sampled, low=1)
        n = _count("num_total", num_total, low=1)
        if n_s > n:
            raise ConfigError(f"num_sampled ({n_s}) exceeds num_total ({n})")
        c = self.init_control(x.shape[0])
        new_c = dc * np.float32(n_s / n)
        new_c += c
        out = dy * np.float32(self.server_lr)
        out += x
        self._c = new_c
        return out


# --------------------------------------------------------------------------- FedAsync
class Staleness(ABC):
    """Staleness weight s(t − τ) in (0, 1] of Xie et al. 2019 (FedAsync)."""

    name: ClassVar[str]

    def __call__(self, staleness: int) -> float:
        if isinstance(staleness, bool) or not isinstance(staleness, (int, np.integer)):
            raise ProtocolError(f"staleness must be an integer, got {staleness!r}")
        if staleness < 0:
            raise ProtocolError(f"staleness must be >= 0, got {staleness}")
        return self._weight(int(staleness))

    @abstractmethod
    def _weight(self, staleness: int) -> float: ...

    def params(self) -> dict[str, float]:
        return {}


class ConstantStaleness(Staleness):
    """s = 1: every update counts fully, however old."""

    name = "constant"

    def _weight(self, staleness: int) -> float:
        return 1.0


class PolynomialStaleness(Staleness):
    """s = (t − τ + 1)^(−a)."""

    name = "polynomial"

    def __init__(self, a: float = 0.5) -> None:
        self.a = _real("a", a, low=0.0, low_open=True)

    def _weight(self, staleness: int) -> float:
        return float((staleness + 1.0) ** (-self.a))

    def params(self) -> dict[str, float]:
        return {"a": self.a}


class HingeStaleness(Staleness):
    """s = 1 if t − τ ≤ b, else 1 / (a·(t − τ − b) + 1)."""

    name = "hinge"

    def __init__(self, a: float = 10.0, b: int = 4) -> None:
        self.a = _real("a", a, low=0.0, low_open=True)
        self.b = _count("b", b, low=0)

    def _weight(self, staleness: int) -> float:
        if staleness <= self.b:
            return 1.0
        return 1.0 / (self.a * (staleness - self.b) + 1.0)

    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b}


_STALENESS: dict[str, type[Staleness]] = {
    c.name: c for c in (ConstantStaleness, PolynomialStaleness, HingeStaleness)
}


def make_staleness(name: str, *, a: float | None = None, b: int | None = None) -> Staleness:
    """Build a staleness function by name; a/b only where that function has them."""
    if name not in _STALENESS:
        raise ConfigError(f"unknown staleness {name!r} (choose from {', '.join(_STALENESS)})")
    kwargs = {k: v for k, v in (("a", a), ("b", b)) if v is not None}
    allowed = set(inspect.signature(_STALENESS[name].__init__).parameters) - {"self"}
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise ConfigError(f"staleness {name!r} takes no parameter {', '.join(extra)}")
    return _STALENESS[name](**kwargs)


class FedAsync(Strategy):
    """Updates applied on arrival (Xie et al. 2019): x ← (1 − α_t)·x + α_t·x_new, α_t = α·s(t−τ).

    `version` counts applied updates; a site that trained from version τ has staleness
    version − τ.
    """

    name = "fedasync"

    def __init__(
        self,
        alpha: float = 0.6,
        *,
        staleness: str = "constant",
        a: float | None = None,
        b: int | None = None,
    ) -> None:
        self.alpha = _real("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.staleness_fn = make_staleness(staleness, a=a, b=b)
        self.version = 0

    def _hyper(self) -> dict[str, float | int | str]:
        h: dict[str, float | int | str] = {
            "alpha": self.alpha,
            "staleness": self.staleness_fn.name,
        }
        h.update(self.staleness_fn.params())
        return h

    def _state(self) -> dict[str, Any]:
        return {"version": self.version}

    def _load_state(self, d: Mapping[str, Any]) -> None:
        self.version = _count("version", d.get("version"), low=0)

    def mixing_weight(self, staleness: int) -> float:
        """α_t = α·s(staleness)."""
        return self.alpha * self.staleness_fn(staleness)

    def apply_async(
        self,
        params: np.ndarray,
        local_params_or_update: np.ndarray,
        staleness: int,
        *,
        is_update: bool = False,
    ) -> np.ndarray:
        """Mix one arriving site model into the global one and bump `version`.

        With `is_update=True` the site sent Δ instead of its model; x_new is taken as x + Δ (the
        usual approximation: Δ was computed against an older x), i.e. x ← x + α_t·Δ.
        """
        x, z = _check_pair(params, local_params_or_update, "local_params_or_update")
        alpha_t = np.float32(self.mixing_weight(staleness))
        if is_update:
            out = z * alpha_t
            out += x
        else:
            out = x * (np.float32(1.0) - alpha_t)
            out += alpha_t * z
        self.version += 1
        return out

    def apply(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """Synchronous use: a fresh (staleness 0) mean update, x ← x + α·Δ̄."""
        return self.apply_async(params, mean_update, 0, is_update=True)


# --------------------------------------------------------------------------- FedBuff
class FedBuff(FedAvg):
    """Buffered asynchronous aggregation (Nguyen et al. 2022, FedBuff, Algorithm 1).

    Sites train at their own pace from whatever version of the global model they fetched; the
    server aggregates each `buffer_size` arrivals (here: one secure-aggregation round over the K
    sites that reported ready first) and steps x <- x + eta * (1/K) sum_i s(tau_i) Delta_i, where
    tau_i = version now - version site i trained from. Under secure aggregation the server sees
    only the sum, so each SITE scales its own clipped update by s(tau_i) <= 1 before it is
    masked (`staleness_weight`); the sensitivity of a site's contribution stays the clip norm.
    `version` counts the applied aggregates.
    """

    name = "fedbuff"

    def __init__(self, buffer_size: int = 10, *, server_lr: float = 1.0, staleness: str = "polynomial",
                 a: float | None = 0.5, b: int | None = None, max_staleness: int = 0) -> None:
        super().__init__(server_lr)
        self.buffer_size = _count("buffer_size", buffer_size, low=1)
        self.staleness_fn = make_staleness(staleness, a=a if staleness != "constant" else None, b=b)
        self.max_staleness = _count("max_staleness", max_staleness, low=0)
        self.version = 0

    def _hyper(self) -> dict[str, float | int | str]:
        h: dict[str, float | int | str] = {"server_lr": self.server_lr, "buffer_size": self.buffer_size,
                                           "staleness": self.staleness_fn.name, "max_staleness": self.max_staleness}
        h.update(self.staleness_fn.params())
        return h

    def _state(self) -> dict[str, Any]:
        return {"version": self.version}

    def _load_state(self, d: Mapping[str, Any]) -> None:
        self.version = _count("version", d.get("version"), low=0)

    def staleness_weight(self, staleness: int) -> float:
        """s(tau) in (0, 1]; 0 when `max_staleness` > 0 and tau exceeds it (the site sits it out)."""
        if self.max_staleness and staleness > self.max_staleness:
            return 0.0
        return self.staleness_fn(staleness)

    def apply(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        out = super().apply(params, mean_update)
        self.version += 1
        return out


# --------------------------------------------------------------------------- factory
STRATEGIES: dict[str, type[Strategy]] = {
    c.name: c for c in (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, Scaffold, FedAsync, FedBuff)
}


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a strategy from its config name and hyperparameters (unknown ones: ConfigError)."""
    return build_named("strategy", STRATEGIES, name, params)
