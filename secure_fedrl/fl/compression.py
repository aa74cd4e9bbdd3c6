"""Update compression with error feedback (pure numpy; see docs/compression.md for how each
scheme composes with secure aggregation).

One `Compressor` instance per site: it owns that site's error-feedback residual (the part of past
updates not yet transmitted, added back before the next compression, as in Seide et al. 2014 /
Karimireddy et al. 2019 "EF-SGD"), which is checkpointed through `state_dict`.

Two steps, because the residual may only move once the server has accepted the upload into an
aggregate: `propose` compresses and returns the payload with the residual it would leave, and
`commit` keeps that residual. A site whose upload is dropped (secure-aggregation dropout) or
rejected never commits, so its next upload still carries everything it has not delivered.
`compress` = propose + commit, for callers where every upload is accepted.

Error feedback needs a contractive (δ-approximate) compressor, E‖x − C(x)‖² ≤ (1 − δ)‖x‖² with
δ > 0 (Karimireddy et al. 2019); without it the residual can grow geometrically. QSGD is
unbiased but its variance ω‖x‖² exceeds ‖x‖² once d > s², so with error feedback it is sent
scaled by 1/(1 + ω), which is contractive with δ = 1/(1 + ω).

`Compressed.nbytes` is the honest wire size of the payload: indices as uint32, values as float32,
quantisation levels bit-packed to ⌈log2(2s+1)⌉ bits per coordinate, plus the float32 norm. Things
both ends already know (dim, the configured ratio/levels, the round seed) are not counted.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from secure_fedrl.fl.registry import build_named
from secure_fedrl.errors import ConfigError, ProtocolError
from secure_fedrl.fl.updates import VectorError, as_vector

__all__ = [
    "CompressionProposal",
    "Compressed",
    "DenseCompressed",
    "SparseCompressed",
    "QuantizedCompressed",
    "MaskedCompressed",
    "Compressor",
    "NoCompression",
    "TopK",
    "StochasticQuantizer",
    "SharedRandomMask",
    "shared_mask_indices",
    "make_compressor",
    "COMPRESSORS",
]

_MAX_DIM = 2**32 - 1  # indices travel as uint32


# --------------------------------------------------------------------------- payloads
@dataclass(frozen=True)
class Compressed:
    """A compressed update as it would travel; `nbytes` is its wire size."""

    dim: int

    @property
    def nbytes(self) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class DenseCompressed(Compressed):
    values: np.ndarray  # float32, length dim

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


@dataclass(frozen=True)
class SparseCompressed(Compressed):
    indices: np.ndarray  # uint32, sorted, length k
    values: np.ndarray  # float32, length k

    @property
    def nbytes(self) -> int:
        return int(self.indices.nbytes + self.values.nbytes)


@dataclass(frozen=True)
class QuantizedCompressed(Compressed):
    norm: np.float32  # the vector's L2 norm (rounded up to float32)
    levels: int  # s: magnitudes are multiples of norm/s
    packed: np.ndarray  # uint8: (signed level + s) in ⌈log2(2s+1)⌉ bits per coordinate

    @property
    def nbytes(self) -> int:
        return 4 + int(self.packed.nbytes)


@dataclass(frozen=True)
class MaskedCompressed(Compressed):
    """Values at the coordinates `shared_mask_indices(dim, ratio, round_seed)` picks.

    Every site of a round uses the same coordinates, so these value vectors can be masked and
    summed by secure aggregation; a summed MaskedCompressed decompresses to the sum.
    """

    round_seed: int
    values: np.ndarray  # float32, length k

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


@dataclass(frozen=True)
class CompressionProposal:
    """A compressed upload and the residual its site keeps if (and only if) it is accepted."""

    payload: Compressed
    residual: np.ndarray | None  # None without error feedback
    _owner: int
    _generation: int


# --------------------------------------------------------------------------- helpers
def _ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"ratio must be a number, got {value!r}")
    r = float(value)
    if not (math.isfinite(r) and 0.0 < r <= 1.0):
        raise ConfigError(f"ratio must be in (0, 1], got {value!r}")
    return r


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _kept(dim: int, ratio: float) -> int:
    """Number of coordinates kept: ⌈ratio·dim⌉, at least 1."""
    return max(1, min(dim, int(math.ceil(ratio * dim - 1e-9))))


def _bits_for(levels: int) -> int:
    return max(1, math.ceil(math.log2(2 * levels + 1)))


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes < 2^bits into a little-endian bit stream (uint8)."""
    shifts = np.arange(bits, dtype=np.uint32)
    planes = ((codes.astype(np.uint32)[:, None] >> shifts) & np.uint32(1)).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def _unpack(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    flat = np.unpackbits(packed, count=n * bits, bitorder="little").reshape(n, bits)
    weights = np.left_shift(np.uint32(1), np.arange(bits, dtype=np.uint32))
    return flat.astype(np.uint32) @ weights


def shared_mask_indices(dim: int, ratio: float, round_seed: int) -> np.ndarray:
    """The ⌈ratio·dim⌉ sorted coordinates (uint32) every site of the round keeps.

    Derived from the round seed alone (broadcast by the server with the round config), so all
    sites and the server agree without sending indices.
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= _MAX_DIM:
        raise VectorError(f"dim must be an integer in [1, 2^32), got {dim!r}")
    if (
        isinstance(round_seed, bool)
        or not isinstance(round_seed, (int, np.integer))
        or round_seed < 0
    ):
        raise ConfigError(f"round_seed must be an integer >= 0, got {round_seed!r}")
    k = _kept(int(dim), _ratio(ratio))
    rng = np.random.default_rng(int(round_seed))
    idx = rng.choice(int(dim), size=k, replace=False, shuffle=False)
    idx.sort()
    return idx.astype(np.uint32)


# --------------------------------------------------------------------------- compressors
class Compressor(ABC):
    """One site's compressor: `compress` (with error feedback if enabled) and `decompress`."""

    name: ClassVar[str]
    payload_type: ClassVar[type[Compressed]]
    #: True when every site's payload lives in one shared dense index space, so that secure
    #: aggregation can mask and sum it (docs/compression.md); the config should refuse the others
    #: together with secure aggregation.
    secagg_compatible: ClassVar[bool] = False

    def __init__(self, *, error_feedback: bool = False) -> None:
        self.error_feedback = _flag("error_feedback", error_feedback)
        self._residual: np.ndarray | None = None
        self._generation = 0  # bumped by every commit / load: a proposal applies to one state only

    @property
    def residual(self) -> np.ndarray | None:
        """Error-feedback memory e: what was meant to be sent but has not been yet (a copy)."""
        return None if self._residual is None else self._residual.copy()

    def compress(
        self,
        vec: np.ndarray,
        rng: np.random.Generator | None = None,
        *,
        round_seed: int | None = None,
    ) -> Compressed:
        """`propose` then `commit`: for callers where every upload is accepted."""
        proposal = self.propose(vec, rng, round_seed=round_seed)
        self.commit(proposal)
        return proposal.payload

    def propose(
        self,
        vec: np.ndarray,
        rng: np.random.Generator | None = None,
        *,
        round_seed: int | None = None,
    ) -> CompressionProposal:
        """Compress `vec` + residual without touching the residual.

        The proposal carries the payload and the residual (vec + residual) − decompress(payload)
        to keep if `commit` is called, i.e. once the server accepted this upload.
        """
        x = as_vector(vec, what="vec")
        dim = x.shape[0]
        if dim > _MAX_DIM:
            raise VectorError(f"vec has {dim} coordinates, more than uint32 indices can address")
        if self.error_feedback and self._residual is not None:
            if self._residual.shape[0] != dim:
                raise VectorError(
                    f"{self.name} residual has dim {self._residual.shape[0]}, vec has {dim}"
                )
            target = x + self._residual
        else:
            target = x
        payload = self._encode(target, rng, round_seed)
        residual = target - self.decompress(payload, dim) if self.error_feedback else None
        return CompressionProposal(payload=payload, residual=residual, _owner=id(self),
                                   _generation=self._generation)

    def commit(self, proposal: CompressionProposal) -> None:
        """Keep the residual of an accepted upload; a proposal is committed at most once, and only
        on top of the state it was computed from (else ProtocolError: it would double-count)."""
        if not isinstance(proposal, CompressionProposal) or proposal._owner != id(self):
            raise ProtocolError(f"{self.name}: not a proposal of this compressor")
        if proposal._generation != self._generation:
            raise ProtocolError(f"{self.name}: stale proposal (already committed, or the residual "
                                f"moved since it was made)")
        if self.error_feedback:
            self._residual = proposal.residual.copy()
        self._generation += 1

    def decompress(self, payload: Compressed, dim: int) -> np.ndarray:
        """The float32 vector of length `dim` the payload stands for."""
        if not isinstance(payload, self.payload_type):
            raise VectorError(
                f"{self.name} cannot decompress a {type(payload).__name__}, "
                f"expected {self.payload_type.__name__}"
            )
        if payload.dim != dim:
            raise VectorError(f"payload has dim {payload.dim}, expected {dim}")
        return self._decode(payload)

    @abstractmethod
    def _encode(
        self, x: np.ndarray, rng: np.random.Generator | None, round_seed: int | None
    ) -> Compressed: ...

    @abstractmethod
    def _decode(self, payload: Any) -> np.ndarray: ...

    def _hyper(self) -> dict[str, float | int | str]:
        return {"error_feedback": int(self.error_feedback)}

    def state_dict(self) -> dict[str, Any]:
        """Name, hyperparameters and the residual (a copy, or None before the first round)."""
        out: dict[str, Any] = {"compressor": self.name}
        out.update(self._hyper())
        out["residual"] = self.residual
        return out

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore the residual saved by an identically configured compressor."""
        if d.get("compressor") != self.name:
            raise ConfigError(f"state is for compressor {d.get('compressor')!r}, not {self.name!r}")
        for key, mine in self._hyper().items():
            try:
                same = key in d and float(d[key]) == float(mine)
            except (TypeError, ValueError):
                same = False
            if not same:
                raise ConfigError(
                    f"{self.name} state has {key}={d.get(key)!r} but this compressor has {mine!r}"
                )
        self._generation += 1
        r = d.get("residual")
        if r is None:
            self._residual = None
            return
        arr = np.asarray(r)
        if arr.ndim != 1:
            raise ConfigError(f"{self.name} residual must be 1-D, got shape {arr.shape}")
        self._residual = arr.astype(np.float32, copy=True)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({args})"


class NoCompression(Compressor):
    """Dense float32: the baseline, 4 bytes per coordinate."""

    name = "none"
    payload_type = DenseCompressed
    secagg_compatible = True

    def __init__(self) -> None:
        super().__init__(error_feedback=False)

    def _hyper(self) -> dict[str, float | int | str]:
        return {}

    def _encode(
        self, x: np.ndarray, rng: np.random.Generator | None, round_seed: int | None
    ) -> DenseCompressed:
        return DenseCompressed(dim=x.shape[0], values=x.copy())

    def _decode(self, payload: DenseCompressed) -> np.ndarray:
        return payload.values.astype(np.float32, copy=True)


class TopK(Compressor):
    """Keep the ⌈ratio·dim⌉ largest-magnitude coordinates (indices + values).

    Biased on its own; error feedback makes it converge (what is dropped is sent later). Its
    index set is private to the site, so it does NOT compose with secure aggregation.
    """

    name = "topk"
    payload_type = SparseCompressed

    def __init__(self, ratio: float, *, error_feedback: bool = True) -> None:
        super().__init__(error_feedback=error_feedback)
        self.ratio = _ratio(ratio)

    def _hyper(self) -> dict[str, float | int | str]:
        return {"ratio": self.ratio, **super()._hyper()}

    def _encode(
        self, x: np.ndarray, rng: np.random.Generator | None, round_seed: int | None
    ) -> SparseCompressed:
        dim = x.shape[0]
        k = _kept(dim, self.ratio)
        if k == dim:
            idx = np.arange(dim)
        else:
            idx = np.argpartition(np.abs(x), dim - k)[dim - k :]
            idx.sort()
        return SparseCompressed(dim=dim, indices=idx.astype(np.uint32), values=x[idx].copy())

    def _decode(self, payload: SparseCompressed) -> np.ndarray:
        out = np.zeros(payload.dim, dtype=np.float32)
        out[payload.indices.astype(np.int64)] = payload.values
        return out


class StochasticQuantizer(Compressor):
    """QSGD (Alistarh et al. 2017): x_i ≈ ‖x‖₂·sign(x_i)·ξ_i/s, ξ_i ∈ {0..s} by stochastic
    rounding of s·|x_i|/‖x‖₂, so E[Q(x)] = x exactly (unbiased) given the seeded rng.

    Its variance is E‖Q(x) − x‖² ≤ ω‖x‖² with ω = min(d/s², √d/s) (Alistarh et al. Lemma 3.1),
    above 1 once d > s²: then Q is not contractive and error feedback on it diverges (the residual
    grows geometrically). With error feedback the decoded value is therefore Q(x)/(1 + ω), for
    which E‖x − Q(x)/(1+ω)‖² ≤ (1 − 1/(1+ω))‖x‖² (expand the square, use E[Q] = x; Karimireddy et al. 2019): biased, and
    error feedback repays the bias. Both ends know d and s, so nothing extra travels. Without
    error feedback Q(x) is sent unscaled (unbiased).

    The norm is rounded UP to float32 so that s·|x_i|/norm never exceeds s (no clipping bias).
    """

    name = "qsgd"
    payload_type = QuantizedCompressed

    def __init__(self, levels: int, *, error_feedback: bool = True) -> None:
        super().__init__(error_feedback=error_feedback)
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
            raise ConfigError(f"levels must be an integer, got {levels!r}")
        if not 1 <= levels <= 2**15:
            raise ConfigError(f"levels must be in [1, 32768], got {levels}")
        self.levels = int(levels)
        self.bits = _bits_for(self.levels)

    def _hyper(self) -> dict[str, float | int | str]:
        return {"levels": self.levels, **super()._hyper()}

    def omega(self, dim: int) -> float:
        """QSGD's variance bound ω = min(d/s², √d/s) for a d-vector."""
        s = float(self.levels)
        return min(dim / (s * s), math.sqrt(dim) / s)

    def decode_scale(self, dim: int) -> float:
        """1/(1+ω) with error feedback (the contractive version), else 1 (unbiased)."""
        return 1.0 / (1.0 + self.omega(dim)) if self.error_feedback else 1.0

    def _encode(
        self, x: np.ndarray, rng: np.random.Generator | None, round_seed: int | None
    ) -> QuantizedCompressed:
        if not isinstance(rng, np.random.Generator):
            raise ConfigError(
                f"qsgd needs a numpy.random.Generator for stochastic rounding, got {rng!r}"
            )
        dim = x.shape[0]
        s = self.levels
        x64 = x.astype(np.float64)
        norm64 = float(np.linalg.norm(x64))
        norm = np.float32(norm64)
        if float(norm) < norm64:
            norm = np.nextafter(norm, np.float32(np.inf))
        if norm == 0:
            signed = np.zeros(dim, dtype=np.int64)
        else:
            r = np.abs(x64) * (s / float(norm))
            low = np.floor(r)
            level = low + (rng.random(dim) < (r - low))
            np.minimum(level, s, out=level)
            signed = np.where(x64 < 0, -level, level).astype(np.int64)
        packed = _pack((signed + s).astype(np.uint32), self.bits)
        return QuantizedCompressed(dim=dim, norm=norm, levels=s, packed=packed)

    def _decode(self, payload: QuantizedCompressed) -> np.ndarray:
        if payload.levels != self.levels:
            raise VectorError(f"payload has {payload.levels} levels, this quantizer {self.levels}")
        codes = _unpack(payload.packed, payload.dim, self.bits).astype(np.int64) - self.levels
        step = float(payload.norm) / self.levels * self.decode_scale(payload.dim)
        return (codes * step).astype(np.float32)


class SharedRandomMask(Compressor):
    """Keep the coordinates a shared round seed picks (same for every site: secagg-compatible).

    Without error feedback the kept values are scaled by dim/k so the estimate is unbiased over
    the mask (rand-k); with error feedback they are sent as is and the rest waits in the residual.
    """

    name = "shared_mask"
    payload_type = MaskedCompressed
    secagg_compatible = True

    def __init__(self, ratio: float, *, error_feedback: bool = True) -> None:
        super().__init__(error_feedback=error_feedback)
        self.ratio = _ratio(ratio)

    def _hyper(self) -> dict[str, float | int | str]:
        return {"ratio": self.ratio, **super()._hyper()}

    def _scale(self, dim: int, k: int) -> np.float32:
        return np.float32(1.0) if self.error_feedback else np.float32(dim / k)

    def _encode(
        self, x: np.ndarray, rng: np.random.Generator | None, round_seed: int | None
    ) -> MaskedCompressed:
        if round_seed is None:
            raise ConfigError("shared_mask needs the round's shared round_seed")
        dim = x.shape[0]
        idx = shared_mask_indices(dim, self.ratio, round_seed)
        vals = x[idx] * self._scale(dim, idx.shape[0])
        return MaskedCompressed(dim=dim, round_seed=int(round_seed), values=vals)

    def _decode(self, payload: MaskedCompressed) -> np.ndarray:
        idx = shared_mask_indices(payload.dim, self.ratio, payload.round_seed)
        if payload.values.shape != idx.shape:
            raise VectorError(
                f"payload has {payload.values.shape[0]} values, the mask keeps {idx.shape[0]}"
            )
        out = np.zeros(payload.dim, dtype=np.float32)
        out[idx.astype(np.int64)] = payload.values
        return out


COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c for c in (NoCompression, TopK, StochasticQuantizer, SharedRandomMask)
}


def make_compressor(name: str, **params: Any) -> Compressor:
    """Build one site's compressor from its config name (none, topk, qsgd, shared_mask)."""
    return build_named("compressor", COMPRESSORS, name, params)
