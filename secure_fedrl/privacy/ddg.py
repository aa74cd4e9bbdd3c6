"""The Distributed Discrete Gaussian mechanism (DDG; Kairouz, Liu, Steinke, ICML 2021, "The
Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation",
arXiv:2102.06387) for client-level DP under secure aggregation.

Why this mechanism: secure aggregation sums integers modulo 2^b, so the noise must live on the
integer grid and be added by the sites themselves -- the server then never holds the noiseless
sum. Each site (`DDGEncoder.encode`):

1. clips its flat update to L2 norm <= C,
2. pads it to a power of two d and rotates it, x -> H D x / sqrt(d) (randomized Walsh-Hadamard;
   the signs D come from the round's SHARED rotation seed, so the server can invert the rotation),
   which spreads the mass evenly over the coordinates so that few bits suffice,
3. scales by 1/gamma and rounds each coordinate randomly to a neighbouring integer (unbiased),
   redrawing until the rounded vector's norm is <= the inflated bound Delta2 of the paper
   (conditional randomized rounding, parameter beta; `rounded_l2_norm_bound`),
4. adds its noise share N_Z(0, (sigma/gamma)^2)^d (exact discrete Gaussian sampler) and
5. reduces modulo 2^bits (`to_ring`).

The server (`decode_sum`) lifts the unmasked ring sum to signed integers, multiplies by gamma,
rotates back and unpads: it gets sum_i clip(x_i) + rounding error + discrete Gaussian noise of
total variance ~ n * sigma^2 per coordinate.

Accounting -- the honest choice made here
-----------------------------------------
The privacy of one round is Proposition 14 / Theorem 1 of the paper: the sum of n independent
N_Z(0, s^2)^d shares (s = sigma/gamma >= 1/2), for any integer shift Delta with ||Delta||_2 <= D2
and ||Delta||_1 <= D1, satisfies Renyi DP at every order alpha >= 1 with

    eps(alpha) = min{ alpha/2 * l2^2 + tau*d,
                      alpha/2 * (l2^2 + 2*l1*tau + tau^2*d),
                      alpha/2 * (l2 + sqrt(d)*tau)^2 },
    l2 = D2 / (sqrt(n) s),  l1 = D1 / (sqrt(n) s),  tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k/(k+1)).

* Sensitivity: D2 is the rounding-INFLATED bound (what conditional rounding enforces, not C/gamma)
  and D1 = D2 * min(sqrt(d), D2) (integer vectors have ||v||_1 <= ||v||_2^2), as the paper and its
  authors' reference code do.
* Adjacency (docs/privacy-model.md): ZERO-OUT -- the neighbouring round differs in one site's
  update being replaced by zero while the site still takes part and adds its noise share, so
  the number of shares is the same in both worlds.
* n is m = `min_honest_inputs(t, max_colluding)`: the fewest HONEST shares any sum a malicious
  server (controlling delivery, colluding with up to `max_colluding` sites, who know their own
  shares) can unmask. More honest shares only add independent noise (post-processing), so a
  charge with m holds whatever the survivors; the shares are sized so that m of them carry the
  target noise (`ddg_parameters(expected_sites=m)`).
* Against the server: `rdp` per participation of the site, no subsampling (the server sees who
  took part). Against release-only observers: `release_rdp`, the Bernoulli-mixture bound of
  `accountants.bernoulli_mixture` over the site's secret inclusion (first order in q). The
  generic Poisson bound of Zhu & Wang 2019 is NOT used: it compares worlds that differ by one
  element of the same base mechanism, and here inclusion also adds a noise share.
* `DDGPrivacy.rho` / `effective_noise_multiplier` (z_eff = 1/sqrt(2 rho)) fold the tau terms into
  one zCDP parameter rho = min(second, third term)/alpha, which upper-bounds eps(alpha) at every
  order; z_eff is reported as the ledger's "sigma effective" and used for calibration only.

Modular wrap-around: the modulus is sized with the paper's heuristic (Sec. 4.4 / Eq. 61): k
standard deviations of every coordinate of the sum of `max_sites` sites must fit in
[-2^(bits-1), 2^(bits-1)). Parameters that cannot meet it are refused (ConfigError) when they are
built. At decode time a norm check catches gross overflow (many wrapped coordinates, or a site
encoding with other parameters); a single wrapped coordinate in a large d cannot be told apart
from noise -- the k-sigma sizing is what makes it improbable (~ d * 2 Phi(-k)).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import asdict, dataclass, fields

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secure_fedrl.errors import ConfigError, PrivacyError, UpdateRejected
from secure_fedrl.privacy.clipping import check_clip_norm, clip_l2
from secure_fedrl.privacy.discrete_gaussian import sample_discrete_gaussian
from secure_fedrl.secagg.encoding import centered_lift, to_ring

__all__ = [
    "AggregateOverflow",
    "DDGAttestation",
    "DDGEncoder",
    "DDGParams",
    "DDGPrivacy",
    "attestation_bytes",
    "attestation_for",
    "conditional_round_with_uniforms",
    "sign_attestation",
    "verify_signed_attestation",
    "ddg_parameters",
    "ddg_round_privacy",
    "conditional_round",
    "decode_sum",
    "fwht",
    "rotate",
    "unrotate",
    "rotation_signs",
    "rotation_commitment",
    "rounded_l2_norm_bound",
    "rounded_l1_norm_bound",
    "privacy_from_recorded",
    "recorded_params",
    "verify_attestation",
]

DEFAULT_BETA = math.exp(-0.5)  # the paper's / TFF's default for conditional rounding
_MAX_ROUNDING_TRIES = 10_000
_OVERFLOW_TAIL_T = 50.0  # decode-time norm check fails honest sums with probability <= e^-50
_ROTATION_DOMAIN = b"secure-fedrl/ddg/rotation-signs/v1"
_COMMIT_DOMAIN = b"secure-fedrl/ddg/rotation-commitment/v1"


class AggregateOverflow(UpdateRejected):
    """The decoded aggregate is out of the range honest sites can produce (modular wrap-around)."""


# ----------------------------------------------------------------------------- rotation


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised fast Walsh-Hadamard transform along the last axis (length a power of two).

    Returns a new float64 array (the caller's array is untouched); the butterflies then run in
    place on it, O(d log d) with one half-size temporary per stage.
    """
    y = np.array(x, dtype=np.float64, copy=True)
    d = y.shape[-1]
    if d & (d - 1):
        raise ValueError(f"FWHT length must be a power of two, got {d}")
    lead = y.shape[:-1]
    flat = y.reshape(-1, d)
    h = 1
    while h < d:
        v = flat.reshape(flat.shape[0], d // (2 * h), 2, h)
        a = v[:, :, 0, :]
        b = v[:, :, 1, :]
        tmp = a.copy()
        a += b
        np.subtract(tmp, b, out=b)
        h *= 2
    return flat.reshape(*lead, d)


def _check_seed(seed: bytes) -> bytes:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) < 16:
        raise PrivacyError("rotation seed must be at least 16 bytes (the round's shared seed)")
    return bytes(seed)


