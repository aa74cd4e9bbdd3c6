"""PrivacyLedger on disk: round trips, tamper detection, triggers, ordering rules, key handling."""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_helpers import CONFIG, TAMPERS, attacker, build, client_entries, key_dir_for, open_ledger
from secure_fedrl.errors import LedgerError
from secure_fedrl.ledger import (
    GENESIS_HASH,
    KEY_FILE,
    LEDGER_FILE,
    LedgerChainError,
    LedgerEntry,
    PrivacyLedger,
    canonical_bytes,
    load_signing_key,
    read_ledger,
    verify_chain,
)


def test_append_read_reopen(tmp_path: Path) -> None:
    entries = client_entries(5)
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        appended = [led.append(e) for e in entries]
        pub = led.public_key_hex
    assert [r.seq for r in appended] == [1, 2, 3, 4, 5]
    assert appended[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in zip(appended, appended[1:]))
    with open_ledger(tmp_path / LEDGER_FILE, config_hash=CONFIG) as led:
        rows = led.rows()
        assert rows == appended  # every field, incl. floats, survives SQLite exactly
        assert [r.entry for r in rows] == entries
        assert led.last_round() == 4
        assert led.cumulative_epsilon() == dict(entries[-1].epsilon)
        assert [r.round for r in led.rows_after(2)] == [3, 4]
        assert led.rows_after(4) == []
        led.append(dataclasses.replace(client_entries(6)[-1], round=5))
        assert len(led.rows()) == 6
        assert led.public_key_hex == pub
    verify_chain(rows, pub, config_hash=CONFIG)
    t = datetime.strptime(rows[0].time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - t).total_seconds()) < 600


def test_storage_is_wal_full_sync_and_key_is_private(tmp_path: Path) -> None:
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        led.append(client_entries(1)[0])
        assert led._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        other = sqlite3.connect(tmp_path / LEDGER_FILE)
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Durable when append returns: a second connection sees the committed row at once.
        assert other.execute("SELECT count(*) FROM rows").fetchone()[0] == 1
        other.close()
    keys = key_dir_for(tmp_path)
    assert stat.S_IMODE(os.stat(keys / KEY_FILE).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    assert not (tmp_path / KEY_FILE).exists()  # nothing secret in the run directory


def test_empty_ledger_and_empty_queries(tmp_path: Path) -> None:
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        assert led.rows() == [] and led.last_round() is None and led.cumulative_epsilon() == {}
    with open_ledger(tmp_path, config_hash=CONFIG, create=False) as led:
        assert led.rows() == []


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampering_is_detected_at_the_first_bad_row(tmp_path: Path, name: str) -> None:
    path = build(tmp_path)
    tamper, seq, reason = TAMPERS[name]
    with attacker(path) as conn:
        tamper(conn)
    with pytest.raises(LedgerChainError) as info:
        open_ledger(tmp_path, config_hash=CONFIG)
    assert (info.value.seq, info.value.reason) == (seq, reason), str(info.value)
    assert f"row seq {seq}: {reason}" in str(info.value)
    assert isinstance(info.value, LedgerError)


def test_read_ledger_needs_no_key_and_leaves_the_ledger_untouched(tmp_path: Path) -> None:
    path = build(tmp_path)
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        pub = led.public_key_hex
    (key_dir_for(tmp_path) / KEY_FILE).unlink()
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    rows = read_ledger(path, config_hash=CONFIG, public_key=pub)
    assert [r.seq for r in rows] == list(range(1, 7))
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # SQLite may add empty -wal/-shm
    with pytest.raises(LedgerChainError, match="config hash mismatch"):
        read_ledger(path, config_hash="cfg-other")
    with pytest.raises(LedgerError, match="pinned key"):
        read_ledger(path, public_key="ab" * 32)
    with attacker(path) as conn:
        conn.execute("DELETE FROM rows WHERE seq = 6")
    with pytest.raises(LedgerChainError, match="row seq 6: deleted"):
        read_ledger(path)


def test_reopen_with_another_config_hash_is_refused(tmp_path: Path) -> None:
    build(tmp_path)
    with pytest.raises(LedgerChainError, match="config hash mismatch") as info:
        open_ledger(tmp_path, config_hash="cfg-other")
    assert info.value.seq == 1


def test_meta_config_hash_rewritten_by_attacker(tmp_path: Path) -> None:
    path = build(tmp_path)
    with attacker(path) as conn:
        conn.execute("UPDATE meta SET value = 'cfg-forged' WHERE key = 'config_hash'")
    with pytest.raises(LedgerChainError, match="config hash mismatch"):
        open_ledger(tmp_path, config_hash=CONFIG)
    with pytest.raises(LedgerChainError, match="row seq 1: config hash mismatch"):
        open_ledger(tmp_path, config_hash="cfg-forged")


def test_wrong_signing_key_and_missing_key_are_refused(tmp_path: Path) -> None:
    build(tmp_path)
    with pytest.raises(LedgerError, match="signing key does not match"):
        PrivacyLedger.open(tmp_path, config_hash=CONFIG, signing_key=Ed25519PrivateKey.generate())
    other = tmp_path.parent / f"{tmp_path.name}-other-keys"
    with pytest.raises(LedgerError, match="no ledger signing key in"):  # an existing ledger never
        PrivacyLedger.open(tmp_path, config_hash=CONFIG, key_dir=other)  # gets a fresh key
    assert not other.exists()
    load_signing_key(other, run_dir=tmp_path, create=True)
    with pytest.raises(LedgerError, match="signing key does not match"):  # another key directory
        PrivacyLedger.open(tmp_path, config_hash=CONFIG, key_dir=other)
    (key_dir_for(tmp_path) / KEY_FILE).unlink()
    with pytest.raises(LedgerError, match="no ledger signing key in"):
        open_ledger(tmp_path, config_hash=CONFIG)
    with pytest.raises(LedgerError, match="no signing key"):
        PrivacyLedger.open(tmp_path, config_hash=CONFIG)


def test_passed_in_key_writes_no_key_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with PrivacyLedger.open(tmp_path, config_hash=CONFIG, signing_key=key) as led:
        led.append(client_entries(1)[0])
    assert not (tmp_path / KEY_FILE).exists() and not key_dir_for(tmp_path).exists()
    with PrivacyLedger.open(tmp_path, config_hash=CONFIG, signing_key=key) as led:
        assert len(led.rows()) == 1


def test_resume_refuses_a_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="missing"):
        open_ledger(tmp_path, config_hash=CONFIG, create=False)


