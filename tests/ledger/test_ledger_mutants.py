"""Edge cases found by mutation testing of secure_fedrl/ledger (mutmut): each test pins a
behaviour that a surviving mutant had changed without any other test noticing."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger_helpers import CONFIG, attacker, build, client_entries, key_dir_for, open_ledger
from secure_fedrl.errors import LedgerError
from secure_fedrl.ledger import (
    GENESIS_HASH,
    LEDGER_FILE,
    PASSPHRASE_ENV,
    LedgerChainError,
    LedgerEntry,
    PrivacyLedger,
    canonical_bytes,
    default_key_dir,
    read_ledger,
    read_passphrase,
)
from secure_fedrl.ledger.store import _COLUMNS, _row_from_sql


def _stored(conn: sqlite3.Connection, seq: int):
    return _row_from_sql(conn.execute(f"SELECT {_COLUMNS} FROM rows WHERE seq = ?", (seq,)).fetchone(),
                         strict=True)


def _ddg_entry(r: int, eps: float) -> LedgerEntry:
    return LedgerEntry(round=r, unit="client", mechanism="ddg", clip=0.5, sigma_planned=1.0,
                       sigma_effective=1.1, sample_rate=0.5, sites_planned=4, sites_survived=3,
                       accountant="rdp", epsilon={"rdp": eps}, delta=1e-5, threat_model="server",
                       epsilon_server=eps, epsilon_release=eps * 0.8, noise_shares=2, max_colluding=1,
                       params={"gamma": 0.01, "beta": 0.6, "padded_dim": 64.0},
                       participants=("a", "b", "c"), site_epsilon_server={"a": eps, "c": eps / 2},
                       site_budget=8.0, sampling="secret")


def test_v2_members_survive_sqlite_exactly(tmp_path: Path) -> None:
    entries = [_ddg_entry(1, 1.5), _ddg_entry(2, 2.5)]
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        for e in entries:
            led.append(e)
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        assert [r.entry for r in led.rows()] == entries
    assert [r.entry for r in read_ledger(tmp_path)] == entries  # a run directory works too


def test_read_ledger_refusals(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"privacy ledger .*nope.* is missing$"):
        read_ledger(tmp_path / "nope")
    with PrivacyLedger.open(tmp_path, config_hash=CONFIG, signing_key=Ed25519PrivateKey.generate()) as led:
        pub = led.public_key_hex
    with pytest.raises(LedgerChainError) as info:  # empty ledger: no row to name
        read_ledger(tmp_path, config_hash="other")
    assert info.value.seq is None and info.value.reason == "config hash mismatch"
    assert "expected 'other'" in info.value.detail
    assert read_ledger(tmp_path, public_key=pub.upper()) == []  # hex case does not matter
    with pytest.raises(LedgerError, match=f"signed by {pub}, not by the pinned key {'ab' * 32}$"):
        read_ledger(tmp_path, public_key="AB" * 32)
    with attacker(tmp_path / LEDGER_FILE) as conn:
        conn.execute("DELETE FROM head")
    with pytest.raises(LedgerChainError, match="ledger: deleted: .* the signed head is missing") as info:
        read_ledger(tmp_path)
    assert info.value.seq is None and info.value.detail.endswith("the signed head is missing")
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.executescript(f"CREATE TABLE meta (key TEXT, value TEXT); CREATE TABLE rows ({_COLUMNS}); "
                       "CREATE TABLE head (id, seq, row_hash, signature);")
    conn.execute("INSERT INTO meta VALUES ('format', 'secure-fedrl-ledger'), ('schema_version', '1')")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="is not a secure-fedrl privacy ledger$"):
        read_ledger(other)
    (tmp_path / "junk.sqlite").write_bytes(b"junk" * 1000)
    with pytest.raises(LedgerError, match="is unreadable"):
        read_ledger(tmp_path / "junk.sqlite")


def test_privacy_column_tampering_is_edited(tmp_path: Path) -> None:
    path = build(tmp_path)
    with attacker(path) as conn:
        obj = json.loads(conn.execute("SELECT privacy FROM rows WHERE seq = 2").fetchone()[0])
        obj["extra"] = 1  # every member still there: only the key check notices
        conn.execute("UPDATE rows SET privacy = ? WHERE seq = 2", (json.dumps(obj),))
    with pytest.raises(LedgerChainError) as info:
        open_ledger(tmp_path, config_hash=CONFIG)
    assert (info.value.seq, info.value.reason) == (2, "edited")
    assert info.value.detail.startswith("row no longer parses: privacy column is not a v2 object")
    (tmp_path / "b").mkdir()
    path2 = build(tmp_path / "b")
    with attacker(path2) as conn:
        conn.execute("UPDATE rows SET privacy = '[1, 2]' WHERE seq = 3")
        conn.execute("UPDATE rows SET epsilon = '[1]' WHERE seq = 4")
    with pytest.raises(LedgerChainError, match="row seq 3: edited: row no longer parses"):
        open_ledger(tmp_path / "b", config_hash=CONFIG)


def test_epsilon_column_must_be_an_object(tmp_path: Path) -> None:
    path = build(tmp_path)
    with attacker(path) as conn:
        conn.execute("UPDATE rows SET epsilon = '[1]' WHERE seq = 4")
    with pytest.raises(LedgerChainError) as info:
        open_ledger(tmp_path, config_hash=CONFIG)
    assert info.value.seq == 4 and "epsilon column is not a JSON object: '[1]'" in info.value.detail


def _resign_last(conn: sqlite3.Connection) -> None:
    sig = Ed25519PrivateKey.generate().sign(canonical_bytes(_stored(conn, 6))).hex()
    conn.execute("UPDATE rows SET signature = ? WHERE seq = 6", (sig,))


@pytest.mark.parametrize("tamper, seq, reason, detail", [
    (lambda c: c.execute("UPDATE rows SET clip = 2.0 WHERE seq = 5"), 5, "edited",
     "content differs from what the next link committed to, and the signature does not match it"),
    (_resign_last, 6, "bad signature", "content matches the chain but the signature is not by the "
     "ledger key"),
    (lambda c: c.execute("UPDATE rows SET signature = ? WHERE seq = 3",
                         (Ed25519PrivateKey.generate().sign(b"x").hex(),)), 3, "bad signature",
     "content matches the chain but the signature is not by the ledger key"),
])
def test_classification_next_to_the_tail(tmp_path: Path, tamper, seq: int, reason: str,
                                         detail: str) -> None:
    path = build(tmp_path)
    with attacker(path) as conn:
        tamper(conn)
    with pytest.raises(LedgerChainError) as info:
        open_ledger(tmp_path, config_hash=CONFIG)
    assert (info.value.seq, info.value.reason, info.value.detail) == (seq, reason, detail)


def test_unverifiable_last_row_and_moved_rows_name_why(tmp_path: Path) -> None:
    path = build(tmp_path)
    with attacker(path) as conn:  # the last row edited and the head removed from the picture
        conn.execute("UPDATE rows SET clip = 3.0 WHERE seq = 6")
        conn.execute("UPDATE head SET seq = 5")
    with pytest.raises(LedgerChainError) as info:
        open_ledger(tmp_path, config_hash=CONFIG)
    assert (info.value.seq, info.value.reason) == (6, "bad signature")
    assert info.value.detail == ("signature invalid under the ledger key (row edited or signed by "
                                 "another key)")
    (tmp_path / "swap").mkdir()
    (tmp_path / "dup").mkdir()
    path = build(tmp_path / "swap")
    with attacker(path) as conn:
        conn.execute("UPDATE rows SET seq = -1 WHERE seq = 3")
        conn.execute("UPDATE rows SET seq = 3 WHERE seq = 4")
        conn.execute("UPDATE rows SET seq = 4 WHERE seq = -1")
    with pytest.raises(LedgerChainError) as info:
        open_ledger(tmp_path / "swap", config_hash=CONFIG)
    assert (info.value.seq, info.value.reason) == (3, "reordered")
    assert info.value.detail == "the row stored as seq 3 was signed as seq 4"
    path = build(tmp_path / "dup")
    with attacker(path) as conn:  # row 2 replaced by a copy of row 4 renumbered: moved back
        conn.execute("DELETE FROM rows WHERE seq = 2")
        cols = _COLUMNS.replace("seq, ", "")
        conn.execute(f"INSERT INTO rows (seq, {cols}) SELECT 2, {cols} FROM rows WHERE seq = 4")
    with pytest.raises(LedgerChainError) as info:
        open_ledger(tmp_path / "dup", config_hash=CONFIG)
    assert (info.value.seq, info.value.reason) == (2, "deleted")
    assert info.value.detail == ("the row stored as seq 2 was signed as seq 4: rows deleted and the "
                                 "rest renumbered")


def test_chain_error_fields() -> None:
    e = LedgerChainError(None, "deleted", "why")
    assert (e.seq, e.reason, e.detail, str(e)) == (None, "deleted", "why", "ledger: deleted: why")
    e = LedgerChainError(0, "edited", "x")
    assert str(e) == "row seq 0: edited: x"


def test_head_and_check_contains(tmp_path: Path) -> None:
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        assert led.head() == (0, GENESIS_HASH)
        led.check_contains(0, GENESIS_HASH, what="x")
        with pytest.raises(LedgerError, match=r"ends at row 0 but the checkpoint recorded row 1: "
                                              r"the ledger was rolled back to an older copy$"):
            led.check_contains(1, "ab" * 32, what="the checkpoint")
        rows = [led.append(e) for e in client_entries(3)]
        assert led.head() == (3, rows[-1].hash)
        led.check_contains(1, rows[0].hash, what="x")
        led.check_contains(3, rows[2].hash, what="x")
        with pytest.raises(LedgerError, match=r"row 2 is not the row the checkpoint recorded: the "
                                              r"ledger was rewritten$"):
            led.check_contains(2, rows[0].hash, what="the checkpoint")
        with pytest.raises(LedgerError, match="rewritten"):
            led.check_contains(0, rows[0].hash, what="x")  # seq 0 is only the genesis head
        with pytest.raises(LedgerError, match="rolled back"):
            led.check_contains(4, rows[2].hash, what="x")


def test_cumulative_epsilon_is_the_worst_site(tmp_path: Path) -> None:
    kw = dict(unit="trajectory", mechanism="dp-sgd", clip=1.0, sigma_planned=1.0, sigma_effective=1.0,
              sample_rate=0.1, sites_planned=1, sites_survived=1, accountant="rdp", delta=1e-5, steps=2)
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        led.append(LedgerEntry(round=1, site="a", epsilon={"rdp": 0.5, "prv": 0.4}, **kw))
        led.append(LedgerEntry(round=1, site="b", epsilon={"rdp": 0.3, "prv": 0.45}, **kw))
        assert led.cumulative_epsilon() == {"rdp": 0.5, "prv": 0.45}
        led.append(LedgerEntry(round=2, site="b", epsilon={"rdp": 0.7, "prv": 0.6}, **kw))
        assert led.cumulative_epsilon() == {"rdp": 0.7, "prv": 0.6}


def test_default_key_dir_from_the_process_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_key_dir("fed") == tmp_path / "secure-fedrl" / "ledger-keys" / "fed"
    assert default_key_dir("Xa.").name == "Xa"
    assert default_key_dir(".x-y_z.").name == "x-y_z"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_key_dir("fed") == Path.home() / ".config" / "secure-fedrl" / "ledger-keys" / "fed"


@pytest.mark.parametrize("content, expected", [
    (b"pw\r\nsecond line\n", b"pw"),
    (b"\rpw\n", b"\rpw"),
    (b"pass word \n", b"pass word "),
    (b"pwX\n", b"pwX"),
    (b"only", b"only"),
])
def test_passphrase_file_first_line(tmp_path: Path, content: bytes, expected: bytes) -> None:
    f = tmp_path / "pw"
    f.write_bytes(content)
    os.chmod(f, 0o600)
    assert read_passphrase(f, environ={}) == expected


def test_passphrase_file_errors_and_environment(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b"\nsecond")
    os.chmod(f, 0o600)
    with pytest.raises(LedgerError, match=r"ledger passphrase file .*pw is empty$"):
        read_passphrase(f, environ={})
    with pytest.raises(LedgerError, match=r"ledger passphrase file .*absent: No such file or directory$"):
        read_passphrase(tmp_path / "absent", environ={})
    monkeypatch.setenv(PASSPHRASE_ENV, "from-env")
    assert read_passphrase() == b"from-env"
    f.write_bytes(b"from-file\n")
    assert read_passphrase(f, environ={PASSPHRASE_ENV: "x"}) == b"from-file"  # the file wins
    monkeypatch.delenv(PASSPHRASE_ENV)
    assert read_passphrase() is None


def test_a_foreign_key_directory_is_refused_with_the_public_keys(tmp_path: Path) -> None:
    build(tmp_path)
    other = tmp_path.parent / f"{tmp_path.name}-x"
    elsewhere = tmp_path.parent / f"{tmp_path.name}-y"
    elsewhere.mkdir()
    PrivacyLedger.open(elsewhere, config_hash=CONFIG, key_dir=other).close()  # creates that key
    with pytest.raises(LedgerError, match=r"does not match the ledger's public key [0-9a-f]{64} "
                                          r"\(this key: [0-9a-f]{64}\)"):
        PrivacyLedger.open(tmp_path, config_hash=CONFIG, key_dir=other)
    assert key_dir_for(tmp_path).is_dir()
    assert math.isfinite(read_ledger(tmp_path)[-1].epsilon["rdp"])


def test_an_existing_key_directory_others_can_access_gets_no_new_key(tmp_path: Path) -> None:
    keys, run = tmp_path / "keys", tmp_path / "run"
    keys.mkdir(mode=0o755)
    os.chmod(keys, 0o755)
    run.mkdir()
    with pytest.raises(LedgerError, match=r"ledger key directory .*keys is accessible by group/others "
                                          r"\(mode 0755\); chmod 700 .*keys$"):
        PrivacyLedger.open(run, config_hash=CONFIG, key_dir=keys)
    assert not any(keys.iterdir())


def test_the_ledger_knows_its_path_and_normalises_epsilon(tmp_path: Path) -> None:
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        assert led.path == tmp_path / LEDGER_FILE
    e = LedgerEntry(round=0, unit="client", mechanism="gaussian", clip=1, sigma_planned=1,
                    sigma_effective=1, sample_rate=1, sites_planned=1, sites_survived=1,
                    accountant="rdp", epsilon={"rdp": 2, "prv": 1}, delta=1e-5)
    assert list(e.epsilon) == ["prv", "rdp"] and type(e.epsilon) is dict
    assert all(type(v) is float for v in e.epsilon.values())
    assert all(type(getattr(e, f)) is float for f in ("clip", "sigma_planned", "sample_rate", "delta"))
