"""Witnessed ledger (issue 8, item 7): sites countersign ledger heads, the ledger stores the
countersignatures, and audit/verify_ledger.py checks them, so that a server holding its own
ledger key still cannot rewrite history without the sites' keys."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import re
import shutil
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))
from ledger_helpers import CONFIG, attacker, build, client_entries, key_dir_for, open_ledger  # noqa: E402

from secure_fedrl.errors import LedgerError  # noqa: E402
from secure_fedrl.ledger import (  # noqa: E402
    LEDGER_FILE,
    PUBLIC_KEY_FILE,
    WITNESS_DOMAIN,
    read_witnesses,
    sign_witness,
    verify_witness,
    witness_message,
)

ROOT = Path(__file__).parents[2]
FORMAT_MD = (ROOT / "secure_fedrl" / "ledger" / "FORMAT.md").read_text()
SCRIPT = ROOT / "audit" / "verify_ledger.py"
_spec = importlib.util.spec_from_file_location("verify_ledger_witness_test", SCRIPT)
assert _spec and _spec.loader
vl = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = vl
_spec.loader.exec_module(vl)

FED = "witness-test"
SITE_KEYS = {s: Ed25519PrivateKey.from_private_bytes(hashlib.sha256(s.encode()).digest())
             for s in ("a", "b", "c", "d")}
PUB = {s: k.public_key().public_bytes_raw() for s, k in SITE_KEYS.items()}
# who takes part in each round (and countersigns the previous round's head)
PARTICIPANTS = [["a", "b", "c"], ["a", "c", "d"], ["b", "c", "d"], ["a", "b", "d"], ["a", "c"]]

CONFIG_TOML = f"""
[federation]
name = "{FED}"
[secure_aggregation]
enabled = true
max_colluding_sites = 0
[sampling]
fraction = 0.1
poisson = true
[privacy]
unit = "client"
mechanism = "ddg"
clip = 1.0
noise_multiplier = 1.0
delta = 1e-05
threat_model = "server"
"""


def _clock():
    """Deterministic row times, so that a rebuilt ledger reproduces the untouched rows' hashes."""
    ticks = itertools.count()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return lambda: t0 + timedelta(seconds=next(ticks))


def _head_kw(seq: int, row_hash: str) -> dict:
    return dict(federation=FED, seq=seq, row_hash=row_hash, config_hash=CONFIG)


# -- the message, sign / verify ---------------------------------------------------------------------
def _vector(name: str) -> str:
    m = re.search(rf"^{name}:\s+(\S+)\s*$", FORMAT_MD, re.M)
    assert m, name
    return m.group(1)


def test_format_md_witness_vector_matches_the_code_and_the_auditor() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    kw = dict(federation="demo", seq=2, config_hash="abc", row_hash=_vector("row_hash"))
    assert key.public_key().public_bytes_raw().hex() == _vector("witness_public_key")
    msg = witness_message(**kw)
    assert msg.hex() == _vector("witness_message")
    assert vl.witness_message("demo", 2, kw["row_hash"], "abc") == msg  # independent re-implementation
    assert msg.startswith(WITNESS_DOMAIN) and len(msg) == 31 + (4 + 4) + (4 + 3) + 8 + 32
    assert sign_witness(key, **kw).hex() == _vector("witness_signature")  # Ed25519 is deterministic


def test_sign_verify_round_trip_and_what_it_binds() -> None:
    h = hashlib.sha256(b"row").hexdigest()
    kw = _head_kw(3, h)
    sig = sign_witness(SITE_KEYS["a"], **kw)
    assert len(sig) == 64 and verify_witness(PUB["a"], sig, **kw)
    assert not verify_witness(PUB["b"], sig, **kw)  # another site's key
    bad = bytearray(sig)
    bad[5] ^= 1
    assert not verify_witness(PUB["a"], bytes(bad), **kw)
    for change in (dict(seq=4), dict(row_hash=hashlib.sha256(b"other").hexdigest()),
                   dict(federation="other-fed"), dict(config_hash="cfg-other")):
        assert not verify_witness(PUB["a"], sig, **{**kw, **change}), change
    assert not verify_witness(PUB["a"][:31], sig, **kw) and not verify_witness(PUB["a"], sig[:63], **kw)
    for bad_kw in (dict(seq=-1), dict(seq=True), dict(row_hash="AB" * 32), dict(row_hash="ab"),
                   dict(federation=""), dict(config_hash="x" * 257)):
        with pytest.raises(LedgerError, match="witness message"):
            witness_message(**{**kw, **bad_kw})


