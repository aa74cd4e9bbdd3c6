"""Round configuration and the key-derivation constants shared by sites and server (SPEC.md)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secure_fedrl.errors import ConfigError, ProtocolError

from . import primitives as P
from .graph import effective_degree, neighbours, within_hops
from .messages import pack_pairs32

#: Every phase a site uploads in, in order; "graph_reveal" runs under SecAgg+ only
#: (`RoundConfig.phases`): on the complete graph the seed decides nothing.
PHASES = ("advertise_keys", "graph_reveal", "share_keys", "masked_input", "consistency_check", "unmasking")

_CONFIG_TAG = b"secure-fedrl/secagg/v1/config"
_ENC_TAG = b"secure-fedrl/secagg/v1/enc"
_MASK_TAG = b"secure-fedrl/secagg/v1/mask"
_AD_TAG = b"secure-fedrl/secagg/v1/share"
_COMMIT_TAG = b"secure-fedrl/secagg/v1/b-commit"
_CONFIRM_TAG = b"secure-fedrl/secagg/v1/confirm"
_NONCE_TAG = b"secure-fedrl/secagg/v1/graph-nonce"
_SEED_TAG = b"secure-fedrl/secagg/v1/graph-seed"
_VIEW_TAG = b"secure-fedrl/secagg/v1/graph-view"
MAX_ID = 2**32 - 1
_U32 = struct.Struct(">I").pack


@dataclass(frozen=True)
class RoundConfig:
    """Everything all parties must agree on before a round; its digest is bound into every message.

    site_ids: distinct ids in [1, 2^32-1] (also the Shamir x-coordinates); identity_keys: the
    enrolled Ed25519 public keys in the same order; degree None = complete graph (SecAgg), an int
    k = SecAgg+ Harary graph; threshold t: shares needed to reconstruct a secret, at most the
    smallest holder set (a site and its neighbours).
    """

    round_id: int
    site_ids: tuple[int, ...]
    identity_keys: tuple[bytes, ...]
    threshold: int
    dim: int
    bits: int = 32
    degree: int | None = None
    graph_seed: bytes = bytes(32)

    def __post_init__(self) -> None:
        ids = tuple(int(i) for i in self.site_ids)
        object.__setattr__(self, "site_ids", ids)
        object.__setattr__(self, "identity_keys", tuple(bytes(k) for k in self.identity_keys))
        if not 0 <= self.round_id < 2**64:
            raise ConfigError(f"round_id must be in [0, 2^64), got {self.round_id}")
        if len(ids) < 2:
            raise ConfigError(f"secure aggregation needs at least 2 sites, got {len(ids)}")
        if list(ids) != sorted(set(ids)) or ids[0] < 1 or ids[-1] > MAX_ID:
            raise ConfigError("site_ids must be strictly increasing integers in [1, 2^32-1]")
        if len(self.identity_keys) != len(ids) or any(len(k) != 32 for k in self.identity_keys):
            raise ConfigError("identity_keys must hold one 32-byte Ed25519 public key per site")
        try:
            self.identity
        except ValueError:
            raise ConfigError("identity_keys holds an invalid Ed25519 public key") from None
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 32:
            raise ConfigError(f"bits must be an integer in [1, 32], got {self.bits!r}")
        if not isinstance(self.dim, int) or not 0 < self.dim < 2**30:
            raise ConfigError(f"dim must be a positive integer below 2^30, got {self.dim!r}")
        if self.degree is not None and (not isinstance(self.degree, int) or self.degree < 1):
            raise ConfigError(f"neighbors (graph degree) must be a positive integer or None, got {self.degree!r}")
        if len(self.graph_seed) != 32:
            raise ConfigError("graph_seed must be 32 bytes")
        smallest = effective_degree(len(ids), self.degree) + 1
        if not isinstance(self.threshold, int) or not 1 <= self.threshold <= smallest:
            raise ConfigError(
                f"threshold must be an integer in [1, {smallest}] (a site plus its neighbours), got {self.threshold!r}"
            )

    @property
    def n(self) -> int:
        return len(self.site_ids)

    @cached_property
    def digest(self) -> bytes:
        parts = [
            _CONFIG_TAG,
            struct.pack(">QBIII", self.round_id, self.bits, self.dim, self.threshold, self.degree or 0),
            self.graph_seed,
            struct.pack(">I", self.n),
        ]
        for i, k in zip(self.site_ids, self.identity_keys):
            parts.append(struct.pack(">I", i) + k)
        return P.sha256(*parts)

    @cached_property
    def phases(self) -> tuple[str, ...]:
        """The phases of this round: PHASES, without graph_reveal on the complete graph."""
        return tuple(p for p in PHASES if p != "graph_reveal" or not self.complete)

    def seeded(self, view: "tuple[tuple[int, bytes], ...]",
               reveals: "dict[int, bytes] | tuple[tuple[int, bytes], ...]") -> "RoundConfig":
        """The round's configuration once the graph seed is fixed (SecAgg+, SPEC.md section 2):
        graph_seed = H(tag || graph_seed || u32(|view|) || (u32(v) || N_v || r_v) for v in view);
        its digest D' binds the view and the reveals. view: (v, N_v) by v; reveals: {v: r_v} or
        the wire's (v, r_v) pairs by v. ProtocolError unless every v of the view revealed an r_v
        matching N_v (reveals of sites outside the view are ignored: the caller compares sets)."""
        global _last_seeded
        pairs = reveals if isinstance(reveals, tuple) else tuple(sorted(reveals.items()))
        view = tuple(view)
        last = _last_seeded  # one read: another thread may replace it
        if last is not None and last[0] is self and last[1] is view and last[2] is pairs:
            return last[3]  # the very same (immutable) arguments: skip hashing 2n entries for the memo
        out = _seeded(self, view, pairs)
        _last_seeded = (self, view, pairs, out)
        return out

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        return neighbours(self.site_ids, degree=self.degree, graph_seed=self.graph_seed)

    def holders(self, u: int) -> frozenset[int]:
        """The sites holding shares of u's secrets: u and its neighbours."""
        return self._holders[u]

    @cached_property
    def _holders(self) -> dict[int, frozenset[int]]:
        return {u: vs | {u} for u, vs in self.graph.items()}

    @cached_property
    def complete(self) -> bool:
        """True for the complete graph: every holder set is the whole federation."""
        return effective_degree(self.n, self.degree) >= self.n - 1

    def within(self, u: int, hops: int) -> frozenset[int]:
        """Sites at most `hops` edges from u (u included)."""
        if self.complete:
            return frozenset(self.site_ids)
        return within_hops(self.graph, {u}, hops)

    @cached_property
    def identity(self) -> dict[int, "Ed25519PublicKey"]:
        """Parsed identity keys by site id (parsed once: verification is the hot path)."""
        return {i: Ed25519PublicKey.from_public_bytes(k) for i, k in zip(self.site_ids, self.identity_keys)}