def test_head_removed_by_attacker(tmp_path: Path) -> None:
    path = build(tmp_path)
    with attacker(path) as conn:
        conn.execute("DELETE FROM head")
    with pytest.raises(LedgerChainError, match="head"):
        open_ledger(tmp_path, config_hash=CONFIG)


@pytest.mark.parametrize("sql", [
    "UPDATE rows SET sigma_effective = 9.0 WHERE seq = 2",
    "UPDATE rows SET epsilon = '{}'",
    "DELETE FROM rows WHERE seq = 3",
    "DELETE FROM rows",
    "UPDATE meta SET value = 'x' WHERE key = 'config_hash'",
    "DELETE FROM meta",
    "DELETE FROM head",
    "UPDATE head SET seq = 2",
    "INSERT INTO rows (seq, round, time, unit, mechanism, clip, sigma_planned, sigma_effective, "
    "sample_rate, steps, sites_planned, sites_survived, accountant, epsilon, delta, config_hash, "
    "prev_hash, signature) VALUES (99, 99, 't', 'client', 'm', 1, 1, 1, 1, 1, 1, 1, 'rdp', '{}', "
    "0.1, 'c', 'p', 's')",
])
def test_triggers_refuse_updates_and_deletes(tmp_path: Path, sql: str) -> None:
    path = build(tmp_path)
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="privacy ledger"):
        conn.execute(sql)
    conn.close()
    with open_ledger(tmp_path, config_hash=CONFIG) as led:  # still intact
        assert len(led.rows()) == 6


