"""Synthetic run directories for the report tests: a config, metrics (server and site files) and a
real signed ledger written through the project's ledger API, in milliseconds (no training)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fedrl.ledger import LedgerEntry, PrivacyLedger
from secure_fedrl.ledger.store import public_key_hex

CONFIG_HASH = "cfg-test-0001"
SITES = ["clinic-a", "clinic-b", "clinic-c"]


def _config(unit: str, *, secagg: bool, mechanism: str = "auto") -> str:
    lines = ['[federation]', 'name = "report-test"', 'rounds = 4', 'seed = 1', '',
             '[strategy]', 'name = "fedavg"', 'weighting = "uniform"', '',
             '[secure_aggregation]', f'enabled = {"true" if secagg else "false"}', 'threshold = 0.6', '',
             '[privacy]', f'unit = "{unit}"', 'clip = 1.0', 'target_epsilon = 8.0', 'delta = 1e-05',
             'accountant = "rdp"', f'mechanism = "{mechanism}"', '']
    for i, s in enumerate(SITES):
        lines += ['[[sites]]', f'name = "{s}"', 'env = "CartPole-v1"', f'seed = {i}', '']
    return "\n".join(lines)


def make_run(root: Path, *, unit: str = "trajectory", rounds: int = 4, secagg: bool = True,
             mechanism: str = "auto", key: Ed25519PrivateKey | None = None,
             site_files: bool = True) -> tuple[Path, str]:
    """A run directory like `simulate` leaves; returns (path, ledger public key hex)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.resolved.toml").write_text(_config(unit, secagg=secagg, mechanism=mechanism))
    key = key or Ed25519PrivateKey.generate()
    metrics = []
    if unit != "none":
        ledger = PrivacyLedger.open(root, signing_key=key, config_hash=CONFIG_HASH)
        try:
            for r in range(1, rounds + 1):
                if unit == "trajectory":
                    for i, s in enumerate(SITES):
                        eps = (1.0 + 0.5 * i) * math.sqrt(r)
                        ledger.append(LedgerEntry(
                            round=r, unit="trajectory", site=s, mechanism="dp-sgd", clip=1.0,
                            sigma_planned=1.1, sigma_effective=1.1, sample_rate=0.25, steps=8,
                            sites_planned=1, sites_survived=1, accountant="rdp", epsilon={"rdp": eps},
                            delta=1e-5))
                else:
                    central = mechanism == "gaussian"
                    eps = 1.5 * math.sqrt(r)
                    parts = SITES[: 2 + (r % 2)]
                    ledger.append(LedgerEntry(
                        round=r, unit="client", mechanism="gaussian" if central else "ddg", clip=0.5,
                        sigma_planned=1.2, sigma_effective=1.2 - 0.05 * (r % 2), sample_rate=1.0,
                        sites_planned=3, sites_survived=len(parts), accountant="rdp", epsilon={"rdp": eps},
                        delta=1e-5, threat_model="release" if central else "server",
                        epsilon_server=math.inf if central else eps, epsilon_release=eps if central else eps * 0.9,
                        participants=parts,
                        site_epsilon_server={} if central else {p: eps * (1.0 - 0.1 * j) for j, p in enumerate(parts)}))
        finally:
            ledger.close()
    for r in range(1, rounds + 1):
        row = {"round": r, "sites_sampled": 3, "sites_aggregated": 3 - (r % 2), "sites_rejected": {},
               "sites_dropped": ["clinic-c"] if r % 2 else [], "bytes_per_site": 2610.0 + r,
               "update_norm": 0.9, "epsilon": None if unit == "none" else 1.5 * math.sqrt(r)}
        if unit != "none":
            row.update({"privacy_unit": unit, "noise_multiplier": 1.1, "delta": 1e-5, "epsilon_budget": 8.0})
        if r % 2 == 0:
            row.update({"eval_return_mean": 20.0 * r, "eval_return_worst": 15.0 * r})
        metrics.append(row)
        if site_files:
            for s in SITES:
                d = root / "sites" / s
                d.mkdir(parents=True, exist_ok=True)
                srow = {"round": r, "site": s, "env_steps": 100, "episodes": 4}
                if r % 2 == 0:
                    srow["eval_return"] = 15.0 * r + SITES.index(s)
                with open(d / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(srow) + "\n")
    (root / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    pub = public_key_hex(key)
    (root / "ledger_public_key.hex").write_text(pub + "\n")
    return root, pub


def tamper_epsilon(root: Path, seq: int, value: str = "0000000000000000") -> None:
    """An attacker lowers a recorded epsilon straight in SQLite (triggers dropped first)."""
    conn = sqlite3.connect(root / "privacy_ledger.sqlite")
    try:
        conn.execute("DROP TRIGGER IF EXISTS rows_no_update")
        conn.execute("UPDATE rows SET epsilon = ? WHERE seq = ?", (json.dumps({"rdp": value}, separators=(",", ":")), seq))
        conn.commit()
    finally:
        conn.close()