def enc_key(cfg: RoundConfig, shared: bytes, sender: int, receiver: int) -> bytes:
    info = _ENC_TAG + struct.pack(">QII", cfg.round_id, sender, receiver)
    return P.hkdf_sha256(shared, salt=cfg.digest, info=info)


def enc_nonce(sender: int, receiver: int) -> bytes:
    return struct.pack(">II", sender, receiver) + bytes(4)


def enc_ad(cfg: RoundConfig, sender: int, receiver: int) -> bytes:
    return _AD_TAG + cfg.digest + struct.pack(">II", sender, receiver)


def mask_seed(cfg: RoundConfig, shared: bytes, u: int, v: int) -> bytes:
    lo, hi = min(u, v), max(u, v)
    info = _MASK_TAG + struct.pack(">QII", cfg.round_id, lo, hi)
    return P.hkdf_sha256(shared, salt=cfg.digest, info=info)


def b_commitment(cfg: RoundConfig, u: int, b_seed: bytes) -> bytes:
    return P.sha256(_COMMIT_TAG, cfg.digest, struct.pack(">I", u), b_seed)


#: (config, view, reveals, seeded config) of the last RoundConfig.seeded call: sites sharing a
#: process get the same view and reveals tuples from the decoder (messages._pairs32), so they
#: find their seeded config by identity, before the memo below hashes n entries per argument.
_last_seeded: "tuple | None" = None