def round_rotation_seed(round_id: int, round_seed: int) -> bytes:
    """SPEC 7.1: SHA-256("secure-fedrl/ddg-rotation" || u64(round_id) || u64(round_seed))."""
    return hashlib.sha256(b"secure-fedrl/ddg-rotation" + round_id.to_bytes(8, "big")
                          + round_seed.to_bytes(8, "big")).digest()


def rotation_signs(seed: bytes, d: int) -> np.ndarray:
    """The random diagonal D (+1/-1, float64) derived from the round's shared rotation seed.

    AES-256-CTR keystream (key = SHA-256(domain || seed), zero counter block), bit i of the
    stream (little-endian within each byte) gives sign (-1)^bit: reproducible by any
    implementation, independent of numpy's generators.
    """
    key = hashlib.sha256(_ROTATION_DOMAIN + _check_seed(seed)).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    stream = enc.update(b"\x00" * ((d + 7) // 8)) + enc.finalize()
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), bitorder="little")[:d]
    return 1.0 - 2.0 * bits.astype(np.float64)


def rotation_commitment(seed: bytes) -> str:
    """Hex SHA-256 commitment to the rotation seed: attestations bind the round's rotation
    without carrying the seed itself."""
    return hashlib.sha256(_COMMIT_DOMAIN + _check_seed(seed)).hexdigest()