# -- the store ------------------------------------------------------------------------------------
def test_add_witness_refuses_bad_signature_wrong_seq_unknown_seq_and_duplicates(tmp_path: Path) -> None:
    build(tmp_path, 3)
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        rows = led.rows()
        sig2 = sign_witness(SITE_KEYS["a"], **_head_kw(2, rows[1].hash))
        led.add_witness(seq=2, site="a", public_key=PUB["a"], signature=sig2)
        with pytest.raises(LedgerError, match="already stored"):
            led.add_witness(seq=2, site="a", public_key=PUB["a"], signature=sig2)
        with pytest.raises(LedgerError, match="does not verify"):  # signed row 2, offered for row 3
            led.add_witness(seq=3, site="a", public_key=PUB["a"], signature=sig2)
        with pytest.raises(LedgerError, match="does not verify"):  # another key
            led.add_witness(seq=2, site="b", public_key=PUB["b"], signature=sig2)
        forged = sign_witness(SITE_KEYS["b"], **_head_kw(3, hashlib.sha256(b"x").hexdigest()))
        with pytest.raises(LedgerError, match="does not verify"):  # a head this ledger never had
            led.add_witness(seq=3, site="b", public_key=PUB["b"], signature=forged)
        for seq in (0, 4, -1):
            with pytest.raises(LedgerError, match="unknown ledger row"):
                led.add_witness(seq=seq, site="b", public_key=PUB["b"], signature=sig2)
        with pytest.raises(LedgerError, match="32 raw bytes"):
            led.add_witness(seq=2, site="b", public_key=PUB["b"].hex(), signature=sig2)
        with pytest.raises(LedgerError, match="64 bytes"):
            led.add_witness(seq=2, site="b", public_key=PUB["b"], signature=sig2[:10])
        assert led.witnesses() == [(2, "a", PUB["a"].hex(), sig2.hex())]
    with open_ledger(tmp_path, config_hash=CONFIG) as led:  # no federation given anywhere
        with pytest.raises(LedgerError, match="federation name is unknown"):
            led.add_witness(seq=3, site="b", public_key=PUB["b"],
                            signature=sign_witness(SITE_KEYS["b"], **_head_kw(3, led.head()[1])))
    with sqlite3.connect(tmp_path / LEDGER_FILE) as conn:  # triggers: append-only
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM witnesses")


def test_witnesses_survive_reopen_and_are_verified_on_open(tmp_path: Path) -> None:
    build(tmp_path, 3)
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        for seq, site in ((1, "a"), (3, "b"), (3, "a")):
            led.add_witness(seq=seq, site=site, public_key=PUB[site],
                            signature=sign_witness(SITE_KEYS[site], **_head_kw(seq, led.rows()[seq - 1].hash)))
        stored = led.witnesses()
    assert [(w[0], w[1]) for w in stored] == [(1, "a"), (3, "a"), (3, "b")]
    assert read_witnesses(tmp_path) == stored
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        assert led.witnesses() == stored
    with attacker(tmp_path / LEDGER_FILE) as conn:
        conn.execute("UPDATE witnesses SET signature = ? WHERE seq = 3 AND site = 'b'",
                     (stored[2][3][:40] + ("0" if stored[2][3][40] != "0" else "1") + stored[2][3][41:],))  # a middle hex digit: always a change
    with pytest.raises(LedgerError, match="witness of site 'b' for row 3 does not verify"):
        open_ledger(tmp_path, config_hash=CONFIG, federation=FED)


def test_a_ledger_written_before_witnesses_opens_and_gains_the_table(tmp_path: Path) -> None:
    build(tmp_path, 2)
    with attacker(tmp_path / LEDGER_FILE) as conn:
        conn.execute("DROP TABLE witnesses")
    assert read_witnesses(tmp_path) == []
    assert vl.load(tmp_path).witnesses == []
    assert vl.main([str(tmp_path), "--public-key-file", str(key_dir_for(tmp_path) / PUBLIC_KEY_FILE),
                    "--ledger-only", "--no-epsilon", "--quiet"]) == 0
    with open_ledger(tmp_path, config_hash=CONFIG, federation=FED) as led:
        assert led.witnesses() == []
        led.add_witness(seq=2, site="c", public_key=PUB["c"],
                        signature=sign_witness(SITE_KEYS["c"], **_head_kw(*led.head())))
    assert [w[:2] for w in read_witnesses(tmp_path)] == [(2, "c")]


