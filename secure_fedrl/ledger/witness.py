"""Witnessed ledger heads: the bytes a site countersigns, and the Ed25519 sign / verify of them.

Pure (no I/O). With the next round's broadcast each taking-part site receives the ledger head
(seq, row hash) and countersigns it with its own Ed25519 key; the server stores the signatures
with the ledger (`PrivacyLedger.add_witness`) and the auditor checks them against the sites'
pinned keys. A server that holds its own ledger key can re-sign a rewritten history, but it
cannot produce the sites' countersignatures over the rewritten heads.

The message is specified byte for byte in FORMAT.md, "Witnesses", so that a verifier in another
language (audit/verify_ledger.py is one) recomputes it:

    "secure-fedrl/ledger-witness/v1" || 0x00
        || u32(len F) || F || u32(len C) || C || u64(seq) || H

F = the federation name (UTF-8), C = the ledger's config hash (ASCII), H = the 32 raw bytes of
the row hash of row `seq` (SHA-256 of its canonical encoding); integers big-endian, unsigned.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_fedrl.errors import LedgerError

WITNESS_DOMAIN = b"secure-fedrl/ledger-witness/v1\x00"
"""Domain separation: no other message of the project's signers starts with these bytes (the
sites' protocol signatures are over 32-byte SHA-256 digests, the ledger's over JSON objects)."""

_HASH = re.compile(r"[0-9a-f]{64}")
_MAX_TEXT = 256  # bytes of UTF-8; federation names and config hashes are far shorter


def _text_bytes(name: str, value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise LedgerError(f"witness message: {name} must be a non-empty string, got {value!r}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError(f"witness message: {name} {value!r} is not valid UTF-8") from None
    if len(raw) > _MAX_TEXT:
        raise LedgerError(f"witness message: {name} is longer than {_MAX_TEXT} bytes")
    return struct.pack(">I", len(raw)) + raw


def witness_message(*, federation: str, seq: int, row_hash: str, config_hash: str) -> bytes:
    """The bytes a site signs to countersign ledger head (seq, row_hash) of `federation`'s ledger
    for config `config_hash` (FORMAT.md, "Witnesses"). Raises LedgerError on malformed fields."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        raise LedgerError(f"witness message: seq must be an int in [1, 2^63), got {seq!r}")  # FORMAT.md: rows from 1
    if not isinstance(row_hash, str) or not _HASH.fullmatch(row_hash):
        raise LedgerError(f"witness message: row_hash must be 64 lowercase hex digits, got {row_hash!r}")
    return (WITNESS_DOMAIN + _text_bytes("federation", federation)
            + _text_bytes("config_hash", config_hash) + struct.pack(">Q", seq)
            + bytes.fromhex(row_hash))


def sign_witness(key: Ed25519PrivateKey, *, federation: str, seq: int, row_hash: str,
                 config_hash: str) -> bytes:
    """A site's countersignature (64 bytes, Ed25519 over `witness_message` itself) of a head."""
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError("sign_witness: key must be an Ed25519PrivateKey")
    return key.sign(witness_message(federation=federation, seq=seq, row_hash=row_hash,
                                    config_hash=config_hash))


def verify_witness(public_key: bytes, signature: bytes, *, federation: str, seq: int,
                   row_hash: str, config_hash: str) -> bool:
    """True iff `signature` is `public_key`'s (32 raw bytes) countersignature of this head.

    A malformed key or signature is False; malformed head fields raise LedgerError (a caller bug,
    not a forgery)."""
    message = witness_message(federation=federation, seq=seq, row_hash=row_hash,
                              config_hash=config_hash)
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != 32:
        return False
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), message)
        return True
    except (InvalidSignature, ValueError):
        return False


def check_extension(*, signed_seq: int, signed_hash: str, rows: list[str], seq: int, row_hash: str,
                    config_hash: str) -> list[dict[str, Any]]:
    """Check that `rows` (canonical row encodings, FORMAT.md) chain from the head a site signed
    last, (signed_seq, signed_hash), to the head it is asked to sign, (seq, row_hash); return
    the decoded rows. Raises LedgerError otherwise: a server that rewrote history since the site's
    last countersignature cannot show it a consistent chain, so the site never signs it."""
    import hashlib
    import json

    current, at = signed_hash, signed_seq
    decoded = []
    for text in rows:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
        try:
            row = json.loads(raw)
        except ValueError:
            raise LedgerError("witness: a row shown is not canonical JSON") from None
        if not isinstance(row, dict) or row.get("seq") != at + 1 or row.get("prev_hash") != current or \
                row.get("config_hash") != config_hash:
            raise LedgerError(f"witness: row {at + 1} shown does not extend the head this site countersigned "
                              f"(seq {signed_seq})")
        current, at = hashlib.sha256(raw).hexdigest(), at + 1
        decoded.append(row)
    if at != seq or current != row_hash:
        raise LedgerError(f"witness: the rows shown end at seq {at}, not at the head {seq} the site is asked to sign")
    return decoded
