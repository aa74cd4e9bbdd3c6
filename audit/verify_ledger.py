#!/usr/bin/env python3
"""Independent verifier of a secure-fedrl privacy ledger (format v2) and its run directory.

    python audit/verify_ledger.py RUN_DIR_OR_LEDGER (--public-key HEX | --public-key-file FILE)
                                  [--config-hash H] [--ledger-only] [--allow-reproducible]
                                  [--no-epsilon] [--quiet] [--witness-keys FILE]
                                  [--federation NAME] [--require-witnesses N]

Re-implements, from secure_fedrl/ledger/FORMAT.md alone, the canonical row encoding, the hash
chain, the Ed25519 signatures and the signed head (sqlite3, hashlib, json, cryptography). It
imports nothing from secure_fedrl and no DP library: its accountant is written here, from the
papers, so that it shares no code with the accountant the server charged with:

* Poisson-subsampled Gaussian RDP, Mironov, Talwar, Zhang 2019 ("Renyi DP of the Sampled Gaussian
  Mechanism"), Section 3.3: the integer-order binomial sum and the fractional-order series,
  both in log space;
* the distributed discrete Gaussian bound the project charges (Kairouz, Liu, Steinke 2021,
  Thm. 1 / Prop. 14 with m honest shares) and its secret-sampling mixture bound (FORMAT.md, v2);
* RDP -> (epsilon, delta) by Balle et al. 2020, Thm. 21 (= Canonne, Kamath, Steinke 2020),
  minimised over a grid that is a superset of the server's (fractional and integer orders to
  1024), then refined over real orders wherever a recorded value is below the grid's optimum, so
  a recorder with a finer grid is never flagged.

It also checks the run directory against the ledger: a ledger rolled back to an older, validly
signed copy (the attacker may hold the signing key) no longer contains the ledger head that
metrics.jsonl, state.json and the checkpoints recorded, or ends before their last round; and the
recorded mechanism parameters against config.resolved.toml. And the witnesses (FORMAT.md,
"Witnesses"): every site countersignature of a ledger head verifies under that site's pinned key
(--witness-keys) over the ledger's own row hash, and every site metrics.jsonl expected to
witness a head did: a server holding its ledger key still cannot rewrite a witnessed history.

Output: optionally a table, then one line per finding, "FAIL: row seq K: <reason>: <detail>"
(first disagreeing row first), or "OK: ...". Exit 0 only when everything agrees AND the public
key was pinned (--public-key / --public-key-file) AND the run directory was checked (or
--ledger-only was given); 2 on any finding; 3 when the ledger is internally consistent but the
key was not pinned, the run files were absent, or witnesses were checked against the run
directory's own witness_keys.json instead of --witness-keys (only internal consistency was checked).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sqlite3
import struct
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

LEDGER_FILE = "privacy_ledger.sqlite"
SCHEMA_VERSION = "2"
ROW_FORMAT = "secure-fedrl/ledger-row/v2"
HEAD_FORMAT = "secure-fedrl/ledger-head/v1"
GENESIS = "0" * 64
WITNESS_DOMAIN = b"secure-fedrl/ledger-witness/v1\x00"
WITNESS_KEYS_FILE = "witness_keys.json"
COLUMNS = ("seq", "round", "time", "unit", "site", "mechanism", "clip", "sigma_planned",
           "sigma_effective", "sample_rate", "steps", "sites_planned", "sites_survived",
           "accountant", "epsilon", "delta", "config_hash", "prev_hash", "signature", "privacy")
FLOATS = ("clip", "sigma_planned", "sigma_effective", "sample_rate", "delta")
INTS = ("seq", "round", "steps", "sites_planned", "sites_survived")
STRINGS = ("time", "unit", "mechanism", "accountant", "config_hash", "prev_hash")
V2_KEYS = ("epsilon_release", "epsilon_server", "max_colluding", "noise_shares", "params",
           "participants", "sampling", "site_budget", "site_epsilon_server", "threat_model")
DDG_PARAMS = ("beta", "bits", "gamma", "l2_bound", "local_stddev", "padded_dim")
REL_TOL = 1e-6
_HEX16 = re.compile(r"[0-9a-f]{16}")

# The server's grid (FORMAT.md, "The per-row RDP charge"): the auditor's grid contains all of it.
SERVER_ORDERS = sorted(set(
    [1.0 + x / 100.0 for x in range(1, 10)] + [1.0 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(11, 64)] + [float(a) for a in range(64, 129, 2)]
    + [float(a) for a in range(136, 257, 8)] + [320.0, 384.0, 448.0, 512.0]))
ORDERS = sorted(set(SERVER_ORDERS) | {1.0 + x / 200.0 for x in range(1, 200)}
                | {float(a) for a in range(2, 257)} | {float(a) for a in range(258, 513, 2)}
                | {float(a) for a in range(520, 1025, 8)} | {a + 0.5 for a in range(2, 64)})


class AuditFailure(Exception):
    def __init__(self, seq: int | None, reason: str, detail: str) -> None:
        self.seq, self.reason, self.detail = seq, reason, detail
        where = f"row seq {seq}" if seq is not None else "ledger"
        super().__init__(f"{where}: {reason}: {detail}")


@dataclass
class Ledger:
    meta: dict[str, str]
    rows: list[dict[str, Any]]
    head: tuple[int, str, str] | None
    path: Path = field(default_factory=Path)
    witnesses: list[dict[str, Any]] = field(default_factory=list)


# -- reading -------------------------------------------------------------------------------------
def load(target: str | Path) -> Ledger:
    """Read a ledger read-only: the -wal file is honoured, the ledger file is never modified."""
    path = Path(target)
    if path.is_dir():
        path = path / LEDGER_FILE
    if not path.is_file():
        raise AuditFailure(None, "missing", f"no ledger file at {path}")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            have = {r[1] for r in conn.execute("PRAGMA table_info(rows)").fetchall()}
            cols = [c for c in COLUMNS if c in have]
            cur = conn.execute(f"SELECT {', '.join(cols)} FROM rows ORDER BY seq")
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
            head = conn.execute("SELECT seq, row_hash, signature FROM head WHERE id = 1").fetchone()
            witnesses: list[dict[str, Any]] = []
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                            "'witnesses'").fetchone():  # absent in ledgers written before it
                wcols = ("seq", "site", "public_key", "signature", "row_hash")
                have = {r[1] for r in conn.execute("PRAGMA table_info(witnesses)").fetchall()}
                sel = ", ".join(c if c in have else "NULL" for c in wcols)
                witnesses = [dict(zip(wcols, r)) for r in
                             conn.execute(f"SELECT {sel} FROM witnesses ORDER BY seq, site")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise AuditFailure(None, "unreadable", f"{path}: {exc}") from None
    return Ledger(meta=meta, rows=rows, head=tuple(head) if head else None, path=path,
                  witnesses=witnesses)


# -- the encoding of FORMAT.md ---------------------------------------------------------------------
def f64(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"expected a REAL, got {x!r}")
    return struct.pack(">d", float(x)).hex()


def from_f64(text: Any) -> float:
    if not isinstance(text, str) or not _HEX16.fullmatch(text):
        raise ValueError(f"not a float string: {text!r}")
    return struct.unpack(">d", bytes.fromhex(text))[0]


def _text(x: Any) -> str:
    if not isinstance(x, str) or not x or len(x) > 256 or any(
            not 0x20 <= ord(c) <= 0x7E or c in '"\\' for c in x):
        raise ValueError(f"not a ledger string: {x!r}")
    return x


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**53:
        raise ValueError(f"not a ledger integer: {x!r}")
    return x


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _float_object(obj: Any, what: str) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} is not a JSON object")
    for k, v in obj.items():
        _text(k)
        from_f64(v)
    return obj


def epsilon_of(row: dict[str, Any]) -> dict[str, float]:
    obj = json.loads(row["epsilon"])
    if not isinstance(obj, dict) or not obj:
        raise ValueError("epsilon column is not a non-empty JSON object")
    return {_text(k): from_f64(v) for k, v in obj.items()}


def v2_of(row: dict[str, Any]) -> dict[str, Any]:
    """The `privacy` column's nine members, type-checked (FORMAT.md, "New keys")."""
    if "privacy" not in row:
        raise ValueError("no privacy column (not a v2 ledger)")
    obj = json.loads(row["privacy"])
    if not isinstance(obj, dict) or sorted(obj) != sorted(V2_KEYS):
        raise ValueError(f"privacy column does not hold exactly {V2_KEYS}")
    for k in ("epsilon_release", "epsilon_server", "site_budget"):
        from_f64(obj[k])
    for k in ("max_colluding", "noise_shares"):
        _int(obj[k])
    _float_object(obj["params"], "params")
    _float_object(obj["site_epsilon_server"], "site_epsilon_server")
    parts = obj["participants"]
    if not isinstance(parts, list) or any(_text(p) != p for p in parts):
        raise ValueError("participants is not a list of strings")
    _text(obj["sampling"])
    _text(obj["threat_model"])
    return obj