def rotate(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """x -> H D x / sqrt(d): an orthogonal map, so L2 norms are preserved."""
    return fwht(np.asarray(x, dtype=np.float64) * signs) / math.sqrt(signs.shape[-1])


def unrotate(y: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Inverse of `rotate`: D H y / sqrt(d) (H is symmetric and H H = d I)."""
    return fwht(y) * signs / math.sqrt(signs.shape[-1])


# ----------------------------------------------------------------------------- sensitivity


def rounded_l2_norm_bound(l2_norm: float, beta: float, dim: int) -> float:
    """Kairouz et al. 2021 (Alg. 1 / Thm. 1): the L2 bound that conditional randomized rounding
    of a vector of norm <= `l2_norm` (already scaled by 1/gamma) enforces in dimension `dim`:

        min{ c + sqrt(d),  sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) * (c + sqrt(d)/2)) }   (beta > 0)
    """
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"conditional rounding beta must be in [0, 1), got {beta!r}")
    if dim < 1 or l2_norm <= 0:
        raise ConfigError(f"rounding bound needs dim >= 1 and norm > 0, got {dim!r}, {l2_norm!r}")
    bound_1 = l2_norm + math.sqrt(dim)
    if beta == 0.0:
        return bound_1
    sq = l2_norm**2 + 0.25 * dim + math.sqrt(2.0 * math.log(1.0 / beta)) * (
        l2_norm + 0.5 * math.sqrt(dim)
    )
    return min(bound_1, math.sqrt(sq))


def rounded_l1_norm_bound(l2_bound: float, dim: int) -> float:
    """L1 bound of an integer vector with L2 norm <= l2_bound: min(sqrt(d), l2_bound) * l2_bound."""
    return l2_bound * min(math.sqrt(dim), l2_bound)


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class DDGParams:
    """Everything a site and the server must agree on for one federation's DDG mechanism.

    Build it with `ddg_parameters(...)` (which picks gamma and sigma as the paper does); the
    constructor validates, so an instance is always usable.
    """

    clip_norm: float
    """C: every site's update is clipped to this L2 norm (float domain)."""
    dim: int
    """Length of the flat update vector before padding."""
    bits: int
    """Ring Z_{2^bits} of secure aggregation (<= 32: encoded vectors are uint32)."""
    local_stddev: float
    """sigma: each site's discrete Gaussian share has std sigma/gamma on the integer grid."""
    gamma: float
    """Granularity: one integer step equals gamma in the float domain."""
    expected_sites: int
    """n the noise was planned for (sites per round whose shares reach the sum)."""
    max_sites: int
    """Most sites whose sum the modulus is sized to hold without wrap-around."""
    noise_multiplier: float
    """Planned central noise multiplier z (total std z*C over expected_sites); informational."""
    beta: float = DEFAULT_BETA
    """Conditional rounding parameter: smaller = tighter bound, more redraws."""
    k_stddevs: float = 4.0
    """How many standard deviations of each summed coordinate must fit in the ring."""
    flatness: float = 1.0
    """rho of the paper's Sec. 4.2: how flat the rotated vectors are (1 = sub-Gaussian c/sqrt(d))."""

    def __post_init__(self) -> None:
        check_clip_norm(self.clip_norm)
        if not isinstance(self.dim, (int, np.integer)) or self.dim < 1:
            raise ConfigError(f"DDG dim must be a positive integer, got {self.dim!r}")
        if not isinstance(self.bits, (int, np.integer)) or not 2 <= self.bits <= 32:
            raise ConfigError(f"DDG bits must be an integer in [2, 32], got {self.bits!r}")
        for name in ("local_stddev", "noise_multiplier"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise PrivacyError(f"DDG {name} must be finite and > 0, got {v!r}")
        if not isinstance(self.gamma, (int, float)) or not math.isfinite(self.gamma) or self.gamma <= 0:
            raise ConfigError(f"DDG gamma must be finite and > 0, got {self.gamma!r}")
        for name in ("expected_sites", "max_sites"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"DDG {name} must be a positive integer, got {v!r}")
        if self.max_sites < self.expected_sites:
            raise ConfigError(
                f"DDG max_sites ({self.max_sites}) must be >= expected_sites ({self.expected_sites})"
            )
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"DDG beta must be in [0, 1), got {self.beta!r}")
        if not (self.k_stddevs > 0 and math.isfinite(self.k_stddevs)):
            raise ConfigError(f"DDG k_stddevs must be finite and > 0, got {self.k_stddevs!r}")
        if not (self.flatness > 0 and math.isfinite(self.flatness)):
            raise ConfigError(f"DDG flatness must be finite and > 0, got {self.flatness!r}")
        if self.scaled_stddev < 0.5:
            raise PrivacyError(
                f"DDG per-site noise sigma/gamma = {self.scaled_stddev:.4g} < 1/2: the privacy "
                f"theorem does not apply (use more bits or more noise)"
            )
        self.check_fits(self.max_sites)

    @property
    def padded_dim(self) -> int:
        """d: the rotation length, the next power of two >= dim."""
        return _next_pow2(int(self.dim))

    @property
    def scaled_stddev(self) -> float:
        """s = sigma/gamma, the std of each site's noise share on the integer grid."""
        return self.local_stddev / self.gamma

    @property
    def l2_bound_scaled(self) -> float:
        """Delta2 on the integer grid: the norm conditional rounding enforces (inflated C/gamma)."""
        return rounded_l2_norm_bound(self.clip_norm / self.gamma, self.beta, self.padded_dim)

    @property
    def sensitivity_inflation(self) -> float:
        """gamma * Delta2 / C >= 1: how much rounding inflates the sensitivity."""
        return self.gamma * self.l2_bound_scaled / self.clip_norm

    def coordinate_stddev(self, num_sites: int) -> float:
        """Sub-Gaussian scale of one coordinate of the sum of `num_sites` encodings, in integer
        units: sqrt(rho (n C)^2 / d + n gamma^2 / 4 + n sigma^2) / gamma (paper, Eq. 61)."""
        n = float(num_sites)
        c = self.clip_norm
        var = self.flatness * (n * c) ** 2 / self.padded_dim + n * self.gamma**2 / 4.0
        var += n * self.local_stddev**2
        return math.sqrt(var) / self.gamma

    def check_fits(self, num_sites: int) -> None:
        """ConfigError unless k standard deviations of the sum fit in [-2^(b-1), 2^(b-1))."""
        need = self.k_stddevs * self.coordinate_stddev(num_sites)
        have = float(1 << (int(self.bits) - 1))
        if need > have:
            raise ConfigError(
                f"DDG sum of {num_sites} sites needs +/-{need:.3g} per coordinate but {self.bits} "
                f"bits hold +/-{have:.3g}: raise bits or gamma, or lower max_sites"
            )


