"""The canonical encoding matches FORMAT.md byte for byte, and verify_chain works on plain lists."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fedrl.errors import LedgerError
from secure_fedrl.ledger import (
    GENESIS_HASH,
    LedgerChainError,
    LedgerEntry,
    LedgerRow,
    canonical_bytes,
    head_bytes,
    verify_chain,
)
from secure_fedrl.ledger.format import f64, sign_row

FORMAT_MD = (Path(__file__).parents[2] / "secure_fedrl" / "ledger" / "FORMAT.md").read_text()
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _vector(name: str) -> str:
    m = re.search(rf"^{name}:\s+(\S.*)$", FORMAT_MD, re.M)
    assert m, name
    return m.group(1).strip()


def _example_row() -> LedgerRow:
    e = LedgerEntry(round=1, unit="client", mechanism="gaussian", clip=1.0, sigma_planned=1.1,
                    sigma_effective=1.2, sample_rate=0.1, sites_planned=2, sites_survived=2,
                    accountant="rdp", epsilon={"rdp": 0.1}, delta=1e-5, threat_model="release",
                    epsilon_server=float("inf"), epsilon_release=0.1, participants=("s-0", "s-1"))
    return sign_row(LedgerRow(seq=2, time="2026-11-22T11:54:39.755733Z", config_hash="abc",
                              prev_hash="44438226f404da446ba1baa1e2482b035205499bd0ee1e3042cd76732eb"
                                        "7b891", signature="", entry=e), KEY)


def test_format_md_example_and_vector() -> None:
    row = _example_row()
    example = next(line for line in FORMAT_MD.splitlines() if line.startswith('{"accountant"'))
    assert canonical_bytes(row) == example.encode("ascii")
    pub = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert pub.hex() == _vector("public_key")
    assert row.hash == hashlib.sha256(example.encode()).hexdigest() == _vector("row_hash")
    assert row.signature == _vector("signature")
    assert head_bytes(seq=2, row_hash=row.hash, config_hash="abc").decode() == _vector("head")


@pytest.mark.parametrize("value, text", [(1.0, "3ff0000000000000"), (1e-5, "3ee4f8b588e368f1"),
                                         (float("inf"), "7ff0000000000000")])
def test_float_encoding_examples(value: float, text: str) -> None:
    assert f64(value) == text and text in FORMAT_MD


def _chain(n: int) -> list[LedgerRow]:
    rows, prev = [], GENESIS_HASH
    for i in range(n):
        e = LedgerEntry(round=i, unit="client", mechanism="gaussian", clip=1.0, sigma_planned=1.0,
                        sigma_effective=1.0, sample_rate=0.1, sites_planned=5, sites_survived=5,
                        accountant="rdp", epsilon={"rdp": 0.1 * (i + 1)}, delta=1e-5)
        row = sign_row(LedgerRow(seq=i + 1, time="2026-01-01T00:00:00.000000Z", config_hash="c",
                                 prev_hash=prev, signature="", entry=e), KEY)
        rows.append(row)
        prev = row.hash
    return rows


def test_verify_chain_on_lists() -> None:
    rows = _chain(5)
    pub = KEY.public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for key in (pub, raw, raw.hex()):
        verify_chain(rows, key, config_hash="c")
    with pytest.raises(LedgerChainError, match="row seq 3: reordered"):
        verify_chain([rows[0], rows[1], rows[3], rows[2], rows[4]], pub)
    with pytest.raises(LedgerChainError, match="row seq 2: deleted"):
        verify_chain([rows[0], rows[2]], pub)
    with pytest.raises(LedgerChainError, match="row seq 1: config hash mismatch"):
        verify_chain(rows, pub, config_hash="d")
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(LedgerChainError, match="row seq 1: edited|row seq 1: bad signature"):
        verify_chain(rows, other)
    forged = dataclasses.replace(rows[2], entry=dataclasses.replace(rows[2].entry, clip=2.0))
    with pytest.raises(LedgerChainError, match="row seq 3: edited"):
        verify_chain(rows[:2] + [forged] + rows[3:], pub)
    with pytest.raises(LedgerError, match="Ed25519 public key"):
        verify_chain(rows, "abcd")
    with pytest.raises(LedgerError, match="config_hash"):
        from secure_fedrl.ledger import SignedHead
        verify_chain(rows, pub, head=SignedHead(5, rows[-1].hash, "00"))
