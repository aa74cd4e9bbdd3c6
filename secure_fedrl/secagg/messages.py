"""Protocol messages and their canonical byte encoding (SPEC.md section "Messages").

Every message starts with the header  "SFSA" | version u8 | type u8 | config digest (32) |
party u32  (all integers big-endian except vector words, which are little-endian uint32). For site
messages `party` is the sender and the message ends with a 64-byte Ed25519 signature over all
preceding bytes; for server messages `party` is the receiver and there is no signature (the server
is not trusted: it only relays site-signed or GCM-authenticated content).

Decoding is strict: trailing bytes, truncation, unknown types and unsorted/duplicate lists raise
ProtocolError, so a message has exactly one valid encoding.
"""

from __future__ import annotations

import operator
import struct
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fedrl.errors import ProtocolError

from . import primitives as P
from .shamir import SHARE_BYTES

MAGIC = b"SFSA"
VERSION = 1
HEADER = struct.Struct(">4sBB32sI")
SERVER_PARTY_NONE = 0

T_ADVERTISE, T_SHARE_KEYS, T_MASKED_INPUT, T_CONSISTENCY, T_UNMASK = 0x01, 0x02, 0x03, 0x04, 0x05
T_GRAPH_REVEAL = 0x06
T_KEYS_BUNDLE, T_CT_BUNDLE, T_CONSISTENCY_REQ, T_UNMASK_REQ = 0x81, 0x82, 0x83, 0x84
T_GRAPH_VIEW = 0x85
NONCE_BYTES = 32

KIND_B, KIND_S = 0, 1
TAG_BYTES = 32


_U8, _U32, _U32X2 = struct.Struct(">B"), struct.Struct(">I"), struct.Struct(">II")


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"{self.what}: truncated message")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(out)

    def unpack(self, layout: struct.Struct) -> tuple:
        """The next layout.size bytes as `layout` fields: what one take() per field would read,
        with the same error when truncated (one call instead of one per field)."""
        pos = self.pos
        if pos + layout.size > len(self.data):
            raise ProtocolError(f"{self.what}: truncated message")
        self.pos = pos + layout.size
        return layout.unpack_from(self.data, pos)

    def entries(self, layout: struct.Struct) -> "list[tuple] | None":
        """u32(count), then, if all count entries of the fixed `layout` are there, them as tuples
        (one C call); None if they are not (the caller reads entry by entry for the exact error)."""
        count = self.u32()
        if layout.size * count > len(self.data) - self.pos:
            return None
        pos, self.pos = self.pos, self.pos + layout.size * count
        return list(layout.iter_unpack(self.data[pos : self.pos]))

    def fixed_entries(self, layout: struct.Struct) -> list[tuple]:
        """`entries` for a list whose only in-loop error is truncation: raised for the whole list."""
        out = self.entries(layout)
        if out is None:
            raise ProtocolError(f"{self.what}: truncated message")
        return out

    def view(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"{self.what}: truncated message")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.unpack(_U8)[0]

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def ids(self) -> tuple[int, ...]:
        count = self.u32()
        if 4 * count > len(self.data) - self.pos:
            raise ProtocolError(f"{self.what}: truncated id list")
        ids = struct.unpack_from(f">{count}I", self.data, self.pos)
        self.pos += 4 * count
        _check_sorted(ids, self.what)
        return ids

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


def _check_sorted(ids: tuple[int, ...] | list[int], what: str) -> None:
    if any(map(operator.ge, ids, ids[1:])):  # C-level scan: lists of n ids arrive at every site
        b = next(b for a, b in zip(ids, ids[1:]) if a >= b)
        raise ProtocolError(f"{what}: id list not strictly increasing (duplicate id {b}?)")


def _ids(ids: tuple[int, ...]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *ids)