def canonical(row: dict[str, Any], seq: int | None = None) -> bytes:
    """Canonical bytes of a row as stored (or as if it had sequence number `seq`)."""
    obj: dict[str, Any] = dict(v2_of(row))
    obj["format"] = ROW_FORMAT
    for k in FLOATS:
        obj[k] = f64(row[k])
    for k in INTS:
        obj[k] = _int(row[k])
    for k in STRINGS:
        obj[k] = _text(row[k])
    obj["site"] = None if row["site"] is None else _text(row["site"])
    obj["epsilon"] = {k: f64(v) for k, v in epsilon_of(row).items()}
    if seq is not None:
        obj["seq"] = seq
    return _dumps(obj)


def head_canonical(seq: int, row_hash: str, config_hash: str) -> bytes:
    return _dumps({"config_hash": config_hash, "format": HEAD_FORMAT, "row_hash": row_hash,
                   "seq": seq})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verifies(key: Ed25519PublicKey, sig_hex: Any, message: bytes) -> bool:
    try:
        key.verify(bytes.fromhex(sig_hex), message)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


# -- the chain -------------------------------------------------------------------------------------
def verify(ledger: Ledger, *, public_key: str | None = None, config_hash: str | None = None) -> None:
    """Raise AuditFailure for the first bad row (FORMAT.md, "Verification")."""
    meta = ledger.meta
    if meta.get("format") != "secure-fedrl-ledger" or meta.get("schema_version") != SCHEMA_VERSION:
        raise AuditFailure(None, "not a ledger", f"meta format {meta.get('format')!r} schema "
                           f"{meta.get('schema_version')!r} (this auditor reads schema "
                           f"{SCHEMA_VERSION})")
    if public_key is not None and meta.get("public_key") != public_key.lower():
        raise AuditFailure(None, "wrong key", f"ledger public key {meta.get('public_key')} is not "
                           f"the pinned {public_key.lower()}")
    cfg = meta.get("config_hash")
    if config_hash is not None and cfg != config_hash:
        raise AuditFailure(1 if ledger.rows else None, "config hash mismatch",
                           f"ledger is for config {cfg!r}, expected {config_hash!r}")
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(meta.get("public_key", "")))
    except ValueError:
        raise AuditFailure(None, "bad key", "meta.public_key is not a 32-byte Ed25519 key") from None
    rows = ledger.rows
    prev = GENESIS
    for pos, row in enumerate(rows):
        expected = pos + 1
        seq = row["seq"]
        if seq != expected:
            if any(r["seq"] == expected for r in rows[pos + 1:]):
                raise AuditFailure(expected, "reordered", f"row seq {expected} appears after seq {seq}")
            gap = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}..{seq - 1}"
            raise AuditFailure(expected, "deleted", f"{gap} missing before row seq {seq}")
        try:
            body = canonical(row)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            raise AuditFailure(seq, "edited", f"row is not well-formed: {exc}") from None
        if row["config_hash"] != cfg:
            raise AuditFailure(seq, "config hash mismatch", f"row written for config "
                               f"{row['config_hash']!r}, ledger is for {cfg!r}")
        h = sha256_hex(body)
        if not _verifies(key, row["signature"], body):
            _why_bad_signature(rows, pos, key, h, ledger.head)
        if row["prev_hash"] != prev:
            raise AuditFailure(seq, "chain broken", "prev_hash does not match the previous row "
                               "although the row is signed")
        row["_hash"] = h
        prev = h
    if ledger.head is None:
        raise AuditFailure(None, "deleted", "the signed head is missing")
    hseq, hhash, hsig = ledger.head
    if not _verifies(key, hsig, head_canonical(hseq, hhash, cfg or "")):
        raise AuditFailure(None, "bad signature", "the ledger head's signature is invalid")
    n = len(rows)
    if hseq > n:
        gap = f"seq {n + 1}" if hseq == n + 1 else f"seqs {n + 1}..{hseq}"
        raise AuditFailure(n + 1, "deleted", f"{gap} missing: the signed head records {hseq} rows, "
                           f"found {n}")
    if hseq < n:
        raise AuditFailure(hseq + 1, "stale head", f"the signed head stops at seq {hseq}")
    if hhash != prev:
        raise AuditFailure(n or None, "edited", "last row does not match the signed head")


def _signed_as(row: dict[str, Any], key: Ed25519PublicKey, seqs: Iterable[int]) -> int | None:
    for s in seqs:
        try:
            if s != row["seq"] and _verifies(key, row["signature"], canonical(row, seq=s)):
                return s
        except (ValueError, TypeError, KeyError, json.JSONDecodeError):
            return None
    return None


def _why_bad_signature(rows: list[dict[str, Any]], pos: int, key: Ed25519PublicKey, h: str,
                       head: tuple[int, str, str] | None) -> None:
    row = rows[pos]
    seq = row["seq"]
    seqs = range(1, len(rows) + 2 + (head[0] if head else 0))
    true_seq = _signed_as(row, key, seqs)
    if true_seq is not None:
        if any(_signed_as(r, key, [seq]) == seq for r in rows):
            raise AuditFailure(seq, "reordered", f"the row stored as seq {seq} was signed as seq "
                               f"{true_seq}")
        if true_seq > seq:
            raise AuditFailure(seq, "deleted", f"the row stored as seq {seq} was signed as seq "
                               f"{true_seq}: rows deleted and the rest renumbered")
        raise AuditFailure(seq, "reordered", f"the row stored as seq {seq} was signed as seq "
                           f"{true_seq}")
    if pos + 1 < len(rows):
        link = rows[pos + 1]["prev_hash"]
    elif head is not None and head[0] == seq:
        link = head[1]
    else:
        raise AuditFailure(seq, "bad signature", "signature invalid under the ledger key (row "
                           "edited or signed by another key)")
    if link != h:
        raise AuditFailure(seq, "edited", "content differs from what the next link committed to, "
                           "and the signature does not match it")
    raise AuditFailure(seq, "bad signature", "content matches the chain but the signature is not "
                       "by the ledger key")


# -- the auditor's own accountant ------------------------------------------------------------------
def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def _logsubexp(a: float, b: float) -> float:
    """log(e^a - e^b) for a >= b (the series below is a difference of positive sums)."""
    if b == -math.inf:
        return a
    if b >= a:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def _log_binom(n: float, k: int) -> tuple[float, int]:
    """log|C(n, k)| and its sign, for real n >= 0 and integer k >= 0."""
    if float(n).is_integer() and k > n:
        return -math.inf, 0
    sign = 1
    if not float(n).is_integer() and k > n:
        # C(n, k) = n (n-1) ... (n-k+1) / k!: the factors (n - j) for j > n are negative.
        sign = -1 if (k - math.floor(n) - 1) % 2 == 1 else 1
    val = math.lgamma(n + 1) - math.lgamma(k + 1)
    # lgamma(n - k + 1) of a possibly negative non-integer argument: use |Gamma|.
    val -= math.lgamma(n - k + 1)
    return val, sign


def _log_erfc(x: float) -> float:
    """log(erfc(x)), stable for large x (asymptotic expansion where erfc underflows)."""
    if x < 25.0:
        v = math.erfc(x)
        if v > 0.0:
            return math.log(v)
    # erfc(x) ~ exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6))
    r = 1.0 / (x * x)
    return -x * x - math.log(x) - 0.5 * math.log(math.pi) + math.log1p(
        -0.5 * r + 0.75 * r * r - 1.875 * r ** 3)


def _psg_log_a_int(q: float, z: float, alpha: int) -> float:
    """log A_alpha = log sum_k C(alpha,k) (1-q)^(alpha-k) q^k exp((k^2-k)/(2 z^2)) (MTZ 2019, 3.3)."""
    acc = -math.inf
    lq, l1q = math.log(q), math.log1p(-q)
    for k in range(alpha + 1):
        lb = math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        acc = _logaddexp(acc, lb + k * lq + (alpha - k) * l1q + (k * k - k) / (2.0 * z * z))
    return acc


def _psg_log_a_frac(q: float, z: float, alpha: float) -> float:
    """log A_alpha for real alpha > 1 (MTZ 2019, 3.3: the two-sided series with erfc tails)."""
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = z * z * math.log(1.0 / q - 1.0) + 0.5
    lq, l1q = math.log(q), math.log1p(-q)
    k = 0
    while True:
        lb, sign = _log_binom(alpha, k)
        j = alpha - k
        lt0 = lb + k * lq + j * l1q
        lt1 = lb + j * lq + k * l1q
        le0 = math.log(0.5) + _log_erfc((k - z0) / (math.sqrt(2.0) * z))
        le1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2.0) * z))
        ls0 = lt0 + (k * k - k) / (2.0 * z * z) + le0
        ls1 = lt1 + (j * j - j) / (2.0 * z * z) + le1
        if sign > 0:
            log_a0, log_a1 = _logaddexp(log_a0, ls0), _logaddexp(log_a1, ls1)
        else:
            log_a0, log_a1 = _logsubexp(log_a0, ls0), _logsubexp(log_a1, ls1)
        k += 1
        if k > alpha + 1 and max(ls0, ls1) < -30.0:
            break
        if k > 100_000:
            raise ArithmeticError("fractional-order series did not converge")
    return _logaddexp(log_a0, log_a1)


