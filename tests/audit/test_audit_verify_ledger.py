"""audit/verify_ledger.py: independent of secure_fedrl, agrees with the library, catches under-counts."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

sys.path.insert(0, str(Path(__file__).parents[1] / "ledger"))
from ledger_helpers import CONFIG, TAMPERS, attacker, build, client_entries, rdp_epsilon  # noqa: E402

from secure_fedrl.ledger import LedgerChainError, LedgerEntry, PrivacyLedger  # noqa: E402

SCRIPT = Path(__file__).parents[2] / "audit" / "verify_ledger.py"
FORMAT_MD = Path(__file__).parents[2] / "secure_fedrl" / "ledger" / "FORMAT.md"
_spec = importlib.util.spec_from_file_location("verify_ledger_under_test", SCRIPT)
assert _spec and _spec.loader
vl = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = vl
_spec.loader.exec_module(vl)


def test_script_imports_nothing_from_secure_fedrl() -> None:
    tree = ast.parse(SCRIPT.read_text())
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(n.split(".")[0] == "secure_fedrl" for n in names), names


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the script as an auditor would; also report whether secure_fedrl got imported."""
    code = ("import runpy, sys\nsys.argv = ['verify_ledger.py'] + sys.argv[1:]\ncode = 0\n"
            f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('SECURE_FEDRL_IMPORTED' if any(m.split('.')[0] == 'secure_fedrl' for m in "
            "sys.modules) else 'INDEPENDENT')\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_good_and_tampered_ledgers(tmp_path: Path) -> None:
    build(tmp_path)
    good = _run(str(tmp_path))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK: 6 rows, chain intact, signatures valid" in good.stdout
    assert "6 rows re-checked with Opacus RDP, no under-count" in good.stdout
    assert good.stdout.splitlines()[0].split()[:3] == ["seq", "round", "unit"]
    assert good.stdout.rstrip().endswith("INDEPENDENT")
    with attacker(tmp_path / "privacy_ledger.sqlite") as conn:
        conn.execute("UPDATE rows SET sigma_effective = 3.0 WHERE seq = 2")
    bad = _run(str(tmp_path / "privacy_ledger.sqlite"), "--quiet")
    assert bad.returncode == 2
    assert bad.stdout.splitlines()[0].startswith("FAIL: row seq 2: edited")
    assert "INDEPENDENT" in bad.stdout


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_auditor_agrees_with_the_library(tmp_path: Path, name: str) -> None:
    path = build(tmp_path)
    vl.verify(vl.load(tmp_path))  # intact before
    tamper, seq, reason = TAMPERS[name]
    with attacker(path) as conn:
        tamper(conn)
    with pytest.raises(LedgerChainError) as lib:
        PrivacyLedger.open(tmp_path, config_hash=CONFIG)
    with pytest.raises(vl.AuditFailure) as aud:
        vl.verify(vl.load(path))
    assert (aud.value.seq, aud.value.reason) == (lib.value.seq, lib.value.reason) == (seq, reason)


def test_pins_and_meta_tampering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path)
    pub = vl.load(tmp_path).meta["public_key"]
    vl.verify(vl.load(tmp_path), public_key=pub, config_hash=CONFIG)
    with pytest.raises(vl.AuditFailure, match="config hash mismatch"):
        vl.verify(vl.load(tmp_path), config_hash="cfg-other")
    with pytest.raises(vl.AuditFailure, match="wrong key"):
        vl.verify(vl.load(tmp_path), public_key="00" * 32)
    with attacker(tmp_path / "privacy_ledger.sqlite") as conn:
        conn.execute("UPDATE meta SET value = 'cfg-forged' WHERE key = 'config_hash'")
    assert vl.main([str(tmp_path), "--quiet", "--no-epsilon"]) == 2
    assert "FAIL: row seq 1: config hash mismatch" in capsys.readouterr().out
    assert vl.main([str(tmp_path / "nope")]) == 2
    assert "FAIL: ledger: missing" in capsys.readouterr().out


def test_auditor_reproduces_the_format_md_vector() -> None:
    text = FORMAT_MD.read_text()
    example = next(line for line in text.splitlines() if line.startswith('{"accountant"'))
    obj = __import__("json").loads(example)
    row = {k: (vl.struct.unpack(">d", bytes.fromhex(v))[0] if k in vl.FLOATS else v)
           for k, v in obj.items() if k not in ("format", "epsilon")}
    row["epsilon"] = '{"rdp":"3fb999999999999a"}'
    assert vl.canonical(row) == example.encode()
    assert vl.sha256_hex(example.encode()) in text


def _ledger_with(tmp_path: Path, entries: list[LedgerEntry]) -> Path:
    with PrivacyLedger.open(tmp_path, config_hash=CONFIG) as led:
        for e in entries:
            led.append(e)
    return tmp_path


def test_epsilon_recheck_passes_honest_rows(tmp_path: Path) -> None:
    _ledger_with(tmp_path, client_entries(6))
    checks = vl.recheck_epsilon(vl.load(tmp_path).rows)
    assert [c.status for c in checks] == ["ok"] * 6
    # The auditor's value is an independent recomputation, close to what the recorder got.
    recorded = [e.epsilon["rdp"] for e in client_entries(6)]
    assert all(c.recomputed <= r * (1 + 1e-9) for c, r in zip(checks, recorded))
    assert np.allclose([c.recomputed for c in checks], recorded, rtol=1e-2)


def test_epsilon_undercount_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = client_entries(6)
    low = entries[3].epsilon["rdp"] * (1 - 1e-4)
    assert low > entries[2].epsilon["rdp"]  # still monotone: the ledger itself cannot tell
    entries[3] = dataclasses.replace(entries[3], epsilon={"rdp": low, "prv": low * 0.9})
    _ledger_with(tmp_path, entries)
    checks = vl.recheck_epsilon(vl.load(tmp_path).rows)
    assert [c.status for c in checks] == ["ok", "ok", "ok", "UNDER-COUNT", "ok", "ok"]
    assert vl.main([str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "FAIL: row seq 4: epsilon under-count" in out and "chain intact" not in out


def _q1_eps(sigma: float, rounds: int, orders: list[float], delta: float) -> float:
    rdp = compute_rdp(q=1.0, noise_multiplier=sigma, steps=rounds, orders=orders)
    return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def test_finer_order_grids_are_not_flagged_but_anything_below_every_order_is(tmp_path: Path) -> None:
    """q = 1 (full participation) has closed-form RDP, so a very fine grid is cheap to compute."""
    sigma, delta = 5.5, 1e-5
    fine = [1 + x / 1000 for x in range(1, 255_000)]
    coarse_eps = _q1_eps(sigma, 2, vl.ORDERS, delta)
    fine_eps = _q1_eps(sigma, 2, fine, delta)
    assert fine_eps < coarse_eps * (1 - 1e-6)  # the fine grid really is tighter than the auditor's
    base = dict(unit="client", mechanism="gaussian", clip=1.0, sigma_planned=sigma,
                sigma_effective=sigma, sample_rate=1.0, sites_planned=4, sites_survived=4,
                accountant="rdp", delta=delta)
    entries = [LedgerEntry(round=0, epsilon={"rdp": _q1_eps(sigma, 1, vl.ORDERS, delta)}, **base),
               LedgerEntry(round=1, epsilon={"rdp": fine_eps}, **base),
               LedgerEntry(round=2, epsilon={"rdp": _q1_eps(sigma, 3, fine, delta) * (1 - 1e-4)},
                           **base)]
    _ledger_with(tmp_path, entries)
    checks = vl.recheck_epsilon(vl.load(tmp_path).rows)
    assert [c.status for c in checks] == ["ok", "ok", "UNDER-COUNT"], checks


def test_trajectory_rows_per_site_and_unknown_mechanisms(tmp_path: Path) -> None:
    q, sigma, delta, steps = 0.02, 1.1, 1e-5, 50
    base = dict(unit="trajectory", mechanism="dp-sgd", clip=1.0, sigma_planned=sigma,
                sigma_effective=sigma, sample_rate=q, steps=steps, sites_planned=2,
                sites_survived=2, accountant="rdp", delta=delta)
    honest = [rdp_epsilon([(q, sigma, steps)] * (r + 1), delta) for r in range(2)]
    entries = [
        LedgerEntry(round=0, site="h1", epsilon={"rdp": honest[0]}, **base),
        LedgerEntry(round=0, site="h2", epsilon={"rdp": honest[0]}, **base),
        LedgerEntry(round=1, site="h1", epsilon={"rdp": honest[1]}, **base),
        # h2 forgot half of its local steps this round:
        LedgerEntry(round=1, site="h2", epsilon={"rdp": rdp_epsilon([(q, sigma, steps)] * 1 +
                                                                    [(q, sigma, steps // 2)], delta)},
                    **base),
        LedgerEntry(round=2, site="h1", epsilon={"rdp": math.inf},
                    **{**base, "mechanism": "laplace"}),
        LedgerEntry(round=2, site="h2", epsilon={"prv": 99.0},
                    **{**base, "accountant": "prv"}),
    ]
    _ledger_with(tmp_path, entries)
    checks = vl.recheck_epsilon(vl.load(tmp_path).rows)
    assert [c.status for c in checks] == ["ok", "ok", "ok", "UNDER-COUNT", "skipped", "skipped"]
    assert "mechanism 'laplace' unknown to the auditor" in checks[4].note
    assert "no 'rdp' epsilon recorded" in checks[5].note
