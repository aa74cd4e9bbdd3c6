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

import struct
from dataclasses import dataclass, field, replace
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
T_KEYS_BUNDLE, T_CT_BUNDLE, T_CONSISTENCY_REQ, T_UNMASK_REQ = 0x81, 0x82, 0x83, 0x84

KIND_B, KIND_S = 0, 1


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

    def view(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"{self.what}: truncated message")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def ids(self) -> tuple[int, ...]:
        count = self.u32()
        if 4 * count > len(self.data) - self.pos:
            raise ProtocolError(f"{self.what}: truncated id list")
        ids = struct.unpack(f">{count}I", self.take(4 * count))
        _check_sorted(ids, self.what)
        return ids

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


def _check_sorted(ids: tuple[int, ...] | list[int], what: str) -> None:
    for a, b in zip(ids, ids[1:]):
        if a >= b:
            raise ProtocolError(f"{what}: id list not strictly increasing (duplicate id {b}?)")


def _ids(ids: tuple[int, ...]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *ids)


def _header(mtype: int, digest: bytes, party: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, mtype, digest, party)


def _read_header(r: _Reader, expected: int) -> tuple[bytes, int]:
    magic, version, mtype, digest, party = HEADER.unpack(r.take(HEADER.size))
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


@dataclass(frozen=True)
class AdvertiseKeys(_Signed):
    TYPE: ClassVar[int] = T_ADVERTISE
    NAME: ClassVar[str] = "AdvertiseKeys"
    c_pk: bytes = b""
    s_pk: bytes = b""
    signature: bytes = b""

    def body(self) -> bytes:
        return _header(self.TYPE, self.config_digest, self.sender) + self.c_pk + self.s_pk

    @classmethod
    def decode(cls, data: bytes) -> "AdvertiseKeys":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        c_pk, s_pk, sig = r.take(32), r.take(32), r.take(64)
        r.end()
        return cls(digest, sender, c_pk, s_pk, sig)


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
            receiver = r.u32()
            cts.append((receiver, r.take(r.u32())))
        _check_sorted([c[0] for c in cts], cls.NAME)
        sig = r.take(64)
        r.end()
        return cls(digest, sender, commit, tuple(cts), sig)


@dataclass(frozen=True)
class MaskedInput(_Signed):
    TYPE: ClassVar[int] = T_MASKED_INPUT
    NAME: ClassVar[str] = "MaskedInput"
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    signature: bytes = b""

    def _parts(self) -> list:
        v = np.ascontiguousarray(self.vector, dtype="<u4")
        return [_header(self.TYPE, self.config_digest, self.sender) + struct.pack(">I", v.size), memoryview(v).cast("B")]

    def body(self) -> bytes:
        return b"".join(self._parts())

    @classmethod
    def decode(cls, data: bytes) -> "MaskedInput":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        dim = r.u32()
        if 4 * dim > len(data) - r.pos:
            raise ProtocolError(f"{cls.NAME}: truncated message")
        vec = np.frombuffer(r.view(4 * dim), dtype="<u4")  # read-only view of the wire, no copy
        sig = r.take(64)
        r.end()
        return cls(digest, sender, vec, sig)


@dataclass(frozen=True)
class ConsistencySig(_Signed):
    """A site's signature over the survivor set U3 the server announced to it."""

    TYPE: ClassVar[int] = T_CONSISTENCY
    NAME: ClassVar[str] = "ConsistencySig"
    survivors: tuple[int, ...] = ()
    signature: bytes = b""

    def body(self) -> bytes:
        return _header(self.TYPE, self.config_digest, self.sender) + _ids(self.survivors)

    @classmethod
    def decode(cls, data: bytes) -> "ConsistencySig":
        r = _Reader(data, cls.NAME)
        digest, sender = _read_header(r, cls.TYPE)
        ids = r.ids()
        sig = r.take(64)
        r.end()
        return cls(digest, sender, ids, sig)


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
        shares = []
        for _ in range(r.u32()):
            peer, kind = r.u32(), r.u8()
            if kind not in (KIND_B, KIND_S):
                raise ProtocolError(f"{cls.NAME}: unknown share kind {kind}")
            shares.append((peer, kind, r.take(SHARE_BYTES)))
        _check_sorted([s[0] for s in shares], cls.NAME)
        sig = r.take(64)
        r.end()
        return cls(digest, sender, tuple(shares), sig)


# ============================================================================ server messages


@dataclass(frozen=True)
class KeysBundle:
    """The AdvertiseKeys messages (wire bytes, sorted by sender) of the receiver's live holders."""

    TYPE: ClassVar[int] = T_KEYS_BUNDLE
    NAME: ClassVar[str] = "KeysBundle"
    config_digest: bytes
    receiver: int
    adverts: tuple[bytes, ...]

    def encode(self) -> bytes:
        parts = [_header(self.TYPE, self.config_digest, self.receiver), struct.pack(">I", len(self.adverts))]
        for a in self.adverts:
            parts.append(struct.pack(">I", len(a)) + a)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "KeysBundle":
        r = _Reader(data, cls.NAME)
        digest, receiver = _read_header(r, cls.TYPE)
        adverts = tuple(r.take(r.u32()) for _ in range(r.u32()))
        r.end()
        return cls(digest, receiver, adverts)


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
            sender = r.u32()
            cts.append((sender, r.take(r.u32())))
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
    """U3 again plus the consistency signatures (signer, sig) of the receiver's holders, by signer."""

    TYPE: ClassVar[int] = T_UNMASK_REQ
    NAME: ClassVar[str] = "UnmaskRequest"
    config_digest: bytes
    receiver: int
    survivors: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...]

    def encode(self) -> bytes:
        parts = [_header(self.TYPE, self.config_digest, self.receiver), _ids(self.survivors)]
        parts.append(struct.pack(">I", len(self.signatures)))
        for signer, sig in self.signatures:
            parts.append(struct.pack(">I", signer) + sig)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "UnmaskRequest":
        r = _Reader(data, cls.NAME)
        digest, receiver = _read_header(r, cls.TYPE)
        ids = r.ids()
        sigs = []
        for _ in range(r.u32()):
            signer = r.u32()
            sigs.append((signer, r.take(64)))
        r.end()
        return cls(digest, receiver, ids, tuple(sigs))


SITE_MESSAGES = {c.TYPE: c for c in (AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySig, UnmaskResponse)}
SERVER_MESSAGES = {c.TYPE: c for c in (KeysBundle, CiphertextBundle, ConsistencyRequest, UnmaskRequest)}


def decode(data: bytes):
    """Decode any message by its type byte."""
    t = message_type(data)
    cls = SITE_MESSAGES.get(t) or SERVER_MESSAGES.get(t)
    if cls is None:
        raise ProtocolError(f"message: unknown type 0x{t:02x}")
    return cls.decode(data)
