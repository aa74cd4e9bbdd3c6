#!/usr/bin/env python3
"""Independent verifier of a secure-fedrl privacy ledger.

    python audit/verify_ledger.py RUN_DIR_OR_LEDGER [--public-key HEX] [--config-hash H]
                                  [--no-epsilon] [--quiet]

Re-implements, from secure_fedrl/ledger/FORMAT.md alone, the canonical row encoding, the hash
chain, the Ed25519 signatures and the signed head, using only sqlite3, hashlib, json and
cryptography; it deliberately does NOT import secure_fedrl (an auditor must not trust the code it
audits). It then recomputes each row's cumulative epsilon with Opacus's RDP analysis functions and
flags any recorded RDP epsilon below the recomputed one (an under-count).

Prints a table of rows and "OK: N rows, chain intact, signatures valid", or one line
"FAIL: row seq K: <reason>: <detail>" for the first bad row; exit status 0 or 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sqlite3
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

LEDGER_FILE = "privacy_ledger.sqlite"
ROW_FORMAT = "secure-fedrl/ledger-row/v1"
HEAD_FORMAT = "secure-fedrl/ledger-head/v1"
GENESIS = "0" * 64
COLUMNS = ("seq", "round", "time", "unit", "site", "mechanism", "clip", "sigma_planned",
           "sigma_effective", "sample_rate", "steps", "sites_planned", "sites_survived",
           "accountant", "epsilon", "delta", "config_hash", "prev_hash", "signature")
FLOATS = ("clip", "sigma_planned", "sigma_effective", "sample_rate", "delta")
INTS = ("seq", "round", "steps", "sites_planned", "sites_survived")
STRINGS = ("time", "unit", "mechanism", "accountant", "config_hash", "prev_hash")
# Mechanisms whose accounting is the Poisson-subsampled Gaussian at (sample_rate, sigma_effective).
GAUSSIAN_FAMILY = ("gaussian", "ddg", "dp-sgd")
# A superset of the usual RDP order grids (Opacus's default, extended to 256); the fast path.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(11, 257)]
REL_TOL = 1e-6


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
            cur = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM rows ORDER BY seq")
            rows = [dict(zip(COLUMNS, r)) for r in cur.fetchall()]
            head = conn.execute("SELECT seq, row_hash, signature FROM head WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise AuditFailure(None, "unreadable", f"{path}: {exc}") from None
    return Ledger(meta=meta, rows=rows, head=tuple(head) if head else None)


# -- the encoding of FORMAT.md ---------------------------------------------------------------------
def f64(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"expected a REAL, got {x!r}")
    return struct.pack(">d", float(x)).hex()


def _text(x: Any) -> str:
    if not isinstance(x, str) or not x or any(not 0x20 <= ord(c) <= 0x7E or c in '"\\' for c in x):
        raise ValueError(f"not a ledger string: {x!r}")
    return x


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**53:
        raise ValueError(f"not a ledger integer: {x!r}")
    return x


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def epsilon_of(row: dict[str, Any]) -> dict[str, float]:
    obj = json.loads(row["epsilon"])
    if not isinstance(obj, dict) or not obj:
        raise ValueError("epsilon column is not a non-empty JSON object")
    return {_text(k): struct.unpack(">d", bytes.fromhex(v))[0] for k, v in obj.items()}


def canonical(row: dict[str, Any], seq: int | None = None) -> bytes:
    """Canonical bytes of a row as stored (or as if it had sequence number `seq`)."""
    obj: dict[str, Any] = {"format": ROW_FORMAT}
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
    if meta.get("format") != "secure-fedrl-ledger" or meta.get("schema_version") != "1":
        raise AuditFailure(None, "not a ledger", f"meta format {meta.get('format')!r} schema "
                           f"{meta.get('schema_version')!r}")
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
    hashes: list[str] = []
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
        hashes.append(h)
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


def _signed_as(row: dict[str, Any], key: Ed25519PublicKey, seqs: Sequence[int]) -> int | None:
    for s in seqs:
        if s != row["seq"] and _verifies(key, row["signature"], canonical(row, seq=s)):
            return s
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


# -- epsilon re-check ------------------------------------------------------------------------------
@dataclass
class EpsilonCheck:
    seq: int
    status: str  # "ok", "UNDER-COUNT", "skipped"
    recomputed: float | None
    note: str = ""


def recheck_epsilon(rows: Sequence[dict[str, Any]]) -> list[EpsilonCheck]:
    """Recompute cumulative RDP epsilon per scope with Opacus and compare with the recorded one.

    Fast path on a fixed order grid; only where the recorded value falls below the grid's result
    is the minimum over real orders searched (scipy), so a recorder that used any finer grid of
    orders is never flagged: flagged values are below every RDP bound for the recorded sigmas.
    """
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent  # lazy: pulls torch

    cache: dict[tuple[float, float], list[float]] = {}

    def rdp_curve(q: float, sigma: float) -> list[float]:
        if (q, sigma) not in cache:
            cache[(q, sigma)] = list(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=ORDERS))
        return cache[(q, sigma)]

    totals: dict[Any, list[float]] = {}
    history: dict[Any, dict[tuple[float, float], int]] = {}  # scope -> (q, sigma) -> steps
    unknown: dict[Any, int] = {}
    out: list[EpsilonCheck] = []
    for row in rows:
        scope = row["site"] if row["unit"] == "trajectory" else None
        mech = row["mechanism"]
        if mech not in GAUSSIAN_FAMILY:
            unknown[scope] = unknown.get(scope, 0) + 1
            out.append(EpsilonCheck(row["seq"], "skipped", None,
                                    f"mechanism {mech!r} unknown to the auditor"))
            continue
        q, sigma, steps = float(row["sample_rate"]), float(row["sigma_effective"]), int(row["steps"])
        curve = rdp_curve(q, sigma)
        acc = totals.setdefault(scope, [0.0] * len(ORDERS))
        for i, v in enumerate(curve):
            acc[i] += steps * v
        pairs = history.setdefault(scope, {})
        pairs[(q, sigma)] = pairs.get((q, sigma), 0) + steps
        note = f"lower bound: {unknown[scope]} unknown-mechanism rows excluded" if unknown.get(scope) else ""
        recorded = epsilon_of(row).get("rdp")
        delta = float(row["delta"])
        with _quiet_warnings():
            grid_eps = float(get_privacy_spent(orders=ORDERS, rdp=acc, delta=delta)[0])
        if recorded is None:
            out.append(EpsilonCheck(row["seq"], "skipped", grid_eps, "no 'rdp' epsilon recorded"))
            continue
        if recorded >= grid_eps * (1 - REL_TOL):
            out.append(EpsilonCheck(row["seq"], "ok", grid_eps, note))
            continue
        best = _continuous_min(history[scope], acc, delta, compute_rdp, grid_eps)
        if recorded >= best * (1 - REL_TOL):
            out.append(EpsilonCheck(row["seq"], "ok", best, note or "finer orders than the grid"))
        else:
            out.append(EpsilonCheck(row["seq"], "UNDER-COUNT", best,
                                    f"recorded rdp epsilon {recorded:.6g} < recomputed {best:.6g}"))
    return out


def _continuous_min(history: dict[tuple[float, float], int], acc: list[float], delta: float,
                    compute_rdp: Callable[..., Any], grid_eps: float) -> float:
    """Minimum over real orders in (1, 256] of the Balle et al. (2020) conversion Opacus uses,
    searched between the grid optimum's neighbours (the curve is unimodal in the order)."""
    from scipy.optimize import minimize_scalar

    def conversion(alpha: float, rdp: float) -> float:
        return rdp - (math.log(delta) + math.log(alpha)) / (alpha - 1) + math.log((alpha - 1) / alpha)

    def eps_at(alpha: float) -> float:
        rdp = sum(steps * float(compute_rdp(q=q, noise_multiplier=s, steps=1, orders=alpha))
                  for (q, s), steps in history.items())
        return conversion(alpha, rdp)

    i = min(range(len(ORDERS)), key=lambda j: conversion(ORDERS[j], acc[j]))
    lo = ORDERS[i - 1] if i > 0 else 1.0 + 1e-9
    hi = ORDERS[min(i + 1, len(ORDERS) - 1)]
    with _quiet_warnings():
        res = minimize_scalar(eps_at, bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-9, "maxiter": 500})
    return min(float(res.fun), grid_eps)