def rdp_psg(q: float, z: float, alpha: float) -> float:
    """RDP at order alpha of the Poisson-subsampled Gaussian (rate q, noise multiplier z)."""
    if q <= 0.0:
        return 0.0
    if z <= 0.0 or math.isinf(alpha):
        return math.inf
    if q >= 1.0:
        return alpha / (2.0 * z * z)
    if float(alpha).is_integer():
        return _psg_log_a_int(q, z, int(alpha)) / (alpha - 1.0)
    return _psg_log_a_frac(q, z, alpha) / (alpha - 1.0)


@dataclass(frozen=True)
class DDG:
    """The base curve the project charges a ddg round with (FORMAT.md, "DDG")."""

    clip: float
    gamma: float
    beta: float
    local_stddev: float
    padded_dim: float
    shares: int

    @property
    def l2_bound(self) -> float:
        c, d = self.clip / self.gamma, self.padded_dim
        plain = c + math.sqrt(d)
        if self.beta <= 0.0:
            return plain
        cond = math.sqrt(c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / self.beta))
                         * (c + math.sqrt(d) / 2.0))
        return min(plain, cond)

    def eps(self, alpha: float) -> float:
        m, d = self.shares, self.padded_dim
        s = self.local_stddev / self.gamma
        d2 = self.l2_bound
        d1 = d2 * min(math.sqrt(d), d2)
        tau = 10.0 * sum(math.exp(-2.0 * math.pi ** 2 * s * s * k / (k + 1.0)) for k in range(1, m))
        l2 = d2 / (math.sqrt(m) * s)
        l1 = d1 / (math.sqrt(m) * s)
        return min(alpha / 2.0 * l2 * l2 + tau * d,
                   alpha / 2.0 * (l2 * l2 + 2.0 * l1 * tau + tau * tau * d),
                   alpha / 2.0 * (l2 + math.sqrt(d) * tau) ** 2)

    def eps_release(self, alpha: float, q: float) -> float:
        """log(1 - q + q exp((alpha-1) eps_m(alpha))) / (alpha - 1), in log space."""
        x = (alpha - 1.0) * self.eps(alpha)
        if q >= 1.0:
            return x / (alpha - 1.0)
        return _logaddexp(math.log1p(-q), math.log(q) + x) / (alpha - 1.0)


def convert(curve: Callable[[float], float], delta: float, orders: Sequence[float]) -> tuple[float, float]:
    """min over orders of the Balle et al. 2020 conversion; (epsilon, argmin order)."""
    best, arg = math.inf, orders[0]
    for a in orders:
        r = curve(a)
        if math.isinf(r):
            continue
        e = r + math.log((a - 1.0) / a) - (math.log(delta) + math.log(a)) / (a - 1.0)
        if e < best:
            best, arg = e, a
    return max(best, 0.0), arg


def refine(curve: Callable[[float], float], delta: float, around: float) -> float:
    """Golden-section search of the conversion over real orders next to the grid optimum."""
    i = ORDERS.index(around)
    lo = ORDERS[i - 1] if i > 0 else 1.0 + 1e-6
    hi = ORDERS[i + 1] if i + 1 < len(ORDERS) else ORDERS[-1]

    def f(a: float) -> float:
        r = curve(a)
        return math.inf if math.isinf(r) else (
            r + math.log((a - 1.0) / a) - (math.log(delta) + math.log(a)) / (a - 1.0))

    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return max(min(fc, fd, f(around)), 0.0)


def _log_binom_int(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def capped_release(alpha: float, rounds: int, q: float, big_m: float, cap: int) -> float:
    """log(sum_k C(R,k) q^k (1-q)^(R-k) exp((alpha-1) M min(k, P))) / (alpha-1): S takes part in
    at most P of the R rounds (its own budget refuses the rest), each costing <= M(alpha)."""
    if q >= 1.0:
        return big_m * min(rounds, cap)
    lq, l1q = math.log(q), math.log1p(-q)
    acc = -math.inf
    for k in range(rounds + 1):
        acc = _logaddexp(acc, _log_binom_int(rounds, k) + k * lq + (rounds - k) * l1q
                         + (alpha - 1.0) * big_m * min(k, cap))
    return acc / (alpha - 1.0)


class Curve:
    """A sum of per-row RDP charges (RDP composition), cached on the auditor's grid."""

    def __init__(self) -> None:
        self.terms: dict[tuple, list[Any]] = {}  # mechanism key -> [steps, curve]
        self.grid = [0.0] * len(ORDERS)

    def add(self, key: tuple, steps: int, fn: Callable[[float], float], cached: Sequence[float]) -> None:
        self.terms.setdefault(key, [0, fn])[0] += steps
        self.grid = [g + steps * v for g, v in zip(self.grid, cached)]

    def __call__(self, alpha: float) -> float:
        return sum(k * fn(alpha) for k, fn in self.terms.values())

    def epsilon(self, delta: float, recorded: float | None = None) -> float:
        idx = {a: i for i, a in enumerate(ORDERS)}
        eps, arg = convert(lambda a: self.grid[idx[a]], delta, ORDERS)
        if recorded is not None and recorded < eps * (1 - REL_TOL) and not math.isinf(eps):
            eps = min(eps, refine(self, delta, arg))  # only a true under-count stays flagged
        return eps


# -- the epsilon re-check --------------------------------------------------------------------------
@dataclass
class Finding:
    seq: int | None
    reason: str
    detail: str

    def line(self) -> str:
        where = f"row seq {self.seq}" if self.seq is not None else "run"
        return f"FAIL: {where}: {self.reason}: {self.detail}"


@dataclass
class EpsilonCheck:
    seq: int
    status: str  # "ok" or "UNDER-COUNT" or "unchecked"
    recomputed: dict[str, float]
    note: str = ""


def _close(a: float, b: float) -> bool:
    return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-9 * max(abs(a), abs(b)))


GRAPH_FAILURE = 2.0 ** -40  # gamma mode: per recorded client round, added to the row's delta


def gamma_mode_of(config: dict[str, Any] | None) -> tuple[float, int] | None:
    """(gamma, N) if the resolved config runs secure aggregation in gamma mode
    (`colluding_fraction` > 0, SPEC 8), else None. N: the sites after expanding `count`."""
    if not config:
        return None
    sa = config.get("secure_aggregation") or {}
    gamma = float(sa.get("colluding_fraction", 0.0) or 0.0)
    if not sa.get("enabled") or gamma <= 0:
        return None
    sites = config.get("sites") or []
    return gamma, sum(int(s.get("count", 1)) for s in sites) if sites else 0


def corrupt_sites(gamma: float, num_sites: int) -> int:
    """floor(gamma N), gamma read as the decimal it was written as (as the runtime does)."""
    return math.floor(Fraction(repr(float(gamma))) * num_sites)


# SecAgg+ parameters (SPEC 2), re-implemented: the automatic degree the runtime picks for a round of
# n sites when `neighbors = 0` and n > 16, and the per-holder-set c_max at a degree. Exact rationals
# where the runtime uses scipy floats; a decision within BOUNDARY_LOG2 of its threshold could go
# either way in floats, so every outcome it allows is accepted (never a correct run flagged).
AUTO_COMPLETE_UP_TO = 16  # the complete graph up to this many sites (automatic degree)
AUTO_DROPOUT_FLOOR = 0.05  # the automatic degree is sized for at least this dropout fraction
GRAPH_SIGMA_BITS = 40  # privacy and connectivity: 2^-40 per round attempt
GRAPH_ETA_BITS = 20  # robustness: 2^-20
BOUNDARY_LOG2 = 1e-6


def effective_degree(n: int, k: int | None) -> int:
    """SPEC 2: n - 1 for the complete graph (None or k >= n - 1), k + 1 for odd k on odd n."""
    if k is None or k >= n - 1:
        return n - 1
    return k + 1 if k % 2 and n % 2 else k


def _log2_ratio(num: int, den: int) -> float:
    return -math.inf if num == 0 else math.log2(num) - math.log2(den)


def _holder_tails(n: int, k: int, corrupt: int) -> tuple[list[int], int]:
    """([T_0..T_k], total): n P[X > c] = n T_c / total for X ~ Hypergeometric(n-1, corrupt, k)
    (an honest site's corrupt neighbours among its k of the other n-1), exact integers, one pass."""
    rest, top = n - 1 - corrupt, min(corrupt, k)
    low = max(0, k - rest)  # below it C(rest, k - x) = 0
    pmf = [0] * (top + 1)
    if low <= top:
        pmf[low] = math.comb(corrupt, low) * math.comb(rest, k - low)
        for x in range(low, top):  # C(a, x+1) C(b, k-x-1) from C(a, x) C(b, k-x), exactly
            pmf[x + 1] = pmf[x] * (corrupt - x) * (k - x) // ((x + 1) * (rest - k + x + 1))
    tails, acc = [0] * (k + 1), 0
    for x in range(top, -1, -1):  # tails[c] = sum_{x > c} C(corrupt, x) C(rest, k-x)
        tails[x] = acc
        acc += pmf[x]
    return tails, math.comb(n - 1, k)


