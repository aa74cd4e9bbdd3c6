"""Edge cases of the witnessed ledger found by mutation testing (mutmut) of
secure_fedrl/ledger/witness.py and the witness code of secure_fedrl/ledger/store.py: each test
pins a behaviour that a surviving mutant had changed without any other test noticing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))
from ledger_helpers import CONFIG, attacker, build, client_entries, open_ledger  # noqa: E402

from secure_fedrl.errors import LedgerError  # noqa: E402
from secure_fedrl.ledger import (  # noqa: E402
    GENESIS_HASH,
    LEDGER_FILE,
    PrivacyLedger,
    read_witnesses,
    sign_witness,
    verify_witness,
    witness_message,
)
from secure_fedrl.ledger.witness import check_extension  # noqa: E402

FED = "witness-mutants"
KEYS = {s: Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"mut-" + s.encode()).digest())
        for s in ("a", "b")}
PUB = {s: k.public_key().public_bytes_raw() for s, k in KEYS.items()}
H = hashlib.sha256(b"row").hexdigest()


def _kw(seq: int, row_hash: str, **over) -> dict:
    return {"federation": FED, "seq": seq, "row_hash": row_hash, "config_hash": CONFIG, **over}


def _sig(site: str, led: PrivacyLedger, seq: int) -> bytes:
    return sign_witness(KEYS[site], **_kw(seq, led.rows()[seq - 1].hash))


def _witness(led: PrivacyLedger, seq: int, site: str) -> None:
    led.add_witness(seq=seq, site=site, public_key=PUB[site], signature=_sig(site, led, seq))


def _raises_exactly(message: str, fn, *args, **kwargs) -> None:
    with pytest.raises(LedgerError) as info:
        fn(*args, **kwargs)
    assert str(info.value) == message


# -- witness.py: the message --------------------------------------------------------------------------
def test_witness_message_errors_name_the_bad_field() -> None:
    _raises_exactly("witness message: federation must be a non-empty string, got ''",
                    witness_message, **_kw(1, H, federation=""))
    _raises_exactly("witness message: config_hash must be a non-empty string, got ''",
                    witness_message, **_kw(1, H, config_hash=""))
    longest = "\u00e9" * 128  # 256 bytes of UTF-8 (128 characters): the limit is inclusive
    assert witness_message(**_kw(1, H, federation=longest, config_hash="c" * 256))[31:35] == \
        (256).to_bytes(4, "big")
    _raises_exactly("witness message: config_hash is longer than 256 bytes",
                    witness_message, **_kw(1, H, config_hash="c" * 257))
    _raises_exactly("witness message: federation is longer than 256 bytes",
                    witness_message, **_kw(1, H, federation=longest + "f"))
    _raises_exactly("witness message: federation is longer than 256 bytes",
                    witness_message, **_kw(1, H, federation="f" * 257))
    # a lone surrogate is a str that has no UTF-8 encoding: one LedgerError, not UnicodeEncodeError
    _raises_exactly("witness message: federation '\\ud800' is not valid UTF-8",
                    witness_message, **_kw(1, H, federation="\ud800"))


def test_witness_message_seq_is_below_2_to_the_63() -> None:
    top = witness_message(**_kw(2**63 - 1, H))
    assert top[-40:-32] == b"\x7f" + b"\xff" * 7 and top[-32:] == bytes.fromhex(H)
    assert witness_message(**_kw(127, H))[-40:-32] == (127).to_bytes(8, "big")
    for seq in (2**63, 2**64 - 1, 2**64):  # u64 could hold the first two; SQLite's INTEGER cannot
        with pytest.raises(LedgerError, match=r"seq must be an int in \[1, 2\^63\)"):
            witness_message(**_kw(seq, H))


def test_sign_witness_refuses_a_non_private_key() -> None:
    for key in (None, KEYS["a"].public_key(), PUB["a"]):
        _raises_exactly("sign_witness: key must be an Ed25519PrivateKey", sign_witness, key, **_kw(1, H))


def test_verify_witness_is_false_for_a_key_or_signature_of_the_wrong_type() -> None:
    sig = sign_witness(KEYS["a"], **_kw(1, H))
    assert verify_witness(PUB["a"], sig, **_kw(1, H))
    assert verify_witness(bytearray(PUB["a"]), bytearray(sig), **_kw(1, H))
    for key in (None, "k" * 32, PUB["a"].hex(), PUB["a"][:31], 32):
        assert verify_witness(key, sig, **_kw(1, H)) is False, key
    for bad in (None, "s" * 64, sig.hex(), sig[:63], 64):
        assert verify_witness(PUB["a"], bad, **_kw(1, H)) is False, bad


# -- witness.py: check_extension ----------------------------------------------------------------------
def _chain(n: int) -> tuple[list[str], list[str]]:
    """n minimal rows (what check_extension reads of them) chained from the genesis head."""
    texts, hashes, prev = [], [], GENESIS_HASH
    for seq in range(1, n + 1):
        text = json.dumps({"seq": seq, "prev_hash": prev, "config_hash": CONFIG}, separators=(",", ":"))
        prev = hashlib.sha256(text.encode()).hexdigest()
        texts.append(text)
        hashes.append(prev)
    return texts, hashes


def test_check_extension_takes_bytes_rows_and_returns_the_decoded_rows() -> None:
    texts, hashes = _chain(3)
    for rows in (texts, [t.encode() for t in texts], [bytearray(t.encode()) for t in texts]):
        got = check_extension(signed_seq=0, signed_hash=GENESIS_HASH, rows=rows, seq=3,
                              row_hash=hashes[2], config_hash=CONFIG)
        assert got == [json.loads(t) for t in texts]
    assert check_extension(signed_seq=3, signed_hash=hashes[2], rows=[], seq=3, row_hash=hashes[2],
                           config_hash=CONFIG) == []


def test_check_extension_refusals_say_why() -> None:
    texts, hashes = _chain(3)
    kw = dict(signed_seq=1, signed_hash=hashes[0], seq=3, row_hash=hashes[2], config_hash=CONFIG)
    _raises_exactly("witness: a row shown is not canonical JSON", check_extension,
                    **{**kw, "rows": [texts[1], "{not json"]})
    _raises_exactly("witness: a row shown is not canonical JSON", check_extension,
                    **{**kw, "rows": [b"\xff"]})
    _raises_exactly("witness: row 2 shown does not extend the head this site countersigned (seq 1)",
                    check_extension, **{**kw, "rows": [texts[2]]})
    _raises_exactly("witness: row 3 shown does not extend the head this site countersigned (seq 1)",
                    check_extension, **{**kw, "rows": [texts[1], texts[1]]})
    _raises_exactly("witness: the rows shown end at seq 2, not at the head 3 the site is asked to sign",
                    check_extension, **{**kw, "rows": [texts[1]]})


# -- store.py: witnesses verified on open (_check_witnesses) -------------------------------------------
def _altered_or_forged(p: Path, site: str, seq) -> str:
    return (f"privacy ledger {p}: witness of site {site!r} for row {seq} does not verify: "
            f"the witness was altered or forged")


def test_an_altered_signature_key_or_seq_on_open_is_altered_or_forged(tmp_path: Path) -> None:
    build(tmp_path, 3)
    p = tmp_path / LEDGER_FILE
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        _witness(led, 3, "b")
    (sig,) = sqlite3.connect(p).execute("SELECT signature FROM witnesses").fetchone()
    flipped = sig[:20] + ("0" if sig[20] != "0" else "1") + sig[21:]  # never a no-op
    cases = [("signature", flipped, 3), ("public_key", "zz" * 32, 3), ("signature", "not hex", 3),
             ("seq", 5, 5), ("seq", "three", "three")]
    for column, value, seq in cases:
        with attacker(p) as conn:
            conn.execute(f"UPDATE witnesses SET {column} = ?", (value,))
        _raises_exactly(_altered_or_forged(p, "b", seq), open_ledger, tmp_path, config_hash=CONFIG,
                        federation=FED)
        with attacker(p) as conn:  # restore
            conn.execute("DELETE FROM witnesses")
            conn.execute("INSERT INTO witnesses VALUES (3, 'b', ?, ?, ?)",
                         (PUB["b"].hex(), sig, _row_hash(p, 3)))
        open_ledger(tmp_path, config_hash=CONFIG, federation=FED).close()  # verifies again


def _row_hash(p: Path, seq: int) -> str:
    with open_ledger(p.parent, config_hash=CONFIG) as led:
        return led.rows()[seq - 1].hash


@pytest.mark.parametrize("n", [1, 2])
def test_a_row_rewritten_after_it_was_witnessed_is_named_rewritten(tmp_path: Path, n: int) -> None:
    """The server re-signs a rewritten history with its own key and keeps the old witnesses; the
    rewritten row is the first (and, n = 1, also the last) of the ledger."""
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    p = tmp_path / LEDGER_FILE
    entries = client_entries(n)
    with PrivacyLedger.open(tmp_path, signing_key=key, config_hash=CONFIG, federation=FED) as led:
        for e in entries:
            led.append(e)
        _witness(led, 1, "a")
    old = sqlite3.connect(p).execute("SELECT * FROM witnesses").fetchall()
    for f in tmp_path.glob(LEDGER_FILE + "*"):
        f.unlink()
    with PrivacyLedger.open(tmp_path, signing_key=key, config_hash=CONFIG) as led:
        led.append(dataclasses.replace(entries[0], sites_survived=entries[0].sites_survived - 5))
        for e in entries[1:]:
            led.append(e)
    with attacker(p) as conn:
        conn.executemany("INSERT INTO witnesses VALUES (?, ?, ?, ?, ?)", old)
    _raises_exactly(f"privacy ledger {p}: witness of site 'a' for row 1 does not verify: the row was "
                    f"rewritten after the site countersigned it", PrivacyLedger.open, tmp_path,
                    signing_key=key, config_hash=CONFIG, federation=FED)
    PrivacyLedger.open(tmp_path, signing_key=key, config_hash=CONFIG).close()  # unverified: opens


# -- store.py: read_witnesses, the witnesses table added on open ------------------------------------------
def test_read_witnesses_of_a_file_that_is_not_sqlite_is_one_error(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(LedgerError) as info:
        read_witnesses(tmp_path)
    assert str(info.value).startswith(f"privacy ledger {tmp_path / LEDGER_FILE} is unreadable: ")


def test_adding_the_witnesses_table_fails_cleanly_and_rolls_back(tmp_path: Path) -> None:
    build(tmp_path, 2)
    p = tmp_path / LEDGER_FILE
    with attacker(p) as conn:  # a view where the table would go: CREATE TRIGGER ... ON it fails
        conn.execute("DROP TABLE witnesses")
        conn.execute("CREATE VIEW witnesses AS SELECT seq FROM rows")
    for _ in range(2):  # the failed transaction was rolled back: the same error, not a lock
        with pytest.raises(LedgerError) as info:
            open_ledger(tmp_path, config_hash=CONFIG)
        assert str(info.value).startswith(f"privacy ledger {p}: cannot add the witnesses table: cannot "
                                          f"create BEFORE trigger on view"), info.value
    triggers = [r[0] for r in sqlite3.connect(p).execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'witnesses%'")]
    assert triggers == []


# -- store.py: PrivacyLedger.witnesses / add_witness ------------------------------------------------------
def test_witnesses_are_sorted_by_seq_then_site_before_reopen(tmp_path: Path) -> None:
    build(tmp_path, 2)
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        _witness(led, 2, "a")
        _witness(led, 1, "b")
        _witness(led, 1, "a")
        assert [w[:2] for w in led.witnesses()] == [(1, "a"), (1, "b"), (2, "a")]


def test_add_witness_federation_argument_overrides_open(tmp_path: Path) -> None:
    build(tmp_path, 1)
    with open_ledger(tmp_path, config_hash=CONFIG) as led:  # no federation at open
        led.add_witness(seq=1, site="a", public_key=PUB["a"], signature=_sig("a", led, 1),
                        federation=FED)
        assert [w[:2] for w in led.witnesses()] == [(1, "a")]
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        with pytest.raises(LedgerError, match="does not verify"):  # signed for FED, not for other-fed
            led.add_witness(seq=1, site="b", public_key=PUB["b"], signature=_sig("b", led, 1),
                            federation="other-fed")
        led.add_witness(seq=1, site="b", public_key=PUB["b"], signature=_sig("b", led, 1))
        assert [w[:2] for w in led.witnesses()] == [(1, "a"), (1, "b")]


def test_add_witness_argument_errors_are_exact(tmp_path: Path) -> None:
    build(tmp_path, 1)
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        sig = _sig("a", led, 1)
        ok = dict(seq=1, site="a", public_key=PUB["a"], signature=sig)
        for fed in (None, "", 123):
            _raises_exactly("add_witness: the federation name is unknown (pass federation= to "
                            "PrivacyLedger.open or to add_witness)", led.add_witness,
                            **ok, federation=fed)
        _raises_exactly("ledger field 'site' must be a non-empty string, got ''", led.add_witness,
                        **{**ok, "site": ""}, federation=FED)
        for key in (None, "k" * 32, PUB["a"][:31], PUB["a"] + b"\x00"):
            _raises_exactly("witness of site 'a': public key must be 32 raw bytes", led.add_witness,
                            **{**ok, "public_key": key}, federation=FED)
        for bad in (None, "s" * 64, sig[:63]):
            _raises_exactly("witness of site 'a': signature must be 64 bytes", led.add_witness,
                            **{**ok, "signature": bad}, federation=FED)
        for seq in (True, "1", 1.0, None):
            _raises_exactly(f"witness of site 'a': unknown ledger row {seq!r} (the ledger holds rows 1..1)",
                            led.add_witness, **{**ok, "seq": seq}, federation=FED)
        assert led.witnesses() == []
        led.add_witness(**ok, federation=FED)
        assert len(led.witnesses()) == 1


def test_a_second_witness_of_the_same_head_is_refused_before_it_is_verified(tmp_path: Path) -> None:
    build(tmp_path, 2)
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        _witness(led, 2, "a")
        other = sign_witness(KEYS["a"], **_kw(1, led.rows()[0].hash))  # does not verify for row 2
        _raises_exactly("witness of site 'a' for ledger row 2 is already stored", led.add_witness,
                        seq=2, site="a", public_key=PUB["a"], signature=other)
        _raises_exactly("witness of site 'a' for ledger row 2 is already stored", led.add_witness,
                        seq=2, site="a", public_key=PUB["b"], signature=_sig("b", led, 2))
        _witness(led, 2, "b")  # same seq, another site: fine
        _witness(led, 1, "a")  # same site, another seq: fine
        assert len(led.witnesses()) == 3


def test_a_witness_already_stored_by_another_writer_is_refused(tmp_path: Path) -> None:
    build(tmp_path, 1)
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as a, \
            open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as b:
        _witness(b, 1, "a")
        _raises_exactly("witness of site 'a' for ledger row 1 is already stored", _witness, a, 1, "a")
        _witness(a, 1, "b")  # the failed transaction was rolled back: the ledger still takes writes
    assert [w[:2] for w in read_witnesses(tmp_path)] == [(1, "a"), (1, "b")]


def test_a_ledger_changed_by_another_writer_refuses_the_witness(tmp_path: Path) -> None:
    build(tmp_path, 1)
    p = tmp_path / LEDGER_FILE
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as a:
        stale = a.head()
        with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as b:
            b.append(client_entries(2)[1])
            fresh = b.head()
        _raises_exactly(f"privacy ledger {p} was changed by another writer (head {fresh}, expected "
                        f"{stale})", _witness, a, 1, "a")
        _raises_exactly(f"privacy ledger {p} was changed by another writer (head {fresh}, expected "
                        f"{stale})", _witness, a, 1, "a")  # rolled back, not left in a transaction
    assert read_witnesses(tmp_path) == []


def test_a_storage_failure_is_one_ledger_error(tmp_path: Path) -> None:
    build(tmp_path, 1)
    p = tmp_path / LEDGER_FILE
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        with attacker(p) as conn:
            conn.execute("DROP TABLE witnesses")
        with pytest.raises(LedgerError) as info:
            _witness(led, 1, "a")
        assert str(info.value).startswith(f"privacy ledger {p}: storing the witness of site 'a' for "
                                          f"row 1 failed: "), info.value  # then SQLite's own words
        assert led.witnesses() == []  # not recorded in memory either


def test_witness_message_refuses_seq_zero_as_format_md_says() -> None:
    """FORMAT.md: ledger rows (and so witnessed heads) are numbered from 1."""
    from secure_fedrl.errors import LedgerError
    from secure_fedrl.ledger.witness import witness_message

    kw = dict(federation="f", row_hash="ab" * 32, config_hash="cd" * 32)
    assert witness_message(seq=1, **kw)
    with pytest.raises(LedgerError, match=r"\[1, 2\^63\)"):
        witness_message(seq=0, **kw)