class _quiet_warnings:
    """Opacus warns when the optimum sits at the grid's edge; the table says what matters."""

    def __enter__(self) -> None:
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


# -- command line ----------------------------------------------------------------------------------
def _fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def print_table(rows: Sequence[dict[str, Any]], checks: dict[int, EpsilonCheck]) -> None:
    header = ("seq", "round", "unit", "site", "mechanism", "C", "sigma_eff", "q", "steps",
              "survived", "accountant", "eps(acct)", "delta", "eps check")
    lines = [header]
    for r in rows:
        try:
            eps = epsilon_of(r).get(r["accountant"])
        except (ValueError, TypeError, json.JSONDecodeError):
            eps = None
        c = checks.get(r["seq"])
        check = "-" if c is None else (c.status + (f" ({_fmt(c.recomputed)})" if c.recomputed
                                                   is not None else "") + (f" {c.note}" if c.note else ""))
        lines.append((_fmt(r["seq"]), _fmt(r["round"]), _fmt(r["unit"]), _fmt(r["site"]),
                      _fmt(r["mechanism"]), _fmt(r["clip"]), _fmt(r["sigma_effective"]),
                      _fmt(r["sample_rate"]), _fmt(r["steps"]),
                      f"{r['sites_survived']}/{r['sites_planned']}", _fmt(r["accountant"]),
                      _fmt(eps), _fmt(r["delta"]), check))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Verify a secure-fedrl privacy ledger independently.")
    ap.add_argument("target", help="run directory or privacy_ledger.sqlite")
    ap.add_argument("--public-key", help="pin the server's Ed25519 public key (64 hex digits)")
    ap.add_argument("--config-hash", help="pin the federation config hash")
    ap.add_argument("--no-epsilon", action="store_true", help="skip the Opacus epsilon re-check")
    ap.add_argument("--quiet", action="store_true", help="print only the verdict")
    args = ap.parse_args(argv)
    try:
        ledger = load(args.target)
    except AuditFailure as exc:
        print(f"FAIL: {exc}")
        return 2
    checks: list[EpsilonCheck] = []
    failure: AuditFailure | None = None
    try:
        verify(ledger, public_key=args.public_key, config_hash=args.config_hash)
    except AuditFailure as exc:
        failure = exc
    if failure is None and not args.no_epsilon:
        checks = recheck_epsilon(ledger.rows)
    if not args.quiet:
        print_table(ledger.rows, {c.seq: c for c in checks})
    if failure is not None:
        print(f"FAIL: {failure}")
        return 2
    under = [c for c in checks if c.status == "UNDER-COUNT"]
    skipped = [c for c in checks if c.status == "skipped"]
    if under:
        print(f"FAIL: row seq {under[0].seq}: epsilon under-count: {under[0].note} "
              f"({len(under)} row(s) under-counted)")
        return 2
    n = len(ledger.rows)
    head = ledger.head[1] if ledger.head else GENESIS
    print(f"OK: {n} rows, chain intact, signatures valid (head seq {n}, hash {head})")
    if checks:
        print(f"epsilon: {len(checks) - len(skipped)} rows re-checked with Opacus RDP, no under-count"
              + (f"; {len(skipped)} skipped ({skipped[0].note})" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