def _c_max_options(n: int, k: int, corrupt: int, sigma: int = GRAPH_SIGMA_BITS) -> tuple[tuple[int, float], ...]:
    """(c_max, log2 n P[> c_max]) pairs a float evaluation of SPEC 2's rule may return, least
    first: the exact one (least c with n P[> c] <= 2^-sigma) and any c before it whose tail is
    within BOUNDARY_LOG2 of 2^-sigma. Complete graph (k >= n - 1) or no colluder: exactly
    min(corrupt, k), no failure."""
    corrupt = min(corrupt, n - 1)
    if k >= n - 1 or corrupt == 0:
        return ((min(corrupt, k), -math.inf),)
    tails, total = _holder_tails(n, k, corrupt)
    options = []
    for c in range(k + 1):
        lp = _log2_ratio(n * tails[c], total)
        if n * tails[c] * 2 ** sigma <= total:  # the exact stop (T_k = 0: always by c = k)
            options.append((c, lp))
            break
        if lp <= -sigma + BOUNDARY_LOG2:
            options.append((c, lp))  # a float may stop here already
    return tuple(options)


def colluders_per_holder_set(n: int, k: int, corrupt: int, sigma: int = 40) -> int:
    """c_max (SPEC 2): exactly min(corrupt, k) on the complete graph (k = n - 1); under SecAgg+
    the least c with n P[Hypergeometric(n-1, corrupt, k) > c] <= 2^-sigma, in exact rationals."""
    return _c_max_options(n, k, corrupt, sigma)[-1][0]


def _binom_cdf_log2(t: int, trials: int, p: float) -> float:
    """log2 P[Binomial(trials, p) <= t] in log space (lgamma; relative error ~1e-12, far inside
    BOUNDARY_LOG2)."""
    if t < 0:
        return -math.inf
    if t >= trials:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return -math.inf
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(trials + 1) - math.lgamma(j + 1) - math.lgamma(trials - j + 1) + j * lp + (trials - j) * lq
             for j in range(t + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(x - top) for x in terms))) / math.log(2)