@lru_cache(maxsize=16)
def _seeded(cfg: RoundConfig, view: tuple, reveals: tuple) -> RoundConfig:
    """RoundConfig.seeded, memoised: a pure function of its arguments, so the sites of one view
    that share a process (simulation, benchmarks) build the seeded graph once, as they shared the
    unseeded config before; a deployed site computes it once per round. Errors are not cached."""
    got = dict(reveals)
    for v, commit in view:
        nonce = got.get(v)
        if nonce is None:
            raise ProtocolError(f"site {v} of the view did not reveal its graph nonce")
        if graph_commitment(cfg, v, nonce) != commit:
            raise ProtocolError(f"graph nonce of site {v} does not match its commitment")
    return replace(cfg, graph_seed=mixed_graph_seed(cfg.graph_seed, view, got))


def mixed_graph_seed(graph_seed: bytes, view: "tuple[tuple[int, bytes], ...]", reveals: "dict[int, bytes]") -> bytes:
    """H(tag || graph_seed || u32(|view|) || (u32(v) || N_v || r_v) for v in view, by v): the
    seed of a SecAgg+ graph (RoundConfig.seeded checks the reveals against N_v first)."""
    parts = [_SEED_TAG, graph_seed, struct.pack(">I", len(view))]
    for v, commit in view:
        parts += [struct.pack(">I", v), commit, reveals[v]]
    return P.sha256(*parts)


@lru_cache(maxsize=16)
def view_hash(cfg: RoundConfig, view: "tuple[tuple[int, bytes], ...]") -> bytes:
    """H(tag || D || u32(|view|) || (u32(v) || N_v) for v in view, by v): what a site's GraphReveal
    signs, so its r_v counts only in the view it answered (SPEC.md section 2). Memoised: every
    site of one view hashes the same n entries, already packed for the GraphView."""
    return P.sha256(_VIEW_TAG, cfg.digest, pack_pairs32(tuple(view), "GraphView"))


def graph_commitment(cfg: RoundConfig, u: int, nonce: bytes) -> bytes:
    """N_u = H(tag || D || u32(u) || r_u): binds the nonce to the round before any is revealed."""
    if len(nonce) != 32:
        raise ProtocolError("graph nonce must be 32 bytes")
    return P.sha256(_NONCE_TAG, cfg.digest, struct.pack(">I", u), nonce)


def share_plaintext(sender: int, receiver: int, b_share: bytes, s_share: bytes) -> bytes:
    return struct.pack(">II", sender, receiver) + b_share + s_share


def confirm_key(cfg: RoundConfig, shared: bytes, u: int, v: int) -> bytes:
    """MAC key of the unordered pair {u, v} for pairing attestations and consistency
    confirmations, from their share-encryption agreement X25519(c_u, C_v) (u and v only)."""
    lo, hi = min(u, v), max(u, v)
    info = _CONFIRM_TAG + struct.pack(">QII", cfg.round_id, lo, hi)
    return P.hkdf_sha256(shared, salt=cfg.digest, info=info)


def confirm_tag(key: bytes, core: bytes, receiver: int) -> bytes:
    """HMAC-SHA256(key, H(core) || u32(receiver)): the sender's statement `core` for `receiver`
    (core = an attestation or consistency core, whose header names type, D and sender)."""
    return confirm_tag_of_hash(key, P.sha256(core), receiver)


def confirm_tag_of_hash(key: bytes, core_hash: bytes, receiver: int) -> bytes:
    """confirm_tag(key, core, receiver) given core_hash = H(core): a site tags one core (its
    attestation, its confirmation of U3: n ids) for each of its k neighbours, so hashes it once."""
    return P.hmac_sha256(key, core_hash + _U32(receiver))