# -- a witnessed run directory, and the audit --------------------------------------------------------
def _witnessed_run(tmp_path: Path, participants=PARTICIPANTS, *, entries=None,
                   witness=True) -> Path:
    """A run directory as the runtime writes it with witnessing: in round r the participants
    countersign the head of round r - 1 before round r's row is appended; metrics.jsonl records
    the head after each round and the head that round's participants were expected to witness."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.resolved.toml").write_text(CONFIG_TOML)
    (run / "config.fingerprint").write_text(CONFIG)
    (run / "witness_keys.json").write_text(json.dumps({s: k.hex() for s, k in PUB.items()}))
    entries = entries or client_entries(len(participants))
    metrics = []
    with open_ledger(run, config_hash=CONFIG, federation=FED, clock=_clock()) as led:
        for e, sites in zip(entries, participants):
            seq, h = led.head()
            if witness and seq > 0:
                for s in sites:
                    led.add_witness(seq=seq, site=s, public_key=PUB[s],
                                    signature=sign_witness(SITE_KEYS[s], **_head_kw(seq, h)))
            led.append(e)
            m = {"round": e.round, "ledger_head": dict(zip(("seq", "row_hash"), led.head()))}
            if witness:
                m["witness_expected"] = {"seq": seq, "sites": {s: PUB[s].hex() for s in sites}}
            metrics.append(m)
            (run / "checkpoints" / f"round-{e.round:05d}.pt").write_bytes(b"")
    _write_run_files(run, metrics)
    return run


def _write_run_files(run: Path, metrics: list[dict]) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "state.json").write_text(json.dumps({"round": metrics[-1]["round"],
                                                "ledger_head": metrics[-1]["ledger_head"]}))


def _pinned_keys(tmp_path: Path) -> str:
    """The sites' keys as the auditor obtained them out of band (outside the run directory)."""
    path = tmp_path / "pinned_witness_keys.json"
    path.write_text(json.dumps({s: k.hex() for s, k in PUB.items()}))
    return str(path)


def _audit(run: Path, tmp_path: Path, *extra: str, capsys) -> tuple[int, list[str]]:
    code = vl.main([str(run), "--public-key-file", str(key_dir_for(run) / PUBLIC_KEY_FILE),
                    "--witness-keys", _pinned_keys(tmp_path), "--no-epsilon", "--quiet", *extra])
    return code, capsys.readouterr().out.splitlines()


def test_the_audit_passes_on_a_witnessed_run(tmp_path: Path, capsys) -> None:
    run = _witnessed_run(tmp_path)
    code, out = _audit(run, tmp_path, "--require-witnesses", "2", capsys=capsys)
    assert code == 0, out
    # rounds 1..4 countersign the heads of rounds 0..3 (seq 1..4); the last round's is unwitnessed
    assert "witnesses: 11 countersignatures of 4 heads by 4 sites verify over the ledger's row " \
           "hashes, 11 expected by metrics.jsonl all present; rows 1..4 are witnessed (rewriting " \
           "them needs the sites' keys)" in out, out
    code, out = _audit(run, tmp_path, "--require-witnesses", "3", capsys=capsys)
    assert code == 2 and any("FAIL: row seq 4: under-witnessed" in line for line in out), out