def _degree_outcome(n: int, k: int, corrupt: int, dropout: float) -> tuple[str, tuple[tuple[int, float], ...]]:
    """SPEC 2's test of degree k for a round of n: "pass", "fail" or "either" (a float
    evaluation may decide either way), and the c_max options at k."""
    keff = effective_degree(n, k)
    complete = keff >= n - 1
    h = keff + 1
    log2n = math.log2(n)
    if complete:
        lp_conn = -math.inf
    else:
        p_removed = min(1.0, dropout + corrupt / n)
        lp_conn = log2n + (keff // 2) * math.log2(p_removed) if p_removed > 0 else -math.inf
    if lp_conn > -GRAPH_SIGMA_BITS + BOUNDARY_LOG2:
        return "fail", ()  # connectivity alone fails: c_max does not matter
    options = _c_max_options(n, keff, corrupt)
    verdicts = set()
    for c, lp_corrupt in options:
        lp = max(lp_corrupt, lp_conn)
        t = (h + c) // 2 + 1
        lr = _binom_cdf_log2(t - 1, h - c, 1.0 - dropout) + (0.0 if complete else log2n)
        if lp <= -GRAPH_SIGMA_BITS - BOUNDARY_LOG2 and lr <= -GRAPH_ETA_BITS - BOUNDARY_LOG2:
            verdicts.add("pass")
        elif lp > -GRAPH_SIGMA_BITS + BOUNDARY_LOG2 or lr > -GRAPH_ETA_BITS + BOUNDARY_LOG2:
            verdicts.add("fail")
        else:
            verdicts.add("either")
    verdict = verdicts.pop() if len(verdicts) == 1 else "either"
    return verdict, options


@lru_cache(maxsize=1024)
def auto_degrees(n: int, corrupt: int, dropout: float) -> tuple[int, ...]:
    """The effective degrees the automatic rule (SPEC 2, `neighbors = 0`, n > 16) may pick for a
    round of n with `corrupt` colluders and dropout max(dropout_rate, 0.05): the least k in
    2..n-2 whose privacy/connectivity failure is <= 2^-40 and robustness failure <= 2^-20, else
    the complete graph (n - 1). Several only where a float evaluation could decide either way."""
    out = []
    for k in range(2, n - 1):
        verdict, _ = _degree_outcome(n, k, corrupt, dropout)
        if verdict == "fail":
            continue
        out.append(effective_degree(n, k))
        if verdict == "pass":
            return tuple(dict.fromkeys(out))
    out.append(n - 1)
    return tuple(dict.fromkeys(out))


def round_degrees(n: int, neighbors: int, corrupt: int, dropout_rate: float) -> tuple[int, ...]:
    """Effective degree(s) a gamma-mode round of n planned sites runs with, from the config:
    neighbors -1, or 0 up to 16 sites: complete graph; neighbors > 0: that degree (min(k, n-1),
    rounded up to even on odd n); 0 above 16 sites: the automatic rule (`auto_degrees`)."""
    if neighbors == -1 or (neighbors == 0 and n <= AUTO_COMPLETE_UP_TO):
        return (n - 1,)
    if neighbors > 0:
        return (effective_degree(n, min(neighbors, n - 1)),)
    return auto_degrees(n, corrupt, max(float(dropout_rate), AUTO_DROPOUT_FLOOR))


def accepted_c_max(gamma: float, num_sites: int, n: int, neighbors: int,
                   dropout_rate: float = 0.0) -> dict[int, int]:
    """{c_max: effective degree} for every c_max a gamma-mode round of n planned sites may
    record (SPEC 2, 7.2): C = min(floor(gamma N), n) colluders, c_max at the round's degree
    (`round_degrees`); one entry except at a float boundary."""
    corrupt = min(corrupt_sites(gamma, num_sites), n)
    out: dict[int, int] = {}
    for k in round_degrees(n, neighbors, corrupt, dropout_rate):
        for c, _ in _c_max_options(n, k, corrupt):
            out.setdefault(c, k)
    return out


def expected_c_max(gamma: float, num_sites: int, n: int, neighbors: int, dropout_rate: float = 0.0) -> int:
    """The c_max a gamma-mode round of n planned sites uses (the least accepted value), at the
    degree the config gives: explicit, complete, or the automatic SecAgg+ degree above 16 sites."""
    return min(accepted_c_max(gamma, num_sites, n, neighbors, dropout_rate))


def recheck_epsilon(rows: Sequence[dict[str, Any]], *, allow_reproducible: bool = False,
                    gamma: tuple[float, int] | None = None
                    ) -> tuple[list[EpsilonCheck], list[Finding]]:
    """Recompute every row's epsilon_server / epsilon_release per FORMAT.md v2, in row order.

    `gamma` = (colluding_fraction, N) (gamma mode, from the run's config): a client row's delta
    is privacy.delta + k 2^-40 (k-th client row); epsilon is recomputed at privacy.delta = the
    row's delta - k 2^-40, and a DDG sum's honest inputs are counted against
    C = min(floor(gamma N), n) colluders, not the per-holder-set c_max."""
    cache: dict[tuple, list[float]] = {}

    def grid_of(key: tuple, fn: Callable[[float], float]) -> list[float]:
        if key not in cache:
            cache[key] = [fn(a) for a in ORDERS]
        return cache[key]

    federation = Curve()                       # client rows, against release-only observers
    server_sites: dict[str, Curve] = {}        # client ddg rows, against the server, per site
    traj_sites: dict[str, Curve] = {}          # trajectory rows, per site
    worst_server: dict[str, float] = {}
    ddg_rows: list[tuple[int, float, list[float]]] = []  # (steps, q, base curve on ORDERS)
    checks: list[EpsilonCheck] = []
    findings: list[Finding] = []
    client_rows = 0

    def flag(seq: int, reason: str, detail: str) -> None:
        findings.append(Finding(seq, reason, detail))

    for row in rows:
        seq = row["seq"]
        v2 = v2_of(row)
        eps_rec = epsilon_of(row)
        e_server, e_release = from_f64(v2["epsilon_server"]), from_f64(v2["epsilon_release"])
        mech, unit, acct = row["mechanism"], row["unit"], row["accountant"]
        q, z, steps, delta = float(row["sample_rate"]), float(row["sigma_effective"]), int(row["steps"]), float(row["delta"])
        if gamma is not None and unit == "client" and row["site"] is None:
            client_rows += 1  # convert at privacy.delta: the graph's k 2^-40 is not accounting delta
            delta = delta - client_rows * GRAPH_FAILURE
            if not delta > 0:
                flag(seq, "bad delta", f"delta {row['delta']!r} is not above {client_rows} x 2^-40 (gamma mode)")
                checks.append(EpsilonCheck(seq, "unchecked", {}))
                continue
        parts = list(v2["participants"])
        site_eps = {k: from_f64(v) for k, v in v2["site_epsilon_server"].items()}
        params = {k: from_f64(v) for k, v in v2["params"].items()}
        n_before = len(findings)
        if v2["sampling"] == "reproducible" and not allow_reproducible:
            flag(seq, "not a privacy guarantee", "sampling = reproducible: the sample is derivable "
                 "from the config, so amplification by sampling is not a guarantee")
        elif v2["sampling"] not in ("secret", "reproducible"):
            flag(seq, "unknown sampling", f"sampling {v2['sampling']!r}")
        tm = v2["threat_model"]
        if tm not in ("server", "release"):
            flag(seq, "unknown threat model", f"threat_model {tm!r}")
        enforced = e_server if tm == "server" else e_release
        if acct not in eps_rec or not _close(eps_rec[acct], enforced):
            flag(seq, "epsilon mismatch", f"epsilon[{acct}] = {eps_rec.get(acct)!r} is not the "
                 f"{tm} epsilon {enforced!r}")
        if parts != sorted(parts) or len(set(parts)) != len(parts):
            flag(seq, "bad participants", "participants are not sorted and distinct")
        recomputed: dict[str, float] = {}
        if unit == "trajectory":
            if mech != "dp-sgd":
                flag(seq, "unknown mechanism", f"mechanism {mech!r} on a trajectory row")
                checks.append(EpsilonCheck(seq, "unchecked", {}))
                continue
            if parts or site_eps:
                flag(seq, "bad row", "trajectory rows have participants = [] and site_epsilon_server = {}")
            site = row["site"]
            curve = traj_sites.setdefault(site, Curve())
            curve.add(("psg", q, z), steps, lambda a, q=q, z=z: rdp_psg(q, z, a),
                      grid_of(("psg", q, z), lambda a, q=q, z=z: rdp_psg(q, z, a)))
            want = curve.epsilon(delta, min(e_server, e_release))
            recomputed = {"server": want, "release": want}
            if not _close(e_server, e_release):
                flag(seq, "epsilon mismatch", "trajectory rows have epsilon_server = epsilon_release")
            for name, got in (("epsilon_server", e_server), ("epsilon_release", e_release)):
                if got < want * (1 - REL_TOL):
                    flag(seq, "epsilon under-count", f"recorded {name} {got:.6g} < recomputed "
                         f"{want:.6g} (site {site}, DP-SGD, MTZ 2019 RDP)")
        elif unit == "client" and row["site"] is None:
            if len(parts) > int(row["sites_planned"]):
                flag(seq, "bad participants", f"{len(parts)} participants but sites_planned = "
                     f"{row['sites_planned']}")
            if mech == "gaussian":
                if not math.isinf(e_server):
                    flag(seq, "epsilon under-count", f"central gaussian rows have epsilon_server = "
                         f"+inf (the server sees every update), recorded {e_server!r}")
                if site_eps:
                    flag(seq, "bad row", "central gaussian rows have site_epsilon_server = {}")
                federation.add(("psg", q, z), steps, lambda a, q=q, z=z: rdp_psg(q, z, a),
                               grid_of(("psg", q, z), lambda a, q=q, z=z: rdp_psg(q, z, a)))
                want_rel = federation.epsilon(delta, e_release)
                recomputed = {"server": math.inf, "release": want_rel}
            elif mech == "ddg":
                missing = [k for k in DDG_PARAMS if k not in params]
                m = int(v2["noise_shares"])
                if missing or m < 1:
                    flag(seq, "bad ddg parameters", f"missing {missing}" if missing else
                         f"noise_shares = {m} (must be >= 1)")
                    checks.append(EpsilonCheck(seq, "unchecked", {}))
                    continue
                base = DDG(clip=float(row["clip"]), gamma=params["gamma"], beta=params["beta"],
                           local_stddev=params["local_stddev"], padded_dim=params["padded_dim"],
                           shares=m)
                if base.gamma <= 0 or base.local_stddev <= 0 or base.padded_dim < 1 or not 0 <= base.beta < 1:
                    flag(seq, "bad ddg parameters", f"params {params}")
                    checks.append(EpsilonCheck(seq, "unchecked", {}))
                    continue
                survived = int(row["sites_survived"])
                colluding = int(v2["max_colluding"])
                if gamma is not None:
                    # gamma mode: the sum may hold all C = min(floor(gamma N), n) colluders (c_max
                    # bounds a holder set, not the sum); an honest site whose privacy is at stake
                    # is in the sum, so at most survived - 1 of it collude
                    colluding = min(corrupt_sites(gamma[0], gamma[1]), int(row["sites_planned"]),
                                    max(survived - 1, 0))
                if 0 < survived and survived - colluding < m:
                    flag(seq, "bad ddg parameters", f"noise_shares = {m} but the unmasked sum holds "
                         f"{survived} inputs of which up to {colluding} collude: it "
                         f"cannot hold {m} honest shares")
                if not _close(base.l2_bound, params["l2_bound"]) and abs(base.l2_bound - params["l2_bound"]) > 1e-9 * base.l2_bound:
                    flag(seq, "bad ddg parameters", f"recorded l2_bound {params['l2_bound']!r} is "
                         f"not the conditional-rounding bound {base.l2_bound!r} of the recorded "
                         f"clip, gamma, beta, padded_dim")
                key = ("ddg", base)
                fn_server = base.eps
                g_server = grid_of(key, fn_server)
                for site in parts:
                    server_sites.setdefault(site, Curve()).add(key, steps, fn_server, g_server)
                if sorted(site_eps) != parts:
                    flag(seq, "bad participants", f"site_epsilon_server names {sorted(site_eps)}, "
                         f"participants are {parts}")
                for site in parts:
                    want = server_sites[site].epsilon(delta, site_eps.get(site))
                    worst_server[site] = want
                    got = site_eps.get(site)
                    if got is not None and got < want * (1 - REL_TOL):
                        flag(seq, "epsilon under-count", f"recorded site_epsilon_server[{site}] "
                             f"{got:.6g} < recomputed {want:.6g} (DDG against the server, "
                             f"m = {m} honest shares, no sampling discount)")
                want_server = max(worst_server.values(), default=0.0)
                fn_rel = (lambda a, b=base, q=q: b.eps_release(a, q))
                federation.add(("ddg-rel", base, q), steps, fn_rel, grid_of(("ddg-rel", base, q), fn_rel))
                ddg_rows.append((steps, q, g_server))
                budget = from_f64(v2["site_budget"])
                # Product bound (Theorem R) and, with a finite site budget, the capped bound:
                # pointwise minimum of two valid curves (FORMAT.md, "DDG").
                want_rel = federation.epsilon(delta, e_release)
                if math.isfinite(budget):
                    want_rel = min(want_rel, _capped_epsilon(ddg_rows, budget, delta, federation))
                # The release is a post-processing of the server's view (FORMAT.md).
                want_rel = min(want_rel, want_server)
                for site in parts:
                    if worst_server[site] > budget * (1 + REL_TOL):
                        flag(seq, "budget exceeded", f"site {site} is at epsilon_server "
                             f"{worst_server[site]:.6g} > its budget {budget:g}: its guard should "
                             f"have refused this round")
                recomputed = {"server": want_server, "release": want_rel}
                if e_server < want_server * (1 - REL_TOL):
                    flag(seq, "epsilon under-count", f"recorded epsilon_server {e_server:.6g} < "
                         f"recomputed worst site {want_server:.6g}")
            else:
                flag(seq, "unknown mechanism", f"mechanism {mech!r} unknown to the auditor")
                checks.append(EpsilonCheck(seq, "unchecked", {}))
                continue
            if e_release < recomputed["release"] * (1 - REL_TOL):
                flag(seq, "epsilon under-count", f"recorded epsilon_release {e_release:.6g} < "
                     f"recomputed {recomputed['release']:.6g} ({mech}, q = {q:g}, release-only "
                     f"observers)")
        else:
            flag(seq, "bad row", f"unit {unit!r} with site {row['site']!r}")
            checks.append(EpsilonCheck(seq, "unchecked", {}))
            continue
        if acct == "rdp" and eps_rec.get("rdp") is not None:
            want = recomputed.get(tm)
            if want is not None and eps_rec["rdp"] < want * (1 - REL_TOL) and len(findings) == n_before:
                flag(seq, "epsilon under-count", f"recorded epsilon[rdp] {eps_rec['rdp']:.6g} < "
                     f"recomputed {want:.6g}")
        elif acct != "rdp":
            flag(seq, "unchecked accountant", f"accountant {acct!r}: its numbers may legitimately be "
                 f"below RDP and this auditor has no independent {acct} accountant")
        status = "ok" if len(findings) == n_before else "UNDER-COUNT" if any(
            f.reason == "epsilon under-count" for f in findings[n_before:]) else "FAIL"
        checks.append(EpsilonCheck(seq, status, recomputed))
    return checks, findings


_SERVER_IDX = None


def _capped_epsilon(ddg_rows: Sequence[tuple[int, float, list[float]]], budget: float, delta: float,
                    product: "Curve") -> float:
    """convert(min(product, capped)) over the ddg rows so far (FORMAT.md, "DDG", release)."""
    global _SERVER_IDX
    if _SERVER_IDX is None:
        pos = {a: i for i, a in enumerate(ORDERS)}
        _SERVER_IDX = [pos[a] for a in SERVER_ORDERS]
    rounds = sum(k for k, _, _ in ddg_rows)
    q = max(qq for _, qq, _ in ddg_rows)  # heterogeneous rates: the largest bounds them all
    big = [max(c[i] for _, _, c in ddg_rows) for i in range(len(ORDERS))]
    small = [min(c[i] for _, _, c in ddg_rows) for i in range(len(ORDERS))]
    # P: the most participations the sites' guards can allow, with the conversion on the
    # SERVER's grid (the guard's rule; a finer grid would allow more and loosen the bound).
    small_at = {ORDERS[i]: small[i] for i in _SERVER_IDX}
    cap = 0
    for k in range(1, rounds + 1):
        e, _ = convert(lambda a, k=k: k * small_at[a], delta, SERVER_ORDERS)
        if e > budget:
            break
        cap = k
    curve = [min(product.grid[i], capped_release(a, rounds, q, big[i], cap))
             for i, a in enumerate(ORDERS)]
    idx = {a: i for i, a in enumerate(ORDERS)}
    eps, _ = convert(lambda a: curve[idx[a]], delta, ORDERS)
    return eps


# -- the run directory: rollback and config ------------------------------------------------------
_CKPT = re.compile(r"round-(\d+)\.pt")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash
    return out


def check_run(ledger: Ledger, run: Path) -> tuple[list[Finding], list[str]]:
    """Compare the ledger with what the run directory recorded (rollback) and its config."""
    findings: list[Finding] = []
    checked: list[str] = []
    rows = ledger.rows
    n = len(rows)
    hashes = {r["seq"]: r.get("_hash") or sha256_hex(canonical(r)) for r in rows}
    last_round = max((r["round"] for r in rows), default=None)
    config = _load_config(run, findings)
    unit = ((config or {}).get("privacy") or {}).get("unit")

    def head_check(head: Any, what: str) -> None:
        if head is None:
            return
        try:
            seq, h = int(head["seq"]), str(head["row_hash"])
        except (TypeError, KeyError, ValueError):
            findings.append(Finding(None, "bad run file", f"{what}: ledger_head is malformed"))
            return
        if seq == 0 and h == GENESIS:
            return
        if seq > n:
            findings.append(Finding(None, "rolled back", f"{what} recorded ledger row {seq}, the "
                                    f"ledger ends at row {n} (an older copy of the ledger)"))
        elif hashes.get(seq) != h:
            findings.append(Finding(seq, "rewritten", f"{what} recorded ledger row {seq} with "
                                    f"hash {h[:16]}..., the ledger's row {seq} differs"))

    def round_check(r: int, what: str) -> None:
        # Every client-level round appends a row numbered >= its round before it is applied.
        if unit == "client" and r > 0 and (last_round is None or last_round < r):
            findings.append(Finding(None, "rolled back", f"{what} is at round {r}, the ledger's "
                                    f"last round is {last_round} (an older copy of the ledger)"))

    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        mrows = _jsonl(metrics)
        checked.append(f"metrics.jsonl ({len(mrows)} rounds)")
        for m in mrows:
            head_check(m.get("ledger_head"), f"metrics.jsonl round {m.get('round')}")
        if mrows:
            round_check(int(mrows[-1].get("round", 0)), "metrics.jsonl")
    else:
        findings.append(Finding(None, "missing run file", f"{metrics} (needed to detect a "
                                "rolled-back ledger; pass --ledger-only to audit the ledger alone)"))
    state = run / "state.json"
    if state.is_file():
        try:
            s = json.loads(state.read_text(encoding="utf-8"))
            head_check(s.get("ledger_head"), "state.json")
            round_check(int(s.get("round", 0)), "state.json")
            checked.append("state.json")
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            findings.append(Finding(None, "bad run file", f"{state} is not JSON"))
    ckdir = run / "checkpoints"
    if ckdir.is_dir():
        rounds = [int(mt.group(1)) for p in ckdir.iterdir() if (mt := _CKPT.fullmatch(p.name))]
        if rounds:
            round_check(max(rounds), f"checkpoint round-{max(rounds):05d}.pt")
        checked.append(f"checkpoints ({len(rounds)})")
    if config is not None:
        findings += check_config(rows, config)
        checked.append("config.resolved.toml")
    fp = run / "config.fingerprint"
    if fp.is_file() and fp.read_text(encoding="utf-8").strip() != ledger.meta.get("config_hash"):
        findings.append(Finding(None, "config hash mismatch", f"{fp} says "
                                f"{fp.read_text(encoding='utf-8').strip()!r}, the ledger is for "
                                f"{ledger.meta.get('config_hash')!r}"))
    return findings, checked


# -- witnesses (FORMAT.md, "Witnesses") ------------------------------------------------------------
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")


def _len_prefixed(text: str) -> bytes:
    raw = text.encode("utf-8")
    if not raw or len(raw) > 256:
        raise ValueError(f"not 1..256 bytes: {text!r}")
    return struct.pack(">I", len(raw)) + raw


def witness_message(federation: str, seq: int, row_hash: str, config_hash: str) -> bytes:
    """"secure-fedrl/ledger-witness/v1" 0x00 || u32 len || F || u32 len || C || u64 seq || H."""
    if not _HEX64.fullmatch(row_hash) or not 0 <= seq < 2**63:
        raise ValueError("malformed head")
    return (WITNESS_DOMAIN + _len_prefixed(federation) + _len_prefixed(config_hash)
            + struct.pack(">Q", seq) + bytes.fromhex(row_hash))


def parse_witness_keys(text: str) -> dict[str, str]:
    """{site: 64 lowercase hex digits}; ValueError otherwise."""
    obj = json.loads(text)
    if not isinstance(obj, dict) or not obj:
        raise ValueError("not a non-empty JSON object {site: public key hex}")
    out = {}
    for site, key in obj.items():
        if not isinstance(site, str) or not isinstance(key, str) or \
                not _HEX64.fullmatch(key.strip().lower()):
            raise ValueError(f"site {site!r}: public key {key!r} is not 64 hex digits")
        out[site] = key.strip().lower()
    return out


@dataclass
class WitnessReport:
    in_play: bool = False          # the run claims or requires witnesses
    valid: int = 0                 # countersignatures that verify
    heads: int = 0                 # distinct seqs with a valid countersignature
    sites: int = 0                 # distinct sites among them
    expected: int = 0              # (seq, site) pairs metrics.jsonl expects
    covered_to: int = 0            # highest seq with enough valid countersignatures


def check_witnesses(ledger: Ledger, keys: dict[str, str] | None, *, federation: str | None,
                    metrics: Sequence[dict[str, Any]] = (), require: int = 0
                    ) -> tuple[list[Finding], WitnessReport]:
    """Witness rows against the sites' keys and the ledger's own row hashes; metrics.jsonl's
    `witness_expected` against the witness rows; with `require` >= 1, every head of a round but
    the last countersigned by at least `require` sites (through the hash chain a witnessed head
    covers every row up to it). Call after `verify` (the chain is intact)."""
    findings: list[Finding] = []
    rep = WitnessReport()
    rows = ledger.rows
    n = len(rows)
    hashes = {r["seq"]: r.get("_hash") or sha256_hex(canonical(r)) for r in rows}
    cfg = ledger.meta.get("config_hash", "")
    expected: list[tuple[int, dict[str, Any], Any]] = []
    for m in metrics:
        we = m.get("witness_expected") if isinstance(m, dict) else None
        if we is None:
            continue
        what = f"metrics.jsonl round {m.get('round')}"
        try:
            seq, sites = we["seq"], we["sites"]
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 or \
                    not isinstance(sites, dict) or any(not isinstance(k, str) for k in sites):
                raise TypeError
        except (TypeError, KeyError):
            findings.append(Finding(None, "bad run file", f"{what}: witness_expected is malformed"))
            continue
        if seq > 0:  # seq 0 is the empty ledger: nothing to countersign
            expected.append((seq, sites, what))
    rep.in_play = bool(ledger.witnesses or expected or require)
    if not rep.in_play:
        return findings, rep
    if keys is None:
        findings.append(Finding(None, "missing run file", f"{WITNESS_KEYS_FILE}: the run records "
                                "witnesses but there are no site keys to check them against "
                                "(pass --witness-keys FILE)"))
        return findings, rep
    if federation is None:
        findings.append(Finding(None, "missing run file", "the federation name the witnesses "
                                "signed is unknown (no config.resolved.toml [federation] name; "
                                "pass --federation NAME)"))
        return findings, rep
    good: dict[int, set[str]] = {}
    stored: set[tuple[int, str]] = set()
    for w in ledger.witnesses:
        seq, site = w.get("seq"), w.get("site")
        stored.add((seq, site))
        where = seq if isinstance(seq, int) and 1 <= seq <= n else None
        who = f"witness of site {site!r} for row {seq}"
        if not isinstance(site, str) or site not in keys:
            findings.append(Finding(where, "unknown witness", f"{who}: the site has no pinned key"))
            continue
        if not (isinstance(seq, int) and 1 <= seq):
            findings.append(Finding(None, "bad witness", f"{who}: seq is not a row number"))
            continue
        if seq > n:
            findings.append(Finding(None, "rolled back", f"{who}: the ledger ends at row {n} (an "
                                    f"older copy of the ledger, or rows deleted)"))
            continue
        pub = w.get("public_key")
        if not isinstance(pub, str) or pub.lower() != keys[site]:
            findings.append(Finding(seq, "wrong witness key", f"{who}: stored key {pub!r} is not "
                                    f"the site's pinned key {keys[site]}"))
            continue
        sig = w.get("signature")
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(keys[site]))
        if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
            findings.append(Finding(seq, "bad witness signature", f"{who}: not 128 hex digits"))
            continue
        try:
            msg = witness_message(federation, seq, hashes[seq], cfg)
        except ValueError as exc:
            findings.append(Finding(seq, "bad witness", f"{who}: {exc}"))
            continue
        if _verifies(key, sig, msg):
            good.setdefault(seq, set()).add(site)
            continue
        signed = w.get("row_hash")
        try:
            genuine_elsewhere = (isinstance(signed, str) and signed != hashes[seq]
                                 and _verifies(key, sig, witness_message(federation, seq, signed, cfg)))
        except ValueError:
            genuine_elsewhere = False
        if genuine_elsewhere:
            findings.append(Finding(seq, "rewritten", f"{who}: the site countersigned row {seq} "
                                    f"with hash {signed[:16]}..., the ledger's row {seq} differs "
                                    f"(history rewritten after it was witnessed)"))
        else:
            findings.append(Finding(seq, "bad witness signature", f"{who}: the signature does not "
                                    f"verify under the site's key over the ledger's row {seq} "
                                    f"(history rewritten, or the witness altered or forged)"))
    for seq, sites, what in expected:
        if seq > n:
            findings.append(Finding(None, "rolled back", f"{what} expected witnesses of ledger row "
                                    f"{seq}, the ledger ends at row {n}"))
            continue
        if require and len(sites) < require:
            findings.append(Finding(seq, "under-witnessed", f"{what} expected {len(sites)} "
                                    f"witnesses of row {seq}, --require-witnesses {require}"))
        for site in sorted(sites):
            rep.expected += 1
            listed = sites[site]
            if site not in keys:
                findings.append(Finding(seq, "unknown witness", f"{what} expected site {site!r} "
                                        f"to witness row {seq}; the site has no pinned key"))
            elif not isinstance(listed, str) or listed.lower() != keys[site]:
                findings.append(Finding(seq, "wrong witness key", f"{what} lists key {listed!r} "
                                        f"for site {site!r}, its pinned key is {keys[site]}"))
            elif (seq, site) not in stored:
                findings.append(Finding(seq, "missing witness", f"site {site!r} was expected "
                                        f"({what}) to countersign row {seq}; the ledger has no "
                                        f"witness of it"))
    rep.valid = sum(len(v) for v in good.values())
    rep.heads = len(good)
    rep.sites = len(set().union(*good.values())) if good else 0
    need = max(require, 1)
    rep.covered_to = max((s for s, v in good.items() if len(v) >= need), default=0)
    if require and rows:
        last_round = max(r["round"] for r in rows)
        early = [r["seq"] for r in rows if r["round"] < last_round and r["seq"] > rep.covered_to]
        if early:
            findings.append(Finding(early[0], "unwitnessed", f"rows {early[0]}..{early[-1]} "
                                    f"(rounds before the last, {last_round}) are under no head "
                                    f"countersigned by >= {require} sites: the server's key alone "
                                    f"could have rewritten them"))
    return findings, rep


