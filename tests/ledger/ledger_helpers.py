"""Shared by tests/ledger and tests/audit: building ledgers and tampering with them like an attacker
(straight through sqlite3, dropping the triggers first)."""

from __future__ import annotations

import functools
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from secure_fedrl.ledger import LEDGER_FILE, LedgerEntry, PrivacyLedger, canonical_bytes
from secure_fedrl.ledger.format import LedgerRow, encode_epsilon, encode_v2

CONFIG = "cfg-sha256:0123abcd"


def key_dir_for(path: Path) -> Path:
    """The test key directory of a ledger: a sibling of its run directory, never inside it."""
    run = path.parent if path.suffix == ".sqlite" else path
    return run.parent / f"{run.name}.ledger-keys"


def open_ledger(path: Path, **kw) -> PrivacyLedger:
    """PrivacyLedger.open with the test key directory (unless a signing_key is given)."""
    if "signing_key" not in kw:
        kw.setdefault("key_dir", key_dir_for(Path(path)))
    return PrivacyLedger.open(path, **kw)
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 257))


@functools.lru_cache(maxsize=None)
def _curve(q: float, sigma: float) -> np.ndarray:
    return np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=ORDERS))


def rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """What a correct RDP accountant (Opacus, orders to 256) records after these compositions."""
    rdp = sum(k * _curve(q, s) for q, s, k in history)
    return float(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0])


def client_entries(n: int, **kw: float) -> list[LedgerEntry]:
    return list(_client_entries(n, **kw))


@functools.lru_cache(maxsize=None)
def _client_entries(n: int, *, q: float = 0.1, sigma: float = 1.0, delta: float = 1e-5,
                    start_round: int = 0) -> tuple[LedgerEntry, ...]:
    """n client-level rounds with honest cumulative epsilon (sigma_effective varies a little)."""
    out, history = [], []
    for i in range(n):
        s_eff = sigma * (1.0 - 0.02 * (i % 3))
        history.append((q, s_eff, 1))
        eps = rdp_epsilon(history, delta)
        out.append(LedgerEntry(round=start_round + i, unit="client", mechanism="ddg", clip=1.0,
                               sigma_planned=sigma, sigma_effective=s_eff, sample_rate=q,
                               sites_planned=20, sites_survived=20 - (i % 3), accountant="rdp",
                               epsilon={"rdp": eps, "prv": eps * 0.9}, delta=delta))
    return tuple(out)


def build(tmp: Path, n: int = 6) -> Path:
    with open_ledger(tmp, config_hash=CONFIG) as led:
        for e in client_entries(n):
            led.append(e)
    return tmp / LEDGER_FILE


@contextmanager
def attacker(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        yield conn
        conn.commit()
    finally:
        conn.close()


def _swap(conn: sqlite3.Connection, a: int, b: int) -> None:
    conn.execute("UPDATE rows SET seq = -1 WHERE seq = ?", (a,))
    conn.execute("UPDATE rows SET seq = ? WHERE seq = ?", (a, b))
    conn.execute("UPDATE rows SET seq = ? WHERE seq = -1", (b,))


def _delete_renumber(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM rows WHERE seq = 3")
    for s in range(4, 7):
        conn.execute("UPDATE rows SET seq = ? WHERE seq = ?", (s - 1, s))


def _stored_row(conn: sqlite3.Connection, seq: int) -> LedgerRow:
    from secure_fedrl.ledger.store import _COLUMNS, _row_from_sql
    return _row_from_sql(conn.execute(f"SELECT {_COLUMNS} FROM rows WHERE seq = ?", (seq,)).fetchone(),
                         strict=True)


def _foreign_append(conn: sqlite3.Connection) -> None:
    """A well-formed row 7 chained onto row 6 but signed by another Ed25519 key."""
    last = _stored_row(conn, 6)
    e = client_entries(7)[-1]
    row = LedgerRow(seq=7, time=last.time, config_hash=last.config_hash, prev_hash=last.hash,
                    signature="", entry=e)
    sig = Ed25519PrivateKey.generate().sign(canonical_bytes(row)).hex()
    conn.execute(
        "INSERT INTO rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (7, e.round, row.time, e.unit, e.site, e.mechanism, e.clip, e.sigma_planned,
         e.sigma_effective, e.sample_rate, e.steps, e.sites_planned, e.sites_survived, e.accountant,
         encode_epsilon(e.epsilon), e.delta, row.config_hash, row.prev_hash, sig, encode_v2(e)))


def _resign(conn: sqlite3.Connection) -> None:
    """Row 3's content untouched, its signature replaced by another key's over the same bytes."""
    sig = Ed25519PrivateKey.generate().sign(canonical_bytes(_stored_row(conn, 3))).hex()
    conn.execute("UPDATE rows SET signature = ? WHERE seq = 3", (sig,))


# name -> (tamper, first bad seq, reason)
TAMPERS: dict[str, tuple[Callable[[sqlite3.Connection], None], int, str]] = {
    "edit_middle": (lambda c: c.execute("UPDATE rows SET sigma_effective = 2.5 WHERE seq = 3"),
                    3, "edited"),
    "edit_epsilon_down": (lambda c: c.execute(
        "UPDATE rows SET epsilon = ? WHERE seq = 2", (encode_epsilon({"rdp": 0.01, "prv": 0.01}),)),
        2, "edited"),
    "edit_last": (lambda c: c.execute("UPDATE rows SET sites_survived = 1 WHERE seq = 6"),
                  6, "edited"),
    "edit_type": (lambda c: c.execute("UPDATE rows SET clip = 'one' WHERE seq = 4"), 4, "edited"),
    "delete_middle": (lambda c: c.execute("DELETE FROM rows WHERE seq = 3"), 3, "deleted"),
    "delete_first": (lambda c: c.execute("DELETE FROM rows WHERE seq = 1"), 1, "deleted"),
    "delete_last": (lambda c: c.execute("DELETE FROM rows WHERE seq = 6"), 6, "deleted"),
    "delete_renumber": (_delete_renumber, 3, "deleted"),
    "reorder": (lambda c: _swap(c, 3, 4), 3, "reordered"),
    "reorder_far": (lambda c: _swap(c, 2, 5), 2, "reordered"),
    "foreign_signature_appended": (_foreign_append, 7, "bad signature"),
    "resigned_by_other_key": (_resign, 3, "bad signature"),
    "row_config_hash": (lambda c: c.execute("UPDATE rows SET config_hash = 'other' WHERE seq = 2"),
                        2, "config hash mismatch"),
}