def test_site_keys_from_the_run_directory_are_not_a_pin(tmp_path: Path, capsys) -> None:
    run = _witnessed_run(tmp_path)
    code = vl.main([str(run), "--public-key-file", str(key_dir_for(run) / PUBLIC_KEY_FILE),
                    "--no-epsilon", "--quiet"])
    out = capsys.readouterr().out
    assert code == 3 and "NOT PINNED (witnesses)" in out and "witness_keys.json" in out, out
    # the server forges a "site" key of its own, re-signs the witnesses and rewrites the copy
    fake = Ed25519PrivateKey.generate()
    with attacker(run / LEDGER_FILE) as conn:
        hashes = {s: h for s, h in conn.execute("SELECT seq, row_hash FROM witnesses WHERE site = 'a'")}
        for seq, h in hashes.items():
            conn.execute("UPDATE witnesses SET public_key = ?, signature = ? WHERE seq = ? AND site = 'a'",
                         (fake.public_key().public_bytes_raw().hex(),
                          sign_witness(fake, **_head_kw(seq, h)).hex(), seq))
    keys = json.loads((run / "witness_keys.json").read_text())
    keys["a"] = fake.public_key().public_bytes_raw().hex()
    (run / "witness_keys.json").write_text(json.dumps(keys))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        if "a" in m["witness_expected"]["sites"]:
            m["witness_expected"]["sites"]["a"] = keys["a"]
    _write_run_files(run, metrics)
    code = vl.main([str(run), "--public-key-file", str(key_dir_for(run) / PUBLIC_KEY_FILE),
                    "--no-epsilon", "--quiet"])
    assert code == 3  # consistent with the run directory's own copy: never 0 without a pin
    capsys.readouterr()
    code, out = _audit(run, tmp_path, capsys=capsys)
    assert code == 2 and any(line.startswith("FAIL: row seq 1: wrong witness key: witness of site 'a'")
                             for line in out), out