def _load_config(run: Path, findings: list[Finding]) -> dict[str, Any] | None:
    path = run / "config.resolved.toml"
    if not path.is_file():
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        findings.append(Finding(None, "bad run file", f"{path}: {exc}"))
        return None


def check_config(rows: Sequence[dict[str, Any]], config: dict[str, Any]) -> list[Finding]:
    """Recorded mechanism parameters against the resolved config the run was made with."""
    out: list[Finding] = []
    p = config.get("privacy") or {}
    sa = config.get("secure_aggregation") or {}
    samp = config.get("sampling") or {}
    unit = p.get("unit", "none")
    mech = {"trajectory": "dp-sgd"}.get(unit) or (
        p.get("mechanism") if p.get("mechanism", "auto") != "auto"
        else ("ddg" if sa.get("enabled") else "gaussian"))
    tm = p.get("threat_model", "auto")
    if tm == "auto":
        tm = "release" if mech == "gaussian" else "server"
    sigma = float(p.get("noise_multiplier", 0.0) or 0.0)
    # gamma mode (secure_aggregation.colluding_fraction > 0): each client-level row's delta is
    # exactly privacy.delta + 2^-40 per client-level round so far (the graph's failure per
    # recorded round, SPEC 8; aborted attempts are the sites' count, not the ledger's),
    # and max_colluding records the per-holder-set c_max the thresholds used: recomputed (exact
    # hypergeometric, pure Python) at the row's n (sites_planned) and the degree the config gives
    # it (complete graph, an explicit `neighbors`, or the automatic SecAgg+ degree above 16 sites,
    # searched here as SPEC 2 defines it). The degree itself is in no row: a round run at another
    # degree shows only through its c_max.
    gamma_n = gamma_mode_of(config)
    gamma_mode = gamma_n is not None
    graph_rule: tuple[int, float] | None = None  # (neighbors, dropout_rate): the degree's inputs
    if gamma_mode:
        try:
            graph_rule = (int(sa.get("neighbors", 0) or 0), float(sa.get("dropout_rate", 0.0) or 0.0))
            if graph_rule[0] < -1 or not 0.0 <= graph_rule[1] < 1.0:
                raise ValueError(f"neighbors {graph_rule[0]}, dropout_rate {graph_rule[1]}")
        except (TypeError, ValueError) as exc:
            out.append(Finding(None, "bad run file", f"config.resolved.toml: secure_aggregation: {exc}: "
                               f"c_max not recomputed"))
            graph_rule = None
    client_rows = 0
    if gamma_mode and "delta" not in p:  # the runtime always writes it: a deleted line must not skip the pin
        out.append(Finding(None, "bad run file", "config.resolved.toml: [privacy] has no delta (the runtime "
                           "writes it); the gamma-mode delta is pinned at the default 1e-5"))
    for r in rows:
        seq = r["seq"]
        try:
            v2 = v2_of(r)
        except (ValueError, json.JSONDecodeError):
            continue

        def bad(what: str, got: Any, want: Any) -> None:
            out.append(Finding(seq, "disagrees with config", f"recorded {what} {got!r}, the config "
                               f"says {want!r}"))

        if r["unit"] != unit:
            bad("unit", r["unit"], unit)
        if r["mechanism"] != mech:
            bad("mechanism", r["mechanism"], mech)
        if gamma_mode and r["unit"] == "client":
            client_rows += 1
            want_delta = float(p.get("delta", 1e-5)) + client_rows * GRAPH_FAILURE
            if abs(float(r["delta"]) - want_delta) > 1e-3 * GRAPH_FAILURE:  # a missing delta: the default
                bad("delta", r["delta"], f"privacy.delta + {client_rows} x 2^-40 (gamma mode)")
        elif "delta" in p and not _close(float(r["delta"]), float(p["delta"])):
            bad("delta", r["delta"], p["delta"])
        if "clip" in p and not p.get("adaptive_clipping") and not _close(float(r["clip"]), float(p["clip"])):
            bad("clip", r["clip"], p["clip"])
        if sigma > 0 and not _close(float(r["sigma_planned"]), sigma):
            bad("sigma_planned", r["sigma_planned"], sigma)
        if r["mechanism"] in ("gaussian", "dp-sgd") and float(r["sigma_effective"]) > float(r["sigma_planned"]) * (1 + 1e-9):
            out.append(Finding(seq, "disagrees with config", f"sigma_effective {r['sigma_effective']!r} "
                               f"exceeds the planned {r['sigma_planned']!r}: more noise claimed "
                               f"than the config calls for"))
        if v2["threat_model"] != tm:
            bad("threat_model", v2["threat_model"], tm)
        if r["unit"] == "client" and sa.get("enabled") and "max_colluding_sites" in sa and not gamma_mode and \
                v2["max_colluding"] != int(sa["max_colluding_sites"]):
            bad("max_colluding", v2["max_colluding"], sa["max_colluding_sites"])
        if r["unit"] == "client" and gamma_n is not None and gamma_n[1] > 0:
            n = max(int(r["sites_planned"]), 2)
            if int(r["sites_planned"]) > gamma_n[1]:
                bad("sites_planned", r["sites_planned"], f"at most the federation's {gamma_n[1]} sites")
            elif graph_rule is not None:
                accepted = accepted_c_max(gamma_n[0], gamma_n[1], n, *graph_rule)
                if v2["max_colluding"] not in accepted:
                    want_c = min(accepted)
                    degree = "complete graph" if accepted[want_c] >= n - 1 else f"degree {accepted[want_c]}"
                    bad("max_colluding", v2["max_colluding"], f"c_max {want_c} (gamma mode, {degree} at "
                        f"n = {n})")
        if unit == "trajectory" and "sample_rate" in p and not _close(float(r["sample_rate"]), float(p["sample_rate"])):
            bad("sample_rate", r["sample_rate"], p["sample_rate"])
        fedbuff = (config.get("strategy") or {}).get("name") == "fedbuff"
        if unit == "client" and (fedbuff or not samp.get("clients_per_round")):
            q = float(samp.get("fraction", 1.0)) if samp.get("poisson", True) else 1.0
            if fedbuff:
                q = 1.0  # buffered rounds take whoever finishes first: nothing is sampled (whatever [sampling] says)
            if not _close(float(r["sample_rate"]), q):
                bad("sample_rate", r["sample_rate"], q)
        if "target_epsilon" in p:
            budget = float(p["target_epsilon"]) if (tm == "server" or unit == "trajectory") else math.inf
            if not _close(from_f64(v2["site_budget"]), budget):
                bad("site_budget", from_f64(v2["site_budget"]), budget)
        want_sampling = "reproducible" if p.get("reproducible_noise") else "secret"
        if v2["sampling"] != want_sampling:
            bad("sampling", v2["sampling"], want_sampling)
    return out