def _heuristic_gamma(
    *, clip_norm: float, local_stddev: float, bits: int, num_sites: int, padded_dim: int,
    k_stddevs: float, flatness: float,
) -> float:
    """Smallest gamma with k * coordinate_stddev == 2^(bits-1) (Kairouz et al., Sec. 4.4).

    Solves 2^b gamma = 2k sqrt(rho (nC)^2/d + n gamma^2/4 + n sigma^2) for gamma.
    """
    n = num_sites
    denom = 4.0 ** bits - n * k_stddevs**2
    if denom <= 0:
        raise ConfigError(
            f"DDG: {bits} bits cannot hold the sum of {n} sites at k={k_stddevs:g} standard "
            f"deviations even without signal or noise; raise bits or lower the number of sites"
        )
    numer = 2.0 * k_stddevs * math.sqrt(
        flatness * (n * clip_norm) ** 2 / padded_dim + n * local_stddev**2
    )
    return numer / math.sqrt(denom) * (1.0 + 1e-9)  # stay on the safe side of float rounding


def ddg_parameters(
    *,
    clip_norm: float,
    dim: int,
    expected_sites: int,
    bits: int,
    noise_multiplier: float,
    max_sites: int | None = None,
    beta: float = DEFAULT_BETA,
    k_stddevs: float = 4.0,
    flatness: float = 1.0,
    gamma: float | None = None,
    compensate_rounding: bool = True,
) -> DDGParams:
    """Choose gamma and the per-site sigma as the paper does, for a target noise multiplier z.

    sigma = z C / sqrt(expected_sites), so the expected_sites shares sum to a central std z C.
    gamma (unless given) is the finest grid whose sum over `max_sites` sites fits the ring at
    `k_stddevs` standard deviations. With `compensate_rounding`, sigma is raised until the round's
    effective noise multiplier (rounding inflation and the tau term included) reaches z at
    expected_sites survivors, so that planning with z does not under-count.
    Raises ConfigError / PrivacyError when no such parameters exist.
    """
    c = check_clip_norm(clip_norm)
    if not isinstance(noise_multiplier, (int, float)) or not math.isfinite(noise_multiplier) or (
        noise_multiplier <= 0
    ):
        raise PrivacyError(f"DDG noise multiplier must be finite and > 0, got {noise_multiplier!r}")
    if not isinstance(expected_sites, (int, np.integer)) or expected_sites < 1:
        raise ConfigError(f"DDG expected_sites must be a positive integer, got {expected_sites!r}")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError(f"DDG dim must be a positive integer, got {dim!r}")
    if not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 32:
        raise ConfigError(f"DDG bits must be an integer in [2, 32], got {bits!r}")
    n_max = expected_sites if max_sites is None else max_sites
    if not isinstance(n_max, (int, np.integer)) or n_max < expected_sites:
        raise ConfigError(f"DDG max_sites must be an integer >= expected_sites, got {max_sites!r}")
    d = _next_pow2(int(dim))
    sigma = noise_multiplier * c / math.sqrt(expected_sites)

    def build(sig: float) -> DDGParams:
        g = gamma
        if g is None:
            g = _heuristic_gamma(
                clip_norm=c, local_stddev=sig, bits=int(bits), num_sites=int(n_max),
                padded_dim=d, k_stddevs=k_stddevs, flatness=flatness,
            )
        return DDGParams(
            clip_norm=c, dim=int(dim), bits=int(bits), local_stddev=sig, gamma=g,
            expected_sites=int(expected_sites), max_sites=int(n_max),
            noise_multiplier=float(noise_multiplier), beta=beta, k_stddevs=k_stddevs,
            flatness=flatness,
        )

    params = build(sigma)
    if not compensate_rounding:
        return params
    for _ in range(60):
        z_eff = ddg_round_privacy(params, num_survivors=params.expected_sites).effective_noise_multiplier
        if z_eff >= noise_multiplier:
            return params
        sigma *= max(noise_multiplier / z_eff, 1.0 + 1e-9) * (1.0 + 1e-6)
        params = build(sigma)
    raise ConfigError(
        f"DDG cannot reach noise multiplier {noise_multiplier:g} with {bits} bits for d={d}: the "
        f"rounding inflation grows with the noise; raise bits"
    )