def _entry(**kw: object) -> LedgerEntry:
    base = dict(round=0, unit="client", mechanism="gaussian", clip=1.0, sigma_planned=1.0,
                sigma_effective=1.0, sample_rate=0.1, sites_planned=10, sites_survived=10,
                accountant="rdp", epsilon={"rdp": 0.5}, delta=1e-5)
    base.update(kw)
    return LedgerEntry(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, message", [
    ({"sigma_effective": 0.0}, "sigma_effective"),
    ({"sigma_planned": -1.0}, "sigma_planned"),
    ({"sigma_effective": math.inf}, "sigma_effective"),
    ({"clip": 0.0}, "clip"),
    ({"clip": math.nan}, "NaN"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 1.0}, "delta"),
    ({"sample_rate": 0.0}, "sample_rate"),
    ({"sample_rate": 1.5}, "sample_rate"),
    ({"epsilon": {"rdp": -0.1}}, "epsilon"),
    ({"epsilon": {"rdp": math.nan}}, "NaN"),
    ({"epsilon": {}}, "epsilon"),
    ({"epsilon": {"prv": 1.0}}, "accountant 'rdp' has no value"),
    ({"sites_survived": 11}, "sites_survived"),
    ({"sites_planned": -1}, "sites_planned"),
    ({"round": -1}, "round"),
    ({"round": 1.0}, "round"),
    ({"steps": 0}, "steps"),
    ({"unit": "patient"}, "unit"),
    ({"unit": "trajectory"}, "site id"),
    ({"site": "a"}, "site=None"),
    ({"mechanism": "gaußian"}, "printable ASCII"),
    ({"mechanism": 'a"b'}, "quote"),
    ({"mechanism": ""}, "non-empty"),
])
def test_bad_entries_are_refused(kw: dict, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        _entry(**kw)


def test_ordering_rules(tmp_path: Path) -> None:
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        led.append(_entry(round=3, epsilon={"rdp": 1.0}))
        with pytest.raises(LedgerError, match="not after the ledger's last round 3"):
            led.append(_entry(round=3, epsilon={"rdp": 2.0}))
        with pytest.raises(LedgerError, match="would decrease"):
            led.append(_entry(round=4, epsilon={"rdp": 0.9}))
        led.append(_entry(round=4, epsilon={"rdp": 1.0, "prv": math.inf}))  # inf is an over-count
        # trajectory level: one row per (round, site), per-site epsilon
        kw = dict(unit="trajectory", mechanism="dp-sgd", steps=40)
        led.append(_entry(round=5, site="h1", epsilon={"rdp": 2.0}, **kw))
        led.append(_entry(round=5, site="h2", epsilon={"rdp": 3.0}, **kw))
        with pytest.raises(LedgerError, match="already has a row for round 5, site h1"):
            led.append(_entry(round=5, site="h1", epsilon={"rdp": 2.5}, **kw))
        with pytest.raises(LedgerError, match="before the ledger's last round"):
            led.append(_entry(round=4, site="h3", epsilon={"rdp": 1.0}, **kw))
        led.append(_entry(round=6, site="h1", epsilon={"rdp": 2.5}, **kw))
        assert led.cumulative_epsilon_by_site()["h1"] == {"rdp": 2.5}
        assert led.cumulative_epsilon() == {"rdp": 3.0, "prv": math.inf}
        assert len(led.rows()) == 5
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        assert len(led.rows()) == 5  # refused appends left nothing behind


def test_closed_ledger_refuses_appends(tmp_path: Path) -> None:
    led = open_ledger(tmp_path, config_hash=CONFIG)
    led.close()
    with pytest.raises(LedgerError, match="closed"):
        led.append(_entry())


def test_a_second_writer_is_detected(tmp_path: Path) -> None:
    a = open_ledger(tmp_path, config_hash=CONFIG)
    b = open_ledger(tmp_path, config_hash=CONFIG)
    a.append(_entry(round=0))
    with pytest.raises(LedgerError, match="another writer"):
        b.append(_entry(round=1))
    a.close()
    b.close()
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        assert len(led.rows()) == 1


floats = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(clip=floats, sigma=floats, q=st.floats(min_value=1e-12, max_value=1.0),
       delta=st.floats(min_value=1e-300, max_value=0.999999),
       eps=st.lists(st.floats(min_value=0.0, allow_nan=False), min_size=1, max_size=3),
       site=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                           exclude_characters='"\\'), min_size=1, max_size=20))
def test_any_valid_entry_round_trips_bit_exactly(tmp_path_factory: pytest.TempPathFactory,
                                                 clip: float, sigma: float, q: float, delta: float,
                                                 eps: list[float], site: str) -> None:
    d = tmp_path_factory.mktemp("rt")
    e = LedgerEntry(round=7, unit="trajectory", site=site, mechanism="dp-sgd", clip=clip,
                    sigma_planned=sigma, sigma_effective=sigma, sample_rate=q, steps=3,
                    sites_planned=2, sites_survived=1, accountant="a0",
                    epsilon={f"a{i}": v for i, v in enumerate(eps)}, delta=delta)
    with open_ledger(d, config_hash=CONFIG) as led:
        row = led.append(e)
    with open_ledger(d, config_hash=CONFIG) as led:
        (back,) = led.rows()
    assert canonical_bytes(back) == canonical_bytes(row) and back.entry == e


