"""Thin wrappers over `cryptography` for the constructions SPEC.md pins.

Everything cryptographic comes from pyca/cryptography; this module only fixes parameters (sizes,
nonces, encodings) so that every caller uses the same ones, and turns library exceptions into
`ProtocolError` with one line naming what failed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable, Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secure_fedrl.errors import ProtocolError

#: Source of cryptographic randomness: ``randbytes(n) -> n bytes``. Production uses os.urandom.
RandBytes = Callable[[int], bytes]

KEY_BYTES = 32
SIG_BYTES = 64
GCM_NONCE_BYTES = 12
_ZERO_BLOCK = b"\0" * 16


# ----------------------------------------------------------------------------- randomness


class SeededRandom:
    """Deterministic byte source for tests and conformance vectors ONLY (never in production).

    Keystream of AES-256-CTR with key = SHA-256(b"secure-fedrl/secagg/test-drbg" || seed), read
    sequentially; SPEC.md documents it so vector rounds can be replayed by other implementations.
    """

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)):
            raise TypeError(f"seed must be bytes, got {type(seed).__name__}")
        key = hashlib.sha256(b"secure-fedrl/secagg/test-drbg" + bytes(seed)).digest()
        self._enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_BLOCK)).encryptor()

    def __call__(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


def system_random() -> RandBytes:
    """The production randomness source."""
    return os.urandom


# ----------------------------------------------------------------------------- Ed25519


def ed25519_keypair(randbytes: RandBytes = os.urandom) -> tuple[Ed25519PrivateKey, bytes]:
    """A signing key and its 32-byte raw public key."""
    sk = Ed25519PrivateKey.from_private_bytes(randbytes(KEY_BYTES))
    return sk, ed25519_public_bytes(sk)


def ed25519_public_bytes(sk: Ed25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(sk: Ed25519PrivateKey, data: bytes) -> bytes:
    return sk.sign(data)


def verify(
    public_key: "bytes | Ed25519PublicKey", signature: bytes, data: bytes, *, what: str = "message"
) -> None:
    """Raise ProtocolError unless `signature` is a valid Ed25519 signature of `data`."""
    if len(signature) != SIG_BYTES:
        raise ProtocolError(f"{what}: malformed Ed25519 signature length")
    if not isinstance(public_key, Ed25519PublicKey):
        if len(public_key) != KEY_BYTES:
            raise ProtocolError(f"{what}: malformed Ed25519 public key length")
        try:
            public_key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
        except ValueError:
            raise ProtocolError(f"{what}: invalid Ed25519 public key encoding") from None
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise ProtocolError(f"{what}: invalid signature") from None


# ----------------------------------------------------------------------------- X25519 / HKDF


def x25519_keypair(randbytes: RandBytes = os.urandom) -> tuple[bytes, bytes]:
    """(32-byte private key, 32-byte public key), raw encodings."""
    priv = randbytes(KEY_BYTES)
    return priv, x25519_public(priv)


def x25519_public(private_key: bytes) -> bytes:
    sk = X25519PrivateKey.from_private_bytes(private_key)
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519(private_key: "bytes | X25519PrivateKey", peer_public_key: bytes) -> bytes:
    """Raw X25519 shared secret; all-zero results (small-order points) are rejected by the library.

    Pass a key object (see `x25519_key`) when doing many agreements: parsing costs as much as one.
    """
    if len(peer_public_key) != KEY_BYTES:
        raise ProtocolError(f"X25519 public key must be 32 bytes, got {len(peer_public_key)}")
    if not isinstance(private_key, X25519PrivateKey):
        private_key = X25519PrivateKey.from_private_bytes(private_key)
    try:
        return private_key.exchange(
            X25519PublicKey.from_public_bytes(peer_public_key)
        )
    except ValueError as exc:
        raise ProtocolError(f"X25519 agreement failed: {exc}") from None


def x25519_key(private_key: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(private_key)


#: Fixed scalar used only to test a public key: X25519 of a low-order point (the all-zero key
#: among them) with ANY scalar is the all-zero secret, which the library refuses.
_PROBE = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"secure-fedrl/secagg/x25519-probe").digest())


def check_x25519_public(public_key: bytes, *, what: str = "X25519 public key") -> None:
    """Raise ProtocolError if `public_key` is not 32 bytes or is a low-order point.

    A low-order (e.g. all-zero) key makes every agreement with it the all-zero secret, which
    `cryptography` refuses: a validly signed such key from one site would abort every honest
    neighbour, so the server refuses the advert and sites skip the peer.
    """
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != KEY_BYTES:
        raise ProtocolError(f"{what}: must be 32 bytes")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(bytes(public_key)))
    except ValueError:
        raise ProtocolError(f"{what}: low-order point (all-zero shared secret)") from None


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256; an output length above 255 * 32 bytes is refused (ProtocolError)."""
    try:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
    except ValueError as exc:
        raise ProtocolError(f"HKDF-SHA256: {exc}") from None


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")  # one-shot OpenSSL HMAC: same bytes as hmac.new(...).digest()