# ----------------------------------------------------------------------------- attestation


@dataclass(frozen=True)
class DDGAttestation:
    """What a site declares it used this round; the server refuses any mismatch."""

    mechanism: str
    clip_norm: float
    local_stddev: float
    gamma: float
    bits: int
    beta: float
    dim: int
    padded_dim: int
    rotation_commitment: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def attestation_for(params: DDGParams, *, rotation_seed: bytes) -> DDGAttestation:
    """The attestation an honest site encoding with `params` and `rotation_seed` reports; the
    server builds it from the federation's config and compares (`verify_attestation`)."""
    if not isinstance(params, DDGParams):
        raise ConfigError(f"attestation_for needs DDGParams, got {type(params).__name__}")
    return DDGAttestation(
        mechanism="ddg", clip_norm=float(params.clip_norm), local_stddev=float(params.local_stddev),
        gamma=float(params.gamma), bits=int(params.bits), beta=float(params.beta),
        dim=int(params.dim), padded_dim=params.padded_dim,
        rotation_commitment=rotation_commitment(rotation_seed),
    )


_ATTEST_DOMAIN = b"secure-fedrl/ddg/attestation/v1"


def attestation_bytes(att: DDGAttestation, *, round_id: int) -> bytes:
    """Canonical encoding of what a site attests (SPEC 7.1): the domain tag, u64(round_id), then
    f64 (IEEE-754 big-endian) clip, local_stddev, gamma, beta, u8 bits, u32 dim, u32 padded_dim,
    and the 32-byte rotation commitment."""
    import struct

    if att.mechanism != "ddg":
        raise PrivacyError(f"attestation mechanism must be 'ddg', got {att.mechanism!r}")
    return (_ATTEST_DOMAIN + struct.pack(">Q", int(round_id))
            + struct.pack(">dddd", att.clip_norm, att.local_stddev, att.gamma, att.beta)
            + struct.pack(">BII", att.bits, att.dim, att.padded_dim) + bytes.fromhex(att.rotation_commitment))


def sign_attestation(att: DDGAttestation, *, round_id: int, key) -> bytes:
    """The signed wire field: Ed25519 (site identity key) over SHA-256(attestation_bytes)."""
    return key.sign(hashlib.sha256(attestation_bytes(att, round_id=round_id)).digest())


def verify_signed_attestation(att: DDGAttestation, signature: bytes, *, round_id: int, public_key) -> None:
    """PrivacyError unless `signature` is the site's signature over this round's attestation."""
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(bytes(signature), hashlib.sha256(attestation_bytes(att, round_id=round_id)).digest())
    except (InvalidSignature, ValueError, TypeError):
        raise PrivacyError("DP attestation signature invalid (wrong site, round or parameters)") from None