# -- v2 members (FORMAT.md, "Privacy semantics (v2)"): what an entry refuses and normalises ------
@pytest.mark.parametrize("kw, message", [
    ({"threat_model": "everyone"}, r"'threat_model' must be one of \('server', 'release'\), got 'everyone'"),
    ({"sampling": "seeded"}, r"'sampling' must be one of \('secret', 'reproducible'\), got 'seeded'"),
    ({"epsilon_server": -1.0}, r"'epsilon_server' must be >= 0, got -1.0"),
    ({"epsilon_release": -0.5}, r"'epsilon_release' must be >= 0, got -0.5"),
    ({"epsilon_server": "1"}, r"'epsilon_server' must be a number"),
    ({"epsilon_release": math.nan}, r"'epsilon_release' is NaN"),
    ({"site_budget": 0.0}, r"'site_budget' must be > 0 \(\+inf allowed\), got 0.0"),
    ({"site_budget": -1.0}, r"'site_budget' must be > 0"),
    ({"site_budget": "8"}, r"'site_budget' must be a number"),
    ({"noise_shares": -1}, r"'noise_shares' must be in \[0, 2\^53\)"),
    ({"noise_shares": 1.0}, r"'noise_shares' must be an int"),
    ({"max_colluding": -1}, r"'max_colluding' must be in \[0, 2\^53\)"),
    ({"max_colluding": True}, r"'max_colluding' must be an int"),
    ({"params": [("a", 1.0)]}, r"'params' must be a mapping name -> number$"),
    ({"params": {"": 1.0}}, r"'params key' must be a non-empty string"),
    ({"params": {"gamma": "x"}}, r"'params\[gamma\]' must be a number"),
    ({"params": {"gamma": math.inf}}, r"'params\[gamma\]' must be finite$"),
    ({"params": {"gamma": math.nan}}, r"'params\[gamma\]' is NaN"),
    ({"participants": "ab"}, r"'participants' must be a sequence of site ids$"),
    ({"participants": 3}, r"'participants' must be a sequence of site ids$"),
    ({"participants": ("a", "")}, r"'participants' must be a non-empty string"),
    ({"participants": ("a", "b", "a")}, r"'participants' lists a site twice$"),
    ({"site_epsilon_server": [("a", 1.0)]}, r"'site_epsilon_server' must be a mapping site -> epsilon$"),
    ({"participants": ("a",), "site_epsilon_server": {"": 1.0}}, r"'site_epsilon_server key' must be"),
    ({"participants": ("a",), "site_epsilon_server": {"a": "1"}}, r"'site_epsilon_server\[a\]' must be a number"),
    ({"participants": ("a",), "site_epsilon_server": {"a": -1.0}}, r"'site_epsilon_server\[a\]' must be >= 0$"),
    ({"participants": ("a",), "site_epsilon_server": {"b": 1.0}},
     r"'site_epsilon_server' names a site that is not a participant$"),
])
def test_bad_v2_members_are_refused(kw: dict, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        _entry(**kw)


def test_v2_members_are_normalised() -> None:
    e = _entry(participants=["b", "a"], params={"padded_dim": 64, "gamma": 1},
               site_epsilon_server={"b": 2, "a": 1}, site_budget=8, epsilon_server=None,
               epsilon_release=0.25)
    assert e.participants == ("a", "b") and isinstance(e.participants, tuple)
    assert list(e.params) == ["gamma", "padded_dim"] and type(e.params) is dict
    assert all(type(v) is float for v in e.params.values())
    assert list(e.site_epsilon_server) == ["a", "b"] and type(e.site_epsilon_server) is dict
    assert all(type(v) is float for v in e.site_epsilon_server.values())
    assert e.site_budget == 8.0 and type(e.site_budget) is float
    assert e.epsilon_server == 0.5 and e.epsilon_release == 0.25  # None: the enforced epsilon
    assert type(e.epsilon_release) is float
    d = _entry()
    assert d.site_budget == math.inf and d.participants == () and d.params == {}
    assert d.epsilon_server == d.epsilon_release == 0.5
    assert _entry(site_budget=1e-300).site_budget == 1e-300  # > 0 is enough
    assert _entry(epsilon_server=0.0, epsilon_release=0.0).epsilon_server == 0.0