def tags_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


# ----------------------------------------------------------------------------- AES-256-GCM


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Decrypt and authenticate; a tampered ciphertext, wrong AD, or a key/nonce the cipher
    refuses (e.g. an empty nonce) raises ProtocolError."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data)
    except InvalidTag:
        raise ProtocolError("share ciphertext failed AES-GCM authentication") from None
    except ValueError as exc:
        raise ProtocolError(f"AES-GCM: {exc}") from None


# ----------------------------------------------------------------------------- PRG


def _check_prg_args(seed: bytes, length: int, bits: int) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != KEY_BYTES:
        raise ValueError("PRG seed must be exactly 32 bytes")
    if not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"PRG length must be a non-negative integer, got {length!r}")
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer in [1, 32], got {bits!r}")


def prg(seed: bytes, length: int, bits: int = 32) -> np.ndarray:
    """`length` words of AES-256-CTR(key=seed, counter block=0^16) as little-endian uint32 mod 2^bits.

    The whole 32-byte seed is the AES key: no folding to a smaller generator state.
    """
    _check_prg_args(seed, length, bits)
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_BLOCK)).encryptor()
    words = np.frombuffer(enc.update(bytes(4 * int(length))), dtype="<u4").astype(np.uint32)
    if bits < 32:
        words &= np.uint32((1 << bits) - 1)
    return words


_CHUNK_WORDS = 1 << 16  # 256 KiB of keystream per AES call: stays in L2 for the numpy add
_CHUNK_ZEROS = bytes(4 * _CHUNK_WORDS)


class MaskAccumulator:
    """Adds/subtracts PRG streams into a uint32 vector in place.

    Wrap-around of uint32 is the arithmetic of Z_{2^32}; reducing mod 2^b at the end is exact
    because 2^b divides 2^32. The keystream is produced in 256 KiB chunks into one reused buffer
    (one AES-CTR encryptor per stream, continuing its counter across chunks), so a stream costs
    the AES work plus an add on cache-resident data, with no per-stream allocation. `combine`
    runs every stream over one chunk of the vector before moving to the next, so the vector
    crosses the memory bus once instead of once per stream (what a site and the server use).
    """

    def __init__(self, length: int) -> None:
        self.length = int(length)
        n = min(self.length, _CHUNK_WORDS)
        self._buf = bytearray(4 * n + 15)
        self._view = np.frombuffer(self._buf, dtype="<u4", count=n)
        self._zeros = memoryview(_CHUNK_ZEROS)

    @staticmethod
    def _encryptor(seed: bytes):
        if len(seed) != KEY_BYTES:
            raise ValueError("PRG seed must be exactly 32 bytes")
        return Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_BLOCK)).encryptor()

    def add(self, acc: np.ndarray, seed: bytes) -> None:
        self.combine(acc, plus=(seed,))

    def sub(self, acc: np.ndarray, seed: bytes) -> None:
        self.combine(acc, minus=(seed,))

    def combine(self, x: np.ndarray, *, plus: Sequence[bytes] = (), minus: Sequence[bytes] = (),
                out: np.ndarray | None = None) -> np.ndarray:
        """x + sum PRG(plus) - sum PRG(minus), into `out` (default: x itself, in place)."""
        out = x if out is None else out
        if x.shape != (self.length,) or out.shape != (self.length,):
            raise ValueError(f"mask accumulator of length {self.length}: got input {x.shape}, output {out.shape}")
        streams = [(self._encryptor(s), np.add) for s in plus] + [(self._encryptor(s), np.subtract) for s in minus]
        if not streams:
            if out is not x:
                out[:] = x
            return out
        for lo in range(0, self.length, _CHUNK_WORDS):
            hi = min(lo + _CHUNK_WORDS, self.length)
            src, dst, ks = x[lo:hi], out[lo:hi], self._view[: hi - lo]
            for enc, op in streams:
                enc.update_into(self._zeros[: 4 * (hi - lo)], self._buf)
                op(src, ks, out=dst)
                src = dst
        return out


def reduce_bits(acc: np.ndarray, bits: int) -> np.ndarray:
    """Reduce a uint32 accumulator mod 2^bits in place and return it."""
    if bits < 32:
        acc &= np.uint32((1 << bits) - 1)
    return acc


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()