# -- command line ----------------------------------------------------------------------------------
def _fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def print_table(rows: Sequence[dict[str, Any]], checks: dict[int, EpsilonCheck]) -> None:
    header = ("seq", "round", "unit", "site", "mechanism", "C", "sigma_eff", "q", "steps",
              "participants", "threat", "eps_server", "eps_release", "recomputed s/r", "check")
    lines = [header]
    for r in rows:
        try:
            v2 = v2_of(r)
            es, er = from_f64(v2["epsilon_server"]), from_f64(v2["epsilon_release"])
            tm, np_ = v2["threat_model"], len(v2["participants"])
        except (ValueError, TypeError, json.JSONDecodeError):
            es = er = None
            tm, np_ = "?", "?"
        c = checks.get(r["seq"])
        rec = "-" if c is None or not c.recomputed else \
            f"{_fmt(c.recomputed.get('server'))}/{_fmt(c.recomputed.get('release'))}"
        lines.append((_fmt(r["seq"]), _fmt(r["round"]), _fmt(r["unit"]), _fmt(r["site"]),
                      _fmt(r["mechanism"]), _fmt(r["clip"]), _fmt(r["sigma_effective"]),
                      _fmt(r["sample_rate"]), _fmt(r["steps"]), _fmt(np_), tm, _fmt(es), _fmt(er),
                      rec, "-" if c is None else c.status))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip())