def verify_attestation(received: DDGAttestation, expected: DDGAttestation) -> None:
    """PrivacyError naming the first field where a site's attestation differs from the federation's.

    Exact comparison on purpose: both sides derive the values from the same config with the same
    code, and any drift (a smaller sigma, a larger C) would be a silently weaker guarantee.
    """
    if not isinstance(received, DDGAttestation):
        raise PrivacyError(f"site attestation must be a DDGAttestation, got {type(received).__name__}")
    for f in fields(DDGAttestation):
        got, want = getattr(received, f.name), getattr(expected, f.name)
        if got != want:
            raise PrivacyError(
                f"site attestation mismatch on {f.name}: site used {got!r}, federation requires {want!r}"
            )


# ----------------------------------------------------------------------------- site side


class DDGEncoder:
    """Site side of DDG for one round: float update -> uint32 vector mod 2^bits."""

    def __init__(self, params: DDGParams, *, rotation_seed: bytes) -> None:
        if not isinstance(params, DDGParams):
            raise ConfigError(f"DDGEncoder needs DDGParams, got {type(params).__name__}")
        self.params = params
        self._seed = _check_seed(rotation_seed)
        self._signs = rotation_signs(self._seed, params.padded_dim)

    def attestation(self) -> DDGAttestation:
        """The (C, sigma, gamma, bits, beta, dims, rotation-seed commitment) this encoder uses."""
        return attestation_for(self.params, rotation_seed=self._seed)

    def encode(self, update: np.ndarray, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """Clip, rotate, scale, conditionally round, add the noise share, wrap mod 2^bits.

        `rng` drives the rounding and the noise; None (production) seeds one from `secrets`.
        """
        p = self.params
        if rng is None:
            rng = np.random.default_rng(secrets.randbits(128))
        x = np.asarray(update)
        if x.ndim != 1 or x.shape[0] != p.dim:
            raise UpdateRejected(f"update must be a flat vector of length {p.dim}, got shape {x.shape}")
        clipped, _ = clip_l2(x, p.clip_norm)
        padded = np.zeros(p.padded_dim, dtype=np.float64)
        padded[: p.dim] = clipped
        z = rotate(padded, self._signs) / p.gamma
        rounded = conditional_round(z, p.l2_bound_scaled, rng=rng)
        noise = sample_discrete_gaussian(p.scaled_stddev**2, p.padded_dim, rng)
        return to_ring(rounded + noise, p.bits)


def _within(r: np.ndarray, bound: float) -> bool:
    """||r||_2 <= bound, conservative against float64 summation error (SPEC 7.1)."""
    rf = r.astype(np.float64)
    return float(np.dot(rf, rf)) * (1.0 + (r.size + 2) * 2.0**-52) <= bound * bound


def conditional_round_with_uniforms(z: np.ndarray, bound: float, tries) -> tuple[np.ndarray, int]:
    """SPEC 7.1 step 3 with the uniforms given (conformance vectors): try k rounds coordinate i up
    iff tries[k][i] < frac(z_i); the first try within `bound` is returned with its index."""
    z = np.asarray(z, dtype=np.float64)
    floor = np.floor(z)
    frac = z - floor
    base = floor.astype(np.int64)
    for k, u in enumerate(tries):
        r = base + (np.asarray(u, dtype=np.float64) < frac)
        if _within(r, bound):
            return r, k
    raise PrivacyError("conditional rounding: no given try is within the bound")


def conditional_round(z: np.ndarray, bound: float, *, rng: np.random.Generator) -> np.ndarray:
    """Unbiased randomized rounding to Z^d, redrawn until ||result||_2 <= bound (int64 result).

    The norm test is conservative against float64 summation error, so the bound the privacy
    analysis assumes holds exactly for the returned integers.
    """
    z = np.asarray(z, dtype=np.float64)
    floor = np.floor(z)
    frac = z - floor
    base = floor.astype(np.int64)
    for _ in range(_MAX_ROUNDING_TRIES):
        r = base + (rng.random(z.shape) < frac)
        if _within(r, bound):
            return r
    raise PrivacyError(
        f"conditional rounding failed {_MAX_ROUNDING_TRIES} times: the input norm exceeds the bound"
    )


# ----------------------------------------------------------------------------- server side


def decode_sum(
    ring_sum: np.ndarray,
    *,
    num_survivors: int,
    params: DDGParams,
    rotation_seed: bytes,
    check_overflow: bool = True,
) -> np.ndarray:
    """Server side: unmasked ring sum of `num_survivors` encodings -> float64 noisy sum (length dim).

    Lifts to signed integers, multiplies by gamma, rotates back and unpads. ConfigError if more
    sites survived than the ring was sized for; AggregateOverflow if the lifted sum is longer than
    any honest sum can be (except with probability e^-50), i.e. the sum wrapped around.
    """
    p = params
    if not isinstance(num_survivors, (int, np.integer)) or num_survivors < 1:
        raise ConfigError(f"num_survivors must be a positive integer, got {num_survivors!r}")
    if num_survivors > p.max_sites:
        raise ConfigError(
            f"{num_survivors} survivors exceed max_sites={p.max_sites} the {p.bits}-bit ring was "
            f"sized for: the sum may have wrapped around"
        )
    v = np.asarray(ring_sum)
    if v.shape != (p.padded_dim,) or not np.issubdtype(v.dtype, np.integer):
        raise UpdateRejected(
            f"ring sum must be an integer vector of length {p.padded_dim}, got {v.dtype} {v.shape}"
        )
    lifted = centered_lift(v, p.bits).astype(np.float64)
    if check_overflow:
        n = float(num_survivors)
        d = float(p.padded_dim)
        t = _OVERFLOW_TAIL_T
        # ||sum of rounded|| <= n Delta2; noise is (n s^2)-sub-Gaussian per coordinate
        # (CKS 2020), so ||noise||^2 <= n s^2 (d + 2 sqrt(d t) + 2 t) w.p. >= 1 - e^-t.
        noise_bound = math.sqrt(n * p.scaled_stddev**2 * (d + 2.0 * math.sqrt(d * t) + 2.0 * t))
        bound = n * p.l2_bound_scaled + noise_bound
        norm = float(np.linalg.norm(lifted))
        if norm > bound:
            raise AggregateOverflow(
                f"decoded DDG sum has norm {norm:.4g} > {bound:.4g} (integer units) that "
                f"{num_survivors} honest sites can reach: modular wrap-around or mismatched encoding"
            )
    signs = rotation_signs(_check_seed(rotation_seed), p.padded_dim)
    return unrotate(lifted * p.gamma, signs)[: p.dim]


# ----------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class DDGPrivacy:
    """One round of DDG, in terms an RDP/zCDP accountant understands (see module docstring)."""

    num_noise_shares: int
    """n: surviving sites whose noise share is counted (survivors - untrusted)."""
    l2_sensitivity: float
    """Delta2 on the integer grid (rounding-inflated)."""
    l1_sensitivity: float
    """Delta1 on the integer grid."""
    scaled_stddev: float
    """s = sigma/gamma, per-site noise std on the integer grid."""
    dim: int
    """d, the padded (rotated) dimension."""
    tau: float
    """The paper's tau: how far the sum of n discrete Gaussians is from one discrete Gaussian."""
    rho: float
    """zCDP bound: eps(alpha) <= alpha * rho for every alpha >= 1 (no subsampling)."""
    effective_noise_multiplier: float
    """z_eff = 1/sqrt(2 rho): a Gaussian with this multiplier is at least as leaky at q = 1."""

    def _scales(self) -> tuple[float, float]:
        denom = math.sqrt(self.num_noise_shares) * self.scaled_stddev
        return self.l2_sensitivity / denom, self.l1_sensitivity / denom

    def rdp(self, orders: np.ndarray | list[float]) -> np.ndarray:
        """Per-round RDP eps(alpha) without subsampling (Kairouz et al., Prop. 14)."""
        a = np.asarray(orders, dtype=np.float64)
        if np.any(a < 1):
            raise PrivacyError("RDP orders must be >= 1")
        l2, l1 = self._scales()
        d, tau = float(self.dim), self.tau
        t1 = a / 2.0 * l2**2 + tau * d
        t2 = a / 2.0 * (l2**2 + 2.0 * l1 * tau + tau**2 * d)
        t3 = a / 2.0 * (l2 + math.sqrt(d) * tau) ** 2
        return np.minimum(np.minimum(t1, t2), t3)

    def release_rdp(self, orders: np.ndarray | list[float], sample_rate: float) -> np.ndarray:
        """Per-round RDP against release-only observers when the site is included with secret
        probability q (docs/privacy-model.md, Theorem R). Never larger than `rdp`."""
        from secure_fedrl.privacy.accountants import bernoulli_mixture

        a = np.asarray(orders, dtype=np.float64)
        if np.any(a <= 1):
            raise PrivacyError("RDP orders must be > 1 for DDG release accounting")
        if not 0.0 < float(sample_rate) <= 1.0:
            raise PrivacyError(f"sample rate must be in (0, 1], got {sample_rate!r}")
        return bernoulli_mixture(self.rdp(a), a, sample_rate)


def ddg_tau(scaled_stddev: float, num_shares: int) -> float:
    """tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k/(k+1)) (Kairouz et al., Thm. 1)."""
    k = np.arange(1, num_shares, dtype=np.float64)
    return float(10.0 * np.exp(-2.0 * math.pi**2 * scaled_stddev**2 * k / (k + 1.0)).sum())


def recorded_params(params: DDGParams) -> dict[str, float]:
    """The ledger's `params` object for a ddg row (FORMAT.md, "Privacy semantics (v2)")."""
    return {"beta": float(params.beta), "bits": float(params.bits), "gamma": float(params.gamma),
            "l2_bound": float(params.l2_bound_scaled), "local_stddev": float(params.local_stddev),
            "padded_dim": float(params.padded_dim)}


def privacy_from_recorded(*, clip: float, params: dict[str, float], noise_shares: int) -> DDGPrivacy:
    """Rebuild a round's DDGPrivacy from what a ledger row records (replay, audit): recomputes
    Delta_2 from (clip, gamma, beta, d) and refuses a row whose recorded l2_bound is lower."""
    try:
        gamma, s_share = float(params["gamma"]), float(params["local_stddev"])
        beta, d = float(params["beta"]), int(params["padded_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PrivacyError(f"ddg row lacks a parameter: {exc}") from None
    if not isinstance(noise_shares, (int, np.integer)) or noise_shares < 1:
        raise PrivacyError(f"ddg row needs noise_shares >= 1, got {noise_shares!r}")
    l2 = rounded_l2_norm_bound(float(clip) / gamma, beta, d)
    if "l2_bound" in params and float(params["l2_bound"]) < l2 * (1 - 1e-12):
        raise PrivacyError(f"ddg row records l2_bound {params['l2_bound']!r} below the {l2!r} its "
                           f"parameters imply")
    return _privacy(scaled_stddev=s_share / gamma, padded_dim=d, l2=l2, n=int(noise_shares))


def _privacy(*, scaled_stddev: float, padded_dim: int, l2: float, n: int) -> DDGPrivacy:
    s, d = scaled_stddev, padded_dim
    if s < 0.5:
        raise PrivacyError(f"DDG share std sigma/gamma = {s:.4g} < 1/2: the theorem does not apply")
    l1 = rounded_l1_norm_bound(l2, d)
    tau = ddg_tau(s, n)
    denom = math.sqrt(n) * s
    l2s, l1s = l2 / denom, l1 / denom
    rho = 0.5 * min(l2s**2 + 2.0 * l1s * tau + tau**2 * d, (l2s + math.sqrt(d) * tau) ** 2)
    return DDGPrivacy(
        num_noise_shares=n, l2_sensitivity=l2, l1_sensitivity=l1, scaled_stddev=s, dim=d,
        tau=tau, rho=rho, effective_noise_multiplier=1.0 / math.sqrt(2.0 * rho),
    )


def ddg_round_privacy(
    params: DDGParams, *, num_survivors: int, untrusted_sites: int = 0
) -> DDGPrivacy:
    """The privacy of one round with `num_survivors` sites' encodings in the sum.

    `untrusted_sites`: survivors the federation assumes may have omitted their noise (colluding
    with the server); their shares are not counted. PrivacyError if no share is left.
    """
    if not isinstance(params, DDGParams):
        raise ConfigError(f"ddg_round_privacy needs DDGParams, got {type(params).__name__}")
    if not isinstance(num_survivors, (int, np.integer)) or num_survivors < 1:
        raise PrivacyError(f"num_survivors must be a positive integer, got {num_survivors!r}")
    if not isinstance(untrusted_sites, (int, np.integer)) or untrusted_sites < 0:
        raise PrivacyError(f"untrusted_sites must be a non-negative integer, got {untrusted_sites!r}")
    n = int(num_survivors) - int(untrusted_sites)
    if n < 1:
        raise PrivacyError(
            f"no trusted noise share in the sum ({num_survivors} survivors, {untrusted_sites} "
            f"untrusted): the round has no privacy"
        )
    return _privacy(scaled_stddev=params.scaled_stddev, padded_dim=params.padded_dim,
                    l2=params.l2_bound_scaled, n=n)