@lru_cache(maxsize=8)
def _survivor_ids(survivors: tuple[int, ...]) -> bytes:
    """ids(U3), memoised: every confirmation a site checks or makes covers the same U3 (n ids)."""
    return _ids(survivors)


def _header(mtype: int, digest: bytes, party: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, mtype, digest, party)


def _read_header(r: _Reader, expected: int) -> tuple[bytes, int]:
    magic, version, mtype, digest, party = r.unpack(HEADER)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError(f"{r.what}: bad magic or version")
    if mtype != expected:
        raise ProtocolError(f"{r.what}: expected message type 0x{expected:02x}, got 0x{mtype:02x}")
    return digest, party


def message_type(data: bytes) -> int:
    """The type byte of an encoded message (ProtocolError if the header is malformed)."""
    if len(data) < HEADER.size or data[:4] != MAGIC or data[4] != VERSION:
        raise ProtocolError("message: bad magic, version or length")
    return data[5]


# ============================================================================ site messages


@dataclass(frozen=True)
class _Signed:
    """Base of site-signed messages: wire = body || Ed25519(sk, SHA-256(body)).

    Signing the 32-byte digest rather than the body itself: Ed25519 hashes its message twice with
    SHA-512, which costs ~10x more than one SHA-256 pass over a multi-megabyte masked vector.
    """

    TYPE: ClassVar[int] = 0
    NAME: ClassVar[str] = "message"
    config_digest: bytes
    sender: int

    def body(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _parts(self) -> list:
        """The body as a list of buffers (lets large messages hash and encode without extra copies)."""
        return [self.body()]

    def digest(self) -> bytes:
        """SHA-256 of the body: what the signature covers."""
        return P.sha256(*self._parts())

    def signed(self, sk: Ed25519PrivateKey):
        return replace(self, signature=P.sign(sk, self.digest()))

    def verify(self, public_key) -> None:
        P.verify(public_key, self.signature, self.digest(), what=f"{self.NAME} from site {self.sender}")

    def encode(self) -> bytes:
        if len(self.signature) != P.SIG_BYTES:
            raise ProtocolError(f"{self.NAME}: message is not signed")
        return b"".join([*self._parts(), self.signature])


_ADVERT_FIELDS = struct.Struct(">32s32s32s64s")  # c_pk, s_pk, graph_commit, signature


@dataclass(frozen=True)
class AdvertiseKeys(_Signed):
    """The two X25519 public keys, plus `graph_commit` = N_u, the commitment to the site's
    graph nonce r_u (SPEC.md section 2): revealed in GraphReveal under SecAgg+, never revealed
    on the complete graph (whose seed is irrelevant)."""

    TYPE: ClassVar[int] = T_ADVERTISE
    NAME: ClassVar[str] = "AdvertiseKeys"
    c_pk: bytes = b""
    s_pk: bytes = b""
    signature: bytes = b""
    graph_commit: bytes = bytes(32)

    def body(self) -> bytes:
        if len(self.graph_commit) != 32:
            raise ProtocolError(f"{self.NAME}: graph commitment must be 32 bytes")
        return _header(self.TYPE, self.config_digest, self.sender) + self.c_pk + self.s_pk + self.graph_commit

    @classmethod
    def decode(cls, data: bytes) -> "AdvertiseKeys":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        c_pk, s_pk, commit, sig = r.unpack(_ADVERT_FIELDS)
        r.end()
        return cls(digest, sender, c_pk, s_pk, sig, commit)


_REVEAL_FIELDS = struct.Struct(f">{NONCE_BYTES}s32s64s")  # nonce, view_hash, signature


@dataclass(frozen=True)
class GraphReveal(_Signed):
    """SecAgg+ only: the site's graph nonce r_u, sent once it holds its view (SPEC.md section 4,
    phase 0b), and `view_hash` = H(view) of that view: the signature binds r_u to the one view
    the site answered, so the server cannot count it in a view shown to other sites. The server
    checks r_u against N_u of the site's advert and the hash against the view it sent."""

    TYPE: ClassVar[int] = T_GRAPH_REVEAL
    NAME: ClassVar[str] = "GraphReveal"
    nonce: bytes = b""
    signature: bytes = b""
    view_hash: bytes = bytes(32)

    def body(self) -> bytes:
        if len(self.nonce) != NONCE_BYTES:
            raise ProtocolError(f"{self.NAME}: nonce must be {NONCE_BYTES} bytes")
        if len(self.view_hash) != 32:
            raise ProtocolError(f"{self.NAME}: view hash must be 32 bytes")
        return _header(self.TYPE, self.config_digest, self.sender) + self.nonce + self.view_hash

    @classmethod
    def decode(cls, data: bytes) -> "GraphReveal":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        nonce, view_hash, sig = r.unpack(_REVEAL_FIELDS)
        r.end()
        return cls(digest, sender, nonce, sig, view_hash)


@dataclass(frozen=True)
class ShareKeys(_Signed):
    """Encrypted shares for each holder, sorted by receiver, plus a commitment to b_u."""

    TYPE: ClassVar[int] = T_SHARE_KEYS
    NAME: ClassVar[str] = "ShareKeys"
    b_commitment: bytes = b""
    ciphertexts: tuple[tuple[int, bytes], ...] = ()
    signature: bytes = b""

    def body(self) -> bytes:
        parts = [_header(self.TYPE, self.config_digest, self.sender), self.b_commitment]
        parts.append(struct.pack(">I", len(self.ciphertexts)))
        for receiver, ct in self.ciphertexts:
            parts.append(struct.pack(">II", receiver, len(ct)))
            parts.append(ct)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "ShareKeys":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        commit = r.take(32)
        cts = []
        for _ in range(r.u32()):
            receiver, size = r.unpack(_U32X2)
            cts.append((receiver, r.take(size)))
        _check_sorted([c[0] for c in cts], cls.NAME)
        sig = r.take(64)
        r.end()
        return cls(digest, sender, commit, tuple(cts), sig)


@dataclass(frozen=True)
class MaskedInput(_Signed):
    """y_u plus the pairing attestation: M(u), the sorted peers u paired (and masked) with, and
    for each v in M(u) an HMAC tag (in M's order) of `attestation_core()` under the pair's
    confirmation key, which the server forwards to v in phase 4 (SPEC.md section 4).

    With M(u) signed the server can refuse a pairing that differs from the ciphertexts it
    delivered; with the tags each holder v checks M(u) without the vector or an Ed25519 check.

    `dp_attestation` is the site's Ed25519 signature over its DDG attestation (SPEC.md section
    7.1), 64 bytes, or empty without distributed DP. It sits right after ids(M(u)) with a u8
    length prefix (0 or 64, anything else is a ProtocolError), inside the attestation core: the
    pairing tags and the message signature both cover it.
    """

    TYPE: ClassVar[int] = T_MASKED_INPUT
    NAME: ClassVar[str] = "MaskedInput"
    paired: tuple[int, ...] = ()
    tags: tuple[bytes, ...] = ()
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    signature: bytes = b""
    dp_attestation: bytes = b""

    def attestation_core(self) -> bytes:
        return attestation_core(self.config_digest, self.sender, self.paired, self.dp_attestation)

    def _parts(self) -> list:
        if len(self.tags) != len(self.paired):
            raise ProtocolError(f"{self.NAME}: one tag per paired site is required")
        v = np.ascontiguousarray(self.vector, dtype="<u4")
        head = self.attestation_core() + b"".join(self.tags) + struct.pack(">I", v.size)
        return [head, memoryview(v).cast("B")]

    def body(self) -> bytes:
        return b"".join(self._parts())

    @classmethod
    def decode(cls, data: bytes) -> "MaskedInput":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        paired = r.ids()
        dp = _read_dp_attestation(r)
        tags = r.take(TAG_BYTES * len(paired))  # one read; truncated exactly when a tag-by-tag read is
        tags = tuple(tags[i : i + TAG_BYTES] for i in range(0, len(tags), TAG_BYTES))
        dim = r.u32()
        if 4 * dim > len(data) - r.pos:
            raise ProtocolError(f"{cls.NAME}: truncated message")
        vec = np.frombuffer(r.view(4 * dim), dtype="<u4")  # read-only view of the wire, no copy
        sig = r.take(64)
        r.end()
        return cls(digest, sender, paired, tags, vec, sig, dp)


#: Lengths a DP attestation field may have: none (no distributed DP) or one Ed25519 signature.
DP_ATTESTATION_LENGTHS = (0, P.SIG_BYTES)


def _dp_field(dp_attestation: bytes, what: str = "MaskedInput") -> bytes:
    """`u8(len) || dp_attestation`, len 0 or 64."""
    dp = bytes(dp_attestation)
    if len(dp) not in DP_ATTESTATION_LENGTHS:
        raise ProtocolError(f"{what}: DP attestation must be 0 or {P.SIG_BYTES} bytes, got {len(dp)}")
    return bytes([len(dp)]) + dp


def _read_dp_attestation(r: _Reader) -> bytes:
    n = r.u8()
    if n not in DP_ATTESTATION_LENGTHS:
        raise ProtocolError(f"{r.what}: DP attestation length {n}, must be 0 or {P.SIG_BYTES}")
    return r.take(n)


def attestation_core(digest: bytes, sender: int, paired: tuple[int, ...], dp_attestation: bytes = b"") -> bytes:
    """`header(MaskedInput, D, u) || ids(M(u)) || u8(len) || dp_attestation`: what a
    pairing-attestation tag authenticates (the DP attestation field is empty without DDG)."""
    return _header(T_MASKED_INPUT, digest, sender) + _ids(tuple(paired)) + _dp_field(dp_attestation)


def consistency_core(digest: bytes, sender: int, survivors: tuple[int, ...]) -> bytes:
    """`header(ConsistencySig, D, signer) || ids(U3)`: what a confirmation signs / tags."""
    return consistency_core_ids(digest, sender, _survivor_ids(tuple(survivors)))


def consistency_core_ids(digest: bytes, sender: int, survivor_ids: bytes) -> bytes:
    """`consistency_core` with ids(U3) already encoded (`encode_ids`): a site checks one core
    per signer, all over the same U3 (n ids), so it encodes U3 once instead of once per signer."""
    return _header(T_CONSISTENCY, digest, sender) + survivor_ids


def encode_ids(ids: tuple[int, ...]) -> bytes:
    """`u32(count) || u32(id)*`, the wire encoding of an id list (unchecked: callers pass sorted ids)."""
    return _ids(tuple(ids))


@dataclass(frozen=True)
class ConsistencySig(_Signed):
    """A site's confirmation of the survivor set U3 the server announced to it.

    The Ed25519 signature covers only the core `header || ids(U3)` (what any holder, neighbour or
    not, can rebuild and check); `tags` are HMACs of the same core for each neighbour r, under a
    key only this site and r know (from their X25519 share-encryption agreement), so neighbours
    check a confirmation with one HMAC instead of an Ed25519 verification.
    """

    TYPE: ClassVar[int] = T_CONSISTENCY
    NAME: ClassVar[str] = "ConsistencySig"
    survivors: tuple[int, ...] = ()
    tags: tuple[tuple[int, bytes], ...] = ()
    signature: bytes = b""

    def core(self) -> bytes:
        return consistency_core(self.config_digest, self.sender, self.survivors)

    def digest(self) -> bytes:
        return P.sha256(self.core())

    def body(self) -> bytes:
        parts = [self.core(), struct.pack(">I", len(self.tags))]
        for receiver, tag in self.tags:
            parts.append(struct.pack(">I", receiver) + tag)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "ConsistencySig":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        ids = r.ids()
        tags = r.fixed_entries(_ID_TAG)
        _check_sorted([t[0] for t in tags], cls.NAME)
        sig = r.take(64)
        r.end()
        return cls(digest, sender, ids, tuple(tags), sig)


_ID_TAG = struct.Struct(f">I{TAG_BYTES}s")  # (signer or receiver, HMAC tag) list entry
_ID_SIG = struct.Struct(f">I{P.SIG_BYTES}s")  # (signer, Ed25519 signature) list entry
_SHARE_ENTRY = struct.Struct(f">IB{SHARE_BYTES}s")  # (peer, kind, share)


def _share_kind(kind: int, what: str) -> int:
    if kind not in (KIND_B, KIND_S):
        raise ProtocolError(f"{what}: unknown share kind {kind}")
    return kind


@dataclass(frozen=True)
class UnmaskResponse(_Signed):
    """Revealed shares, sorted by peer: kind 0 = share of b_peer, kind 1 = share of s_peer."""

    TYPE: ClassVar[int] = T_UNMASK
    NAME: ClassVar[str] = "UnmaskResponse"
    shares: tuple[tuple[int, int, bytes], ...] = ()
    signature: bytes = b""

    def body(self) -> bytes:
        parts = [_header(self.TYPE, self.config_digest, self.sender), struct.pack(">I", len(self.shares))]
        for peer, kind, share in self.shares:
            parts.append(struct.pack(">IB", peer, kind) + share)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "UnmaskResponse":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        start = r.pos
        shares = r.entries(_SHARE_ENTRY)
        if shares is None:  # truncated: read entry by entry, for the error that loop meets first
            r.pos, shares = start, []
            for _ in range(r.u32()):
                peer, kind = r.u32(), _share_kind(r.u8(), cls.NAME)
                shares.append((peer, kind, r.take(SHARE_BYTES)))
        else:  # all there: only a share kind can be wrong, checked in the same order
            for _, kind, _ in shares:
                _share_kind(kind, cls.NAME)
        _check_sorted([s[0] for s in shares], cls.NAME)
        sig = r.take(64)
        r.end()
        return cls(digest, sender, tuple(shares), sig)


# ============================================================================ server messages


@lru_cache(maxsize=8)
def pack_pairs32(items: tuple[tuple[int, bytes], ...], what: str) -> bytes:
    """`u32(count) || (u32(id) || 32 bytes)*`, ids strictly increasing. Memoised: the server sends
    one view (and one list of reveals) to every site, n entries each, so it is encoded once."""
    _check_sorted([i for i, _ in items], what)
    if any(len(b) != 32 for _, b in items):
        raise ProtocolError(f"{what}: every entry must carry 32 bytes")
    return struct.pack(f">I{'I32s' * len(items)}", len(items), *(x for item in items for x in item))


# Lists longer than this (2.4 MB) are decoded without the memo: a server could otherwise make a site
# keep up to 8 refused, attacker-sized lists (up to the transport's payload limit each) in memory.
_PAIRS32_MEMO_MAX = 1 << 16


def _read_pairs32(r: _Reader) -> tuple[tuple[int, bytes], ...]:
    count = r.u32()
    if 36 * count > len(r.data) - r.pos:
        raise ProtocolError(f"{r.what}: truncated list")
    raw = r.take(36 * count)
    if count > _PAIRS32_MEMO_MAX:  # never memoise what no real round sends: a refused list would stay
        return _pairs32.__wrapped__(raw, r.what)
    return _pairs32(raw, r.what)


_PAIR32 = struct.Struct(">I32s")


@lru_cache(maxsize=8)
def _pairs32(raw: bytes, what: str) -> tuple[tuple[int, bytes], ...]:
    """The (u32 id, 32 bytes) entries of `raw`, ids strictly increasing. Memoised on the bytes (a
    pure function of them; errors are not cached): the server sends one view and one list of
    reveals to every site, n entries each, so the sites that share a process (simulation,
    benchmarks) decode each once and hold one tuple, which the memos keyed on it (view_hash,
    RoundConfig.seeded) then match by identity instead of comparing n entries per site."""
    items = tuple(_PAIR32.iter_unpack(raw))
    _check_sorted([i for i, _ in items], what)
    return items


@dataclass(frozen=True)
class GraphView:
    """SecAgg+ only: the receiver's view, (v, N_v) for every advert the server accepted, by v.
    Sent under the round's digest D; the graph seed is fixed by the view and the reveals."""

    TYPE: ClassVar[int] = T_GRAPH_VIEW
    NAME: ClassVar[str] = "GraphView"
    config_digest: bytes
    receiver: int
    commits: tuple[tuple[int, bytes], ...]

    def encode(self) -> bytes:
        return _header(self.TYPE, self.config_digest, self.receiver) + pack_pairs32(self.commits, self.NAME)

    @classmethod
    def decode(cls, data: bytes) -> "GraphView":
        r = _Reader(data, cls.NAME)
        digest, receiver = _read_header(r, cls.TYPE)
        commits = _read_pairs32(r)
        r.end()
        return cls(digest, receiver, commits)


@dataclass(frozen=True)
class KeysBundle:
    """The AdvertiseKeys messages (wire bytes, sorted by sender) of the receiver's live holders,
    and under SecAgg+ the graph reveals (v, r_v) of the receiver's whole view, by v (empty on the
    complete graph). Its header carries the seeded digest D' (SPEC.md section 2)."""

    TYPE: ClassVar[int] = T_KEYS_BUNDLE
    NAME: ClassVar[str] = "KeysBundle"
    config_digest: bytes
    receiver: int
    adverts: tuple[bytes, ...]
    reveals: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        parts = [_header(self.TYPE, self.config_digest, self.receiver), struct.pack(">I", len(self.adverts))]
        for a in self.adverts:
            parts.append(struct.pack(">I", len(a)) + a)
        parts.append(pack_pairs32(self.reveals, self.NAME))
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "KeysBundle":
        r = _Reader(data, cls.NAME)
        digest, receiver = _read_header(r, cls.TYPE)
        adverts = tuple(r.take(r.u32()) for _ in range(r.u32()))
        reveals = _read_pairs32(r)
        r.end()
        return cls(digest, receiver, adverts, reveals)


@dataclass(frozen=True)
class CiphertextBundle:
    """Ciphertexts addressed to the receiver, sorted by sender."""

    TYPE: ClassVar[int] = T_CT_BUNDLE
    NAME: ClassVar[str] = "CiphertextBundle"
    config_digest: bytes
    receiver: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def encode(self) -> bytes:
        parts = [_header(self.TYPE, self.config_digest, self.receiver), struct.pack(">I", len(self.ciphertexts))]
        for sender, ct in self.ciphertexts:
            parts.append(struct.pack(">II", sender, len(ct)) + ct)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "CiphertextBundle":
        r = _Reader(data, cls.NAME)
        digest, receiver = _read_header(r, cls.TYPE)
        cts = []
        for _ in range(r.u32()):
            sender, size = r.unpack(_U32X2)
            cts.append((sender, r.take(size)))
        r.end()
        return cls(digest, receiver, tuple(cts))


@dataclass(frozen=True)
class ConsistencyRequest:
    """The survivor set U3 (sites whose masked input the server accepted)."""

    TYPE: ClassVar[int] = T_CONSISTENCY_REQ
    NAME: ClassVar[str] = "ConsistencyRequest"
    config_digest: bytes
    receiver: int
    survivors: tuple[int, ...]

    def encode(self) -> bytes:
        return _header(self.TYPE, self.config_digest, self.receiver) + _ids(self.survivors)

    @classmethod
    def decode(cls, data: bytes) -> "ConsistencyRequest":
        r = _Reader(data, cls.NAME)
        digest, receiver = _read_header(r, cls.TYPE)
        ids = r.ids()
        r.end()
        return cls(digest, receiver, ids)


@dataclass(frozen=True)
class UnmaskRequest:
    """U3 again plus what the receiver r checks before revealing (SPEC.md section 4, phase 4):
    `tags` (signer, HMAC confirmation of U3 for r) from r's neighbours and `signatures` (signer,
    Ed25519 signature of the ConsistencySig core) from sites further away, both by signer; and
    `attestations` (u, M(u), u's attestation tag for r) of every u in U3 that paired with r, by u;
    `dp_attestations` (u, the DP attestation field of u's MaskedInput) for those u whose field is
    not empty (r rebuilds u's attestation core with it). On the wire each attestation entry is
    `u32(u) || ids(M(u)) || u8(len) || dp_attestation || tag`."""

    TYPE: ClassVar[int] = T_UNMASK_REQ
    NAME: ClassVar[str] = "UnmaskRequest"
    config_digest: bytes
    receiver: int
    survivors: tuple[int, ...]
    tags: tuple[tuple[int, bytes], ...] = ()
    signatures: tuple[tuple[int, bytes], ...] = ()
    attestations: tuple[tuple[int, tuple[int, ...], bytes], ...] = ()
    dp_attestations: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        parts = [_header(self.TYPE, self.config_digest, self.receiver), _ids(self.survivors)]
        parts.append(struct.pack(">I", len(self.tags)))
        for signer, tag in self.tags:
            parts.append(struct.pack(">I", signer) + tag)
        parts.append(struct.pack(">I", len(self.signatures)))
        for signer, sig in self.signatures:
            parts.append(struct.pack(">I", signer) + sig)
        dp = dict(self.dp_attestations)
        if len(dp) != len(self.dp_attestations) or not set(dp) <= {a[0] for a in self.attestations}:
            raise ProtocolError(f"{self.NAME}: a DP attestation for a site with no (or a second) pairing attestation")
        parts.append(struct.pack(">I", len(self.attestations)))
        for u, paired, tag in self.attestations:
            parts.append(struct.pack(">I", u) + _ids(tuple(paired)) + _dp_field(dp.get(u, b""), self.NAME) + tag)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "UnmaskRequest":
        r = _Reader(data, cls.NAME)
        digest, receiver = _read_header(r, cls.TYPE)
        ids = r.ids()
        tags = r.fixed_entries(_ID_TAG)
        _check_sorted([t[0] for t in tags], cls.NAME)
        sigs = r.fixed_entries(_ID_SIG)
        _check_sorted([t[0] for t in sigs], cls.NAME)
        atts, dps = [], []
        for _ in range(r.u32()):
            u = r.u32()
            paired = r.ids()
            dp = _read_dp_attestation(r)
            if dp:
                dps.append((u, dp))
            atts.append((u, paired, r.take(TAG_BYTES)))
        _check_sorted([a[0] for a in atts], cls.NAME)
        r.end()
        return cls(digest, receiver, ids, tuple(tags), tuple(sigs), tuple(atts), tuple(dps))


SITE_MESSAGES = {c.TYPE: c for c in (AdvertiseKeys, GraphReveal, ShareKeys, MaskedInput, ConsistencySig, UnmaskResponse)}
SERVER_MESSAGES = {c.TYPE: c for c in (GraphView, KeysBundle, CiphertextBundle, ConsistencyRequest, UnmaskRequest)}


def decode(data: bytes):
    """Decode any message by its type byte."""
    t = message_type(data)
    cls = SITE_MESSAGES.get(t) or SERVER_MESSAGES.get(t)
    if cls is None:
        raise ProtocolError(f"message: unknown type 0x{t:02x}")
    return cls.decode(data)