def _pinned_key(args: argparse.Namespace) -> str | None:
    if args.public_key:
        key = args.public_key.strip().lower()
    elif args.public_key_file:
        try:
            key = Path(args.public_key_file).read_text(encoding="ascii").split()[0].lower()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise AuditFailure(None, "bad pin", f"--public-key-file {args.public_key_file}: {exc}") from None
    else:
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise AuditFailure(None, "bad pin", f"pinned public key {key!r} is not 64 hex digits")
    return key


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _witness_keys(args: argparse.Namespace, run: Path,
                  findings: list[Finding]) -> tuple[dict[str, str] | None, bool]:
    """(site keys, pinned): --witness-keys, else the run directory's copy (not a pin)."""
    if args.witness_keys:
        try:
            return parse_witness_keys(Path(args.witness_keys).read_text(encoding="utf-8")), True
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AuditFailure(None, "bad pin", f"--witness-keys {args.witness_keys}: {exc}") from None
    path = run / WITNESS_KEYS_FILE
    if not path.is_file():
        return None, False
    try:
        return parse_witness_keys(path.read_text(encoding="utf-8")), False
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        findings.append(Finding(None, "bad run file", f"{path}: {exc}"))
        return None, False


def _federation(args: argparse.Namespace, run: Path) -> str | None:
    if args.federation:
        return args.federation
    config = _load_config(run, [])
    name = ((config or {}).get("federation") or {}).get("name")
    return name if isinstance(name, str) and name else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Verify a secure-fedrl privacy ledger independently.")
    ap.add_argument("target", help="run directory or privacy_ledger.sqlite")
    ap.add_argument("--public-key", help="pin the server's Ed25519 public key (64 hex digits), "
                    "obtained out of band")
    ap.add_argument("--public-key-file", help="pin the key in this file (e.g. the key directory's "
                    "ledger_public_key.hex), obtained out of band")
    ap.add_argument("--config-hash", help="pin the federation config hash")
    ap.add_argument("--ledger-only", action="store_true", help="audit a ledger without its run "
                    "directory (a rolled-back ledger then goes unnoticed)")
    ap.add_argument("--allow-reproducible", action="store_true", help="accept rows with "
                    "sampling = reproducible (experiments: not a privacy guarantee)")
    ap.add_argument("--no-epsilon", action="store_true", help="skip the epsilon re-check")
    ap.add_argument("--quiet", action="store_true", help="print only the verdict")
    ap.add_argument("--witness-keys", help="pin the sites' Ed25519 public keys (JSON {site: 64 "
                    "hex digits}, e.g. their CA-certified protocol keys), obtained out of band; "
                    f"without it the run directory's {WITNESS_KEYS_FILE} is used (NOT PINNED)")
    ap.add_argument("--federation", help="the federation name the witnesses signed (default: "
                    "config.resolved.toml [federation] name)")
    ap.add_argument("--require-witnesses", type=_count, default=0, metavar="N",
                    help="require every ledger head of a round but the last to be countersigned "
                    "by at least N sites (and every witness_expected to list at least N)")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except AuditFailure as exc:
        print(f"FAIL: {exc}")
        return 2
    except Exception as exc:  # noqa: BLE001 - an auditor prints one line, never a traceback
        print(f"FAIL: ledger: auditor error: {type(exc).__name__}: {exc}")
        return 2


def _main(args: argparse.Namespace) -> int:
    pinned = _pinned_key(args)
    ledger = load(args.target)
    run = ledger.path.parent
    findings: list[Finding] = []
    checks: list[EpsilonCheck] = []
    try:
        verify(ledger, public_key=pinned, config_hash=args.config_hash)
    except AuditFailure as exc:
        if not args.quiet:
            print_table(ledger.rows, {})
        print(f"FAIL: {exc}")
        return 2
    if not args.no_epsilon:
        gamma = None
        if (run / "config.resolved.toml").is_file():
            gamma = gamma_mode_of(_load_config(run, []))
        checks, eps_findings = recheck_epsilon(ledger.rows, allow_reproducible=args.allow_reproducible,
                                               gamma=gamma)
        findings += eps_findings
    run_files = any((run / f).exists() for f in ("config.resolved.toml", "metrics.jsonl", "state.json"))
    checked: list[str] = []
    if run_files:
        run_findings, checked = check_run(ledger, run)
        findings += run_findings
    wkeys, wpinned = _witness_keys(args, run, findings)
    metrics_path = run / "metrics.jsonl"
    metrics = _jsonl(metrics_path) if metrics_path.is_file() else []
    wfindings, wrep = check_witnesses(ledger, wkeys, federation=_federation(args, run),
                                      metrics=metrics, require=args.require_witnesses)
    findings += wfindings
    if not args.quiet:
        print_table(ledger.rows, {c.seq: c for c in checks})
    findings.sort(key=lambda f: (f.seq is None, f.seq or 0))
    for f in findings:
        print(f.line())
    if findings:
        return 2
    n = len(ledger.rows)
    head = ledger.head[1] if ledger.head else GENESIS
    print(f"OK: {n} rows, chain intact, signatures valid (head seq {n}, hash {head})")
    if checks:
        print(f"epsilon: {len(checks)} rows re-checked (epsilon_server and epsilon_release, "
              f"independent RDP accountant, orders to {ORDERS[-1]:g}), no under-count")
    if checked:
        print(f"run directory: ledger head and last round agree with {', '.join(checked)}")
    if wrep.in_play:
        print(f"witnesses: {wrep.valid} countersignatures of {wrep.heads} heads by {wrep.sites} "
              f"sites verify over the ledger's row hashes, {wrep.expected} expected by "
              f"metrics.jsonl all present; rows 1..{wrep.covered_to} are witnessed (rewriting "
              f"them needs the sites' keys)")
    else:
        print("witnesses: none recorded (the server's key alone vouches for this history; "
              "--require-witnesses N demands them)")
    unpinned = pinned is None
    witnesses_unpinned = wrep.in_play and not wpinned
    if witnesses_unpinned:
        print(f"NOT PINNED (witnesses): the sites' keys came from the run directory's "
              f"{WITNESS_KEYS_FILE}, which the server writes (it could forge witnesses with keys "
              f"of its own): pin them with --witness-keys FILE")
    if unpinned:
        print("NOT PINNED: no --public-key / --public-key-file: only the ledger's internal "
              "consistency was checked (anyone can sign a consistent ledger with a new key)")
    if not run_files and not args.ledger_only:
        print("NOT CHECKED: no run directory files beside the ledger: a rolled-back ledger would "
              "pass (pass --ledger-only to accept)")
        return 3
    return 3 if unpinned or witnesses_unpinned else 0


if __name__ == "__main__":
    sys.exit(main())