def test_a_witness_signature_removed_is_caught_by_the_audit(tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    """(a) one witness row deleted from SQLite."""
    run = _witnessed_run(tmp_path)
    with attacker(run / LEDGER_FILE) as conn:
        assert conn.execute("DELETE FROM witnesses WHERE seq = 3 AND site = 'b'").rowcount == 1
    code, out = _audit(run, tmp_path, capsys=capsys)
    assert code == 2
    assert out == ["FAIL: row seq 3: missing witness: site 'b' was expected (metrics.jsonl round 3) "
                   "to countersign row 3; the ledger has no witness of it"], out
    # the finding is this check's: without it the tampered run would pass
    monkeypatch.setattr(vl, "check_witnesses", lambda *a, **k: ([], vl.WitnessReport()))
    code, out = _audit(run, tmp_path, capsys=capsys)
    assert code == 0, out


def test_an_altered_witness_signature_is_caught(tmp_path: Path, capsys) -> None:
    """(b) a witness signature altered."""
    run = _witnessed_run(tmp_path)
    with attacker(run / LEDGER_FILE) as conn:
        (sig,) = conn.execute("SELECT signature FROM witnesses WHERE seq = 2 AND site = 'd'").fetchone()
        flipped = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
        conn.execute("UPDATE witnesses SET signature = ? WHERE seq = 2 AND site = 'd'", (flipped,))
    code, out = _audit(run, tmp_path, capsys=capsys)
    assert code == 2
    assert len(out) == 1 and out[0].startswith(
        "FAIL: row seq 2: bad witness signature: witness of site 'd' for row 2"), out


def _rewrite_history(run: Path, *, keep_witnesses: bool, keep_expected: bool) -> None:
    """(c) the server rewrites round 1's row (a site left out: lower spend) and re-signs the whole
    chain with its own key (it holds it), then rewrites metrics.jsonl and state.json to match."""
    entries = client_entries(len(PARTICIPANTS))
    forged = [entries[0], dataclasses.replace(entries[1], sites_survived=entries[1].sites_survived - 5),
              *entries[2:]]
    old_witnesses = sqlite3.connect(run / LEDGER_FILE).execute(
        "SELECT seq, site, public_key, signature, row_hash FROM witnesses").fetchall()
    old_metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for f in run.glob("privacy_ledger.sqlite*"):
        f.unlink()
    metrics = []
    with open_ledger(run, config_hash=CONFIG, clock=_clock()) as led:
        for e, m in zip(forged, old_metrics):
            led.append(e)
            m = dict(m, ledger_head=dict(zip(("seq", "row_hash"), led.head())))
            if not keep_expected:
                m.pop("witness_expected")
            metrics.append(m)
    if keep_witnesses:
        with attacker(run / LEDGER_FILE) as conn:
            conn.executemany("INSERT INTO witnesses VALUES (?, ?, ?, ?, ?)", old_witnesses)
    _write_run_files(run, metrics)


def test_a_history_rewritten_and_resigned_with_the_servers_key_is_caught(tmp_path: Path, capsys) -> None:
    run = _witnessed_run(tmp_path)
    _rewrite_history(run, keep_witnesses=True, keep_expected=True)
    code, out = _audit(run, tmp_path, capsys=capsys)
    assert code == 2, out
    # row 1 is untouched (its witness still holds); every witnessed head from row 2 on is rewritten
    assert not any(line.startswith("FAIL: row seq 1:") for line in out), out
    assert out[0].startswith("FAIL: row seq 2: rewritten: witness of site 'b' for row 2: the site "
                             "countersigned row 2 with hash"), out
    assert {line.split(":")[1] for line in out} == {" row seq 2", " row seq 3", " row seq 4"}
    assert len(out) == 8 and all(": rewritten: " in line for line in out), out
    # the chain, metrics and state alone are consistent: only the witnesses tell
    vl.verify(vl.load(run))
    with_no_witness_check = vl.check_run(vl.load(run), run)[0]
    assert with_no_witness_check == []


def test_a_rewrite_that_also_drops_the_witnesses_needs_require_witnesses(tmp_path: Path, capsys) -> None:
    run = _witnessed_run(tmp_path)
    _rewrite_history(run, keep_witnesses=False, keep_expected=True)
    code, out = _audit(run, tmp_path, capsys=capsys)
    assert code == 2 and sum("missing witness" in line for line in out) == 11, out
    # ... and strips the expectations from metrics.jsonl too: the ledger alone still tells
    run2 = _witnessed_run(tmp_path / "second")
    _rewrite_history(run2, keep_witnesses=False, keep_expected=False)
    code, out = _audit(run2, tmp_path, capsys=capsys)
    assert code == 0 and any(line.startswith("witnesses: none recorded") for line in out), out
    code, out = _audit(run2, tmp_path, "--require-witnesses", "1", capsys=capsys)
    assert code == 2 and out[0].startswith("FAIL: row seq 1: unwitnessed: rows 1..4 (rounds before "
                                           "the last, 4)"), out


def test_witness_rows_beyond_the_ledger_and_malformed_expectations(tmp_path: Path, capsys) -> None:
    run = _witnessed_run(tmp_path)
    snap = tmp_path / "snap"
    shutil.copytree(run, snap)
    shutil.copytree(key_dir_for(run), key_dir_for(snap))
    # rolled back to a validly signed 3-row ledger (same key), the witnesses kept
    old_witnesses = sqlite3.connect(run / LEDGER_FILE).execute(
        "SELECT seq, site, public_key, signature, row_hash FROM witnesses").fetchall()
    for f in run.glob("privacy_ledger.sqlite*"):
        f.unlink()
    with open_ledger(run, config_hash=CONFIG, clock=_clock()) as led:
        for e in client_entries(len(PARTICIPANTS))[:3]:
            led.append(e)
    with attacker(run / LEDGER_FILE) as conn:
        conn.executemany("INSERT INTO witnesses VALUES (?, ?, ?, ?, ?)", old_witnesses)
    code, out = _audit(run, tmp_path, capsys=capsys)
    assert code == 2
    assert "FAIL: run: rolled back: witness of site 'a' for row 4: the ledger ends at row 3 (an " \
           "older copy of the ledger, or rows deleted)" in out, out
    assert "FAIL: run: rolled back: metrics.jsonl round 4 expected witnesses of ledger row 4, the " \
           "ledger ends at row 3" in out, out
    assert not any("row seq 1" in line or "row seq 2" in line or "row seq 3" in line
                   for line in out), out  # the kept rows' witnesses still verify
    metrics = [json.loads(line) for line in (snap / "metrics.jsonl").read_text().splitlines()]
    metrics[2]["witness_expected"] = {"seq": "three", "sites": []}
    (snap / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    code, out = _audit(snap, tmp_path, capsys=capsys)
    assert code == 2 and any("bad run file: metrics.jsonl round 2: witness_expected is malformed"
                             in line for line in out), out
    bad_pin = tmp_path / "bad.json"
    bad_pin.write_text('{"a": "xyz"}')
    code = vl.main([str(snap), "--witness-keys", str(bad_pin), "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert code == 2 and len(out) == 1 and out[0].startswith("FAIL: ledger: bad pin: --witness-keys"), out


def test_an_unwitnessed_run_audits_as_before(tmp_path: Path, capsys) -> None:
    run = _witnessed_run(tmp_path, witness=False)
    code, out = _audit(run, tmp_path, capsys=capsys)
    assert code == 0 and any(line.startswith("witnesses: none recorded") for line in out), out
    code, out = _audit(run, tmp_path, "--require-witnesses", "1", capsys=capsys)
    assert code == 2 and any("unwitnessed" in line for line in out), out
