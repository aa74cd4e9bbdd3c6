"""audit/verify_ledger.py: independent of secure_fedrl and of Opacus, agrees with the library on
the chain, recomputes both v2 epsilons, and catches tampering, rollback, config disagreement and
under-counts. Honest numbers here come from Opacus (subsampled Gaussian) and from a numpy
transcription of FORMAT.md (DDG) on the SERVER's order grid, never from the auditor's code."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

sys.path.insert(0, str(Path(__file__).parents[1] / "ledger"))
from ledger_helpers import (CONFIG, TAMPERS, attacker, build, client_entries, key_dir_for,  # noqa: E402
                            open_ledger)

from secure_fedrl.ledger import PUBLIC_KEY_FILE, LedgerChainError, LedgerEntry  # noqa: E402

SCRIPT = Path(__file__).parents[2] / "audit" / "verify_ledger.py"
FORMAT_MD = Path(__file__).parents[2] / "secure_fedrl" / "ledger" / "FORMAT.md"
_spec = importlib.util.spec_from_file_location("verify_ledger_under_test", SCRIPT)
assert _spec and _spec.loader
vl = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = vl
_spec.loader.exec_module(vl)

SERVER_ORDERS = np.asarray(vl.SERVER_ORDERS)
DELTA = 1e-5


# -- honest numbers, computed as the server does (its grid), with code that is not the auditor's --
def psg_eps(history: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    rdp = sum(k * np.asarray(compute_rdp(q=q, noise_multiplier=z, steps=1, orders=SERVER_ORDERS))
              for q, z, k in history)
    return float(get_privacy_spent(orders=SERVER_ORDERS, rdp=rdp, delta=delta)[0])


DDG = dict(beta=math.exp(-0.5), bits=16.0, gamma=0.01, local_stddev=0.5, padded_dim=64.0)


def ddg_l2(clip: float, p: dict) -> float:
    c, d = clip / p["gamma"], p["padded_dim"]
    return min(c + math.sqrt(d), math.sqrt(c * c + d / 4 + math.sqrt(2 * math.log(1 / p["beta"]))
                                           * (c + math.sqrt(d) / 2)))


def ddg_curve(clip: float, p: dict, m: int, q: float | None = None) -> np.ndarray:
    a = SERVER_ORDERS
    s, d = p["local_stddev"] / p["gamma"], p["padded_dim"]
    d2 = ddg_l2(clip, p)
    d1 = d2 * min(math.sqrt(d), d2)
    tau = 10 * sum(math.exp(-2 * math.pi ** 2 * s * s * k / (k + 1)) for k in range(1, m))
    l2, l1 = d2 / (math.sqrt(m) * s), d1 / (math.sqrt(m) * s)
    eps = np.minimum.reduce([a / 2 * l2 ** 2 + tau * d, a / 2 * (l2 ** 2 + 2 * l1 * tau + tau ** 2 * d),
                             a / 2 * (l2 + math.sqrt(d) * tau) ** 2])
    if q is None:
        return eps
    return np.logaddexp(math.log1p(-q), math.log(q) + (a - 1) * eps) / (a - 1)


def conv(rdp: np.ndarray, delta: float = DELTA) -> float:
    return float(get_privacy_spent(orders=SERVER_ORDERS, rdp=rdp, delta=delta)[0])


def capped(rounds: int, q: float, base: np.ndarray, cap: int) -> np.ndarray:
    """FORMAT.md's capped release curve, transcribed with numpy (one base curve: M = m)."""
    a = SERVER_ORDERS
    k = np.arange(rounds + 1)
    logw = np.asarray([math.lgamma(rounds + 1) - math.lgamma(i + 1) - math.lgamma(rounds - i + 1)
                       for i in k]) + k * math.log(q) + (rounds - k) * math.log1p(-q)
    terms = logw[None, :] + (a[:, None] - 1) * base[:, None] * np.minimum(k, cap)[None, :]
    return np.logaddexp.reduce(terms, axis=1) / (a - 1)


def ddg_entries(rounds: list[list[str]], *, clip: float = 0.5, q: float = 0.5, m: int = 3,
                threat: str = "server", planned: int = 6, budget: float = math.inf,
                cap_error: int = 0) -> list[LedgerEntry]:
    """Client-level DDG rounds with honest v2 numbers (the given participants per round)."""
    params = {**DDG, "l2_bound": ddg_l2(clip, DDG)}
    base, rel = ddg_curve(clip, DDG, m), ddg_curve(clip, DDG, m, q)
    per_site: dict[str, np.ndarray] = {}
    fed = np.zeros_like(SERVER_ORDERS)
    out = []
    for r, parts in enumerate(rounds):
        for s in parts:
            per_site[s] = per_site.get(s, 0) + base
        fed = fed + rel
        site_eps = {s: conv(per_site[s]) for s in parts}
        worst = max((conv(c) for c in per_site.values()), default=0.0)
        curve = fed
        if math.isfinite(budget):
            cap = max(k for k in range(r + 2) if k == 0 or conv(k * base) <= budget) - cap_error
            curve = np.minimum(fed, capped(r + 1, q, base, cap))
        e_rel = min(conv(curve), worst)
        enforced = worst if threat == "server" else e_rel
        out.append(LedgerEntry(
            round=r + 1, unit="client", mechanism="ddg", clip=clip, sigma_planned=1.0,
            sigma_effective=1.0, sample_rate=q, sites_planned=planned, sites_survived=len(parts),
            accountant="rdp", epsilon={"rdp": enforced}, delta=DELTA, threat_model=threat,
            epsilon_server=worst, epsilon_release=e_rel, noise_shares=m, max_colluding=0,
            params=params, participants=tuple(parts), site_epsilon_server=site_eps,
            site_budget=budget))
    return out


def traj_entries(rounds: int, sites: list[str], *, q: float = 0.25, z: float = 1.1,
                 steps: int = 8) -> list[LedgerEntry]:
    out = []
    for r in range(rounds):
        eps = psg_eps([(q, z, steps * (r + 1))])
        for s in sites:
            out.append(LedgerEntry(round=r + 1, unit="trajectory", site=s, mechanism="dp-sgd",
                                   clip=1.0, sigma_planned=z, sigma_effective=z, sample_rate=q,
                                   steps=steps, sites_planned=1, sites_survived=1,
                                   accountant="rdp", epsilon={"rdp": eps}, delta=DELTA,
                                   epsilon_server=eps, epsilon_release=eps))
    return out


def gaussian_entries(rounds: int, *, q: float = 0.2, z: float = 1.0) -> list[LedgerEntry]:
    out = []
    for r in range(rounds):
        eps = psg_eps([(q, z, r + 1)])
        out.append(LedgerEntry(round=r + 1, unit="client", mechanism="gaussian", clip=0.5,
                               sigma_planned=z, sigma_effective=z, sample_rate=q,
                               sites_planned=5, sites_survived=5, accountant="rdp",
                               epsilon={"rdp": eps}, delta=DELTA, threat_model="release",
                               epsilon_server=math.inf, epsilon_release=eps,
                               participants=("a", "b")))
    return out


ROUNDS = [["a", "b", "c"], ["a", "c", "d"], ["b", "c", "d", "e"], ["a", "b", "e"]]


def _ledger_with(tmp_path: Path, entries: list[LedgerEntry]) -> Path:
    with open_ledger(tmp_path, config_hash=CONFIG) as led:
        for e in entries:
            led.append(e)
    return tmp_path


def _pin(tmp_path: Path) -> str:
    return str(key_dir_for(tmp_path) / PUBLIC_KEY_FILE)


def _recheck(tmp_path: Path, **kw):
    ledger = vl.load(tmp_path)
    vl.verify(ledger)
    return vl.recheck_epsilon(ledger.rows, **kw)


# -- independence -----------------------------------------------------------------------------------
def test_script_imports_nothing_from_secure_fedrl_or_a_dp_library() -> None:
    tree = ast.parse(SCRIPT.read_text())
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(n.split(".")[0] in ("secure_fedrl", "opacus", "dp_accounting", "prv_accountant",
                                           "scipy", "numpy", "torch") for n in names), names


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the script as an auditor would; also report whether secure_fedrl/opacus got imported."""
    code = ("import runpy, sys\nsys.argv = ['verify_ledger.py'] + sys.argv[1:]\ncode = 0\n"
            f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('IMPORTED' if any(m.split('.')[0] in ('secure_fedrl', 'opacus') for m in "
            "sys.modules) else 'INDEPENDENT')\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)


def test_order_grid_is_a_superset_of_the_servers_and_reaches_512() -> None:
    assert set(vl.SERVER_ORDERS) <= set(vl.ORDERS)
    assert max(vl.ORDERS) >= 512 and any(not float(a).is_integer() for a in vl.ORDERS if a > 2)
    assert len(vl.SERVER_ORDERS) == 214  # FORMAT.md's count


@pytest.mark.parametrize("q, z", [(0.25, 3.0), (0.01, 1.1), (0.1, 0.7), (0.5, 5.0), (1.0, 2.0)])
def test_own_subsampled_gaussian_rdp_matches_opacus(q: float, z: float) -> None:
    orders = [1.01, 1.5, 2.0, 2.5, 3.3, 7.75, 10.5, 31.0, 63.5, 128.0, 255.5, 512.0, 1000.0]
    ref = compute_rdp(q=q, noise_multiplier=z, steps=1, orders=orders)
    mine = [vl.rdp_psg(q, z, a) for a in orders]
    np.testing.assert_allclose(mine, ref, rtol=1e-7)


# -- the command line ----------------------------------------------------------------------------
def test_cli_pinned_ok_unpinned_refused_tampered_fails(tmp_path: Path) -> None:
    _ledger_with(tmp_path, traj_entries(2, ["h1", "h2"]))
    good = _run(str(tmp_path), "--public-key-file", _pin(tmp_path), "--ledger-only")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK: 4 rows, chain intact, signatures valid" in good.stdout
    assert "4 rows re-checked" in good.stdout and "orders to 1024" in good.stdout
    assert good.stdout.splitlines()[0].split()[:3] == ["seq", "round", "unit"]
    assert good.stdout.rstrip().endswith("INDEPENDENT")
    unpinned = _run(str(tmp_path), "--ledger-only", "--quiet")
    assert unpinned.returncode == 3 and "NOT PINNED" in unpinned.stdout
    assert "only the ledger's internal consistency" in unpinned.stdout
    bare = _run(str(tmp_path), "--public-key-file", _pin(tmp_path), "--quiet")
    assert bare.returncode == 3 and "NOT CHECKED" in bare.stdout  # no run files, no --ledger-only
    wrong = _run(str(tmp_path), "--public-key", "ab" * 32, "--ledger-only", "--quiet")
    assert wrong.returncode == 2 and wrong.stdout.startswith("FAIL: ledger: wrong key")
    with attacker(tmp_path / "privacy_ledger.sqlite") as conn:
        conn.execute("UPDATE rows SET sigma_effective = 3.0 WHERE seq = 2")
    bad = _run(str(tmp_path / "privacy_ledger.sqlite"), "--public-key-file", _pin(tmp_path),
               "--ledger-only", "--quiet")
    assert bad.returncode == 2
    assert bad.stdout.splitlines()[0].startswith("FAIL: row seq 2: edited")
    assert "Traceback" not in bad.stdout + bad.stderr and "INDEPENDENT" in bad.stdout


def test_garbage_input_is_one_line_not_a_traceback(tmp_path: Path, capsys) -> None:
    (tmp_path / "privacy_ledger.sqlite").write_bytes(b"not sqlite at all" * 100)
    assert vl.main([str(tmp_path), "--public-key", "00" * 32]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("FAIL: ledger: unreadable")
    assert vl.main([str(tmp_path / "nope"), "--public-key", "00" * 32]) == 2
    assert "FAIL: ledger: missing" in capsys.readouterr().out
    assert vl.main([str(tmp_path), "--public-key", "xyz"]) == 2
    assert "FAIL: ledger: bad pin" in capsys.readouterr().out


# -- chain: agreement with the library, every field of every row --------------------------------------
@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_auditor_agrees_with_the_library(tmp_path: Path, name: str) -> None:
    path = build(tmp_path)
    vl.verify(vl.load(tmp_path))  # intact before
    tamper, seq, reason = TAMPERS[name]
    with attacker(path) as conn:
        tamper(conn)
    with pytest.raises(LedgerChainError) as lib:
        open_ledger(tmp_path, config_hash=CONFIG)
    with pytest.raises(vl.AuditFailure) as aud:
        vl.verify(vl.load(path))
    assert (aud.value.seq, aud.value.reason) == (lib.value.seq, lib.value.reason) == (seq, reason)


def _edits(conn, col: str, seq: int) -> None:
    """Change column `col` of row `seq` to another well-typed value."""
    (value,) = conn.execute(f"SELECT {col} FROM rows WHERE seq = ?", (seq,)).fetchone()
    if col == "privacy":
        obj = json.loads(value)
        obj["epsilon_release"] = vl.f64(vl.from_f64(obj["epsilon_release"]) * 0.5)
        new = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    elif col == "epsilon":
        new = json.dumps({k: vl.f64(vl.from_f64(v) * 0.5) for k, v in json.loads(value).items()},
                         separators=(",", ":"))
    elif isinstance(value, float):
        new = value * 1.5
    elif isinstance(value, int):
        new = value + 1
    elif value is None:
        new = "x"
    else:
        new = value[:-1] + ("0" if value[-1] != "0" else "1")
    conn.execute(f"UPDATE rows SET {col} = ? WHERE seq = ?", (new, seq))


FIELDS = [c for c in vl.COLUMNS if c not in ("seq", "signature")]


@pytest.mark.parametrize("col", FIELDS)
def test_an_edited_field_in_any_row_is_detected_at_that_row(tmp_path: Path, col: str) -> None:
    _ledger_with(tmp_path, ddg_entries(ROUNDS))
    pristine = tmp_path.parent / f"{tmp_path.name}-pristine"
    shutil.copytree(tmp_path, pristine)
    for seq in range(1, len(ROUNDS) + 1):
        shutil.rmtree(tmp_path)
        shutil.copytree(pristine, tmp_path)
        with attacker(tmp_path / "privacy_ledger.sqlite") as conn:
            _edits(conn, col, seq)
        with pytest.raises(vl.AuditFailure) as aud:
            vl.verify(vl.load(tmp_path))
        assert aud.value.seq == seq, (col, seq, str(aud.value))


def test_forged_and_missing_signatures(tmp_path: Path) -> None:
    _ledger_with(tmp_path, ddg_entries(ROUNDS))
    pristine = tmp_path.parent / f"{tmp_path.name}-pristine"
    shutil.copytree(tmp_path, pristine)
    for sig in ("", "00" * 64, Ed25519PrivateKey.generate().sign(b"x").hex()):
        shutil.rmtree(tmp_path)
        shutil.copytree(pristine, tmp_path)
        with attacker(tmp_path / "privacy_ledger.sqlite") as conn:
            conn.execute("UPDATE rows SET signature = ? WHERE seq = 2", (sig,))
        with pytest.raises(vl.AuditFailure, match="row seq 2: bad signature"):
            vl.verify(vl.load(tmp_path))
    shutil.rmtree(tmp_path)
    shutil.copytree(pristine, tmp_path)
    with attacker(tmp_path / "privacy_ledger.sqlite") as conn:
        conn.execute("UPDATE head SET signature = ?", ("11" * 64,))
    with pytest.raises(vl.AuditFailure, match="head's signature is invalid"):
        vl.verify(vl.load(tmp_path))


def test_pins_and_meta_tampering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path)
    pub = vl.load(tmp_path).meta["public_key"]
    vl.verify(vl.load(tmp_path), public_key=pub, config_hash=CONFIG)
    with pytest.raises(vl.AuditFailure, match="config hash mismatch"):
        vl.verify(vl.load(tmp_path), config_hash="cfg-other")
    with pytest.raises(vl.AuditFailure, match="wrong key"):
        vl.verify(vl.load(tmp_path), public_key="00" * 32)
    # An attacker who re-signs everything with a key of their own passes only without a pin.
    with attacker(tmp_path / "privacy_ledger.sqlite") as conn:
        conn.execute("UPDATE meta SET value = 'cfg-forged' WHERE key = 'config_hash'")
    assert vl.main([str(tmp_path), "--quiet", "--no-epsilon", "--public-key", pub, "--ledger-only"]) == 2
    assert "FAIL: row seq 1: config hash mismatch" in capsys.readouterr().out


def test_auditor_reproduces_the_format_md_vector() -> None:
    text = FORMAT_MD.read_text()
    example = next(line for line in text.splitlines() if line.startswith('{"accountant"'))
    obj = json.loads(example)
    row = {k: (vl.from_f64(v) if k in vl.FLOATS else v) for k, v in obj.items()
           if k not in ("format", "epsilon") and k not in vl.V2_KEYS}
    row["epsilon"] = json.dumps(obj["epsilon"], separators=(",", ":"))
    row["privacy"] = json.dumps({k: obj[k] for k in vl.V2_KEYS}, sort_keys=True, separators=(",", ":"))
    assert vl.canonical(row) == example.encode()
    assert vl.sha256_hex(example.encode()) in text


# -- epsilon: every mechanism, both threat models ------------------------------------------------
def test_honest_ddg_rows_pass_and_the_auditor_recomputes_them(tmp_path: Path) -> None:
    entries = ddg_entries(ROUNDS)
    _ledger_with(tmp_path, entries)
    checks, findings = _recheck(tmp_path)
    assert findings == [] and [c.status for c in checks] == ["ok"] * len(ROUNDS)
    for c, e in zip(checks, entries):  # independent, and within 1% of the recorder
        assert c.recomputed["server"] <= e.epsilon_server * (1 + 1e-9)
        assert c.recomputed["server"] == pytest.approx(e.epsilon_server, rel=1e-2)
        assert c.recomputed["release"] == pytest.approx(e.epsilon_release, rel=1e-2)
    # A site charged twice (a, c) is worse off than one charged once (e) against the server.
    assert entries[-1].epsilon_server > entries[2].site_epsilon_server["e"]


def test_ddg_is_not_checked_against_a_plain_gaussian(tmp_path: Path) -> None:
    """The tau term of the DDG bound is what a Gaussian re-check would miss."""
    p = {**DDG, "local_stddev": 0.02}  # s = 2 on the grid: tau is not negligible
    gauss = 0.5 / 0.02 / (math.sqrt(3) * 2)  # l2 of a plain Gaussian with the same shares
    assert ddg_curve(0.5, p, 3)[10] > SERVER_ORDERS[10] / 2 * gauss ** 2 * 1.01
    e = ddg_entries([["a", "b", "c"]])[0]
    low = conv(SERVER_ORDERS / 2 * ddg_l2(0.5, p) ** 2 / (3 * 4.0))  # tau dropped
    bad = dataclasses.replace(e, params={**p, "l2_bound": ddg_l2(0.5, p)}, epsilon={"rdp": low},
                              epsilon_server=low, epsilon_release=min(low, e.epsilon_release),
                              site_epsilon_server={s: low for s in e.participants})
    _ledger_with(tmp_path, [bad])
    _, findings = _recheck(tmp_path)
    assert findings and findings[0].reason == "epsilon under-count", findings


@pytest.mark.parametrize("what", ["site", "server", "release"])
def test_ddg_under_counts_are_flagged(tmp_path: Path, what: str) -> None:
    entries = ddg_entries(ROUNDS)
    e = entries[2]
    if what == "site":
        site = dict(e.site_epsilon_server)
        site["e"] *= 0.95
        entries[2] = dataclasses.replace(e, site_epsilon_server=site)
    elif what == "server":
        entries[2] = dataclasses.replace(e, epsilon_server=e.epsilon_server * 0.95,
                                         epsilon={"rdp": e.epsilon_server * 0.95})
    else:
        entries[2] = dataclasses.replace(e, epsilon_release=e.epsilon_release * 0.95)
    _ledger_with(tmp_path, entries)
    checks, findings = _recheck(tmp_path)
    assert [c.status for c in checks] == ["ok", "ok", "UNDER-COUNT", "ok"], findings
    assert findings[0].seq == 3 and findings[0].reason == "epsilon under-count"


def test_ddg_release_counts_the_sampling_discount_only_once(tmp_path: Path) -> None:
    """Recording the plain subsampled-Gaussian discount (q^2 order) instead of the mixture bound."""
    entries = ddg_entries(ROUNDS, threat="release", q=0.1)
    _ledger_with(tmp_path, entries)
    _, findings = _recheck(tmp_path)
    assert findings == []
    e = entries[1]
    rdp = 2 * np.asarray(compute_rdp(q=0.1, noise_multiplier=1.0, steps=1, orders=SERVER_ORDERS))
    psg = conv(rdp)
    assert psg < e.epsilon_release
    other = tmp_path.parent / f"{tmp_path.name}-psg"
    other.mkdir()
    entries[1] = dataclasses.replace(e, epsilon_release=psg, epsilon={"rdp": psg})
    _ledger_with(other, entries)
    _, findings = _recheck(other)
    assert findings and findings[0].seq == 2 and findings[0].reason == "epsilon under-count"


PAIRS = [["a", "b"], ["c", "d"], ["a", "c"], ["b", "d"], ["e", "f"], ["e", "f"]]


def _two_round_budget() -> float:
    base = ddg_curve(0.5, DDG, 2)
    return (conv(2 * base) + conv(3 * base)) / 2  # every site's guard admits 2 participations


def test_ddg_release_with_site_budgets_uses_the_capped_bound(tmp_path: Path) -> None:
    budget = _two_round_budget()
    entries = ddg_entries(PAIRS, q=0.1, m=2, budget=budget)
    uncapped = ddg_entries(PAIRS, q=0.1, m=2)
    assert entries[-1].epsilon_release < uncapped[-1].epsilon_release * 0.95  # the cap matters
    _ledger_with(tmp_path, entries)
    checks, findings = _recheck(tmp_path)
    assert findings == [] and all(c.status == "ok" for c in checks), findings
    other = tmp_path.parent / f"{tmp_path.name}-p1"
    other.mkdir()
    low = ddg_entries(PAIRS, q=0.1, m=2, budget=budget, cap_error=1)  # P one too small
    _ledger_with(other, low)
    _, findings = _recheck(other)
    assert findings and findings[0].reason == "epsilon under-count", findings


def test_a_site_over_its_budget_is_flagged(tmp_path: Path) -> None:
    entries = ddg_entries(PAIRS[:3] + [["a", "b"]], q=0.9, m=2, budget=_two_round_budget())
    _ledger_with(tmp_path, entries)
    _, findings = _recheck(tmp_path)
    assert (4, "budget exceeded") in [(f.seq, f.reason) for f in findings]


def test_ddg_parameter_and_participant_checks(tmp_path: Path) -> None:
    entries = ddg_entries(ROUNDS)
    e = entries[1]
    entries[1] = dataclasses.replace(e, params={**e.params, "l2_bound": e.params["l2_bound"] * 0.9})
    entries[2] = dataclasses.replace(entries[2], noise_shares=0)
    entries[0] = dataclasses.replace(entries[0], max_colluding=1)  # 3 participants, 1 colludes, m = 3
    site = dict(entries[3].site_epsilon_server)
    site.pop("b")
    entries[3] = dataclasses.replace(entries[3], site_epsilon_server=site)
    _ledger_with(tmp_path, entries)
    _, findings = _recheck(tmp_path)
    got = [(f.seq, f.reason) for f in findings]
    assert (2, "bad ddg parameters") in got and (3, "bad ddg parameters") in got
    assert any(f.seq == 1 and "honest shares" in f.detail for f in findings)
    assert not any(f.seq == 4 and "honest shares" in f.detail for f in findings)
    assert (4, "bad participants") in got


def test_trajectory_rows_per_site_and_under_count(tmp_path: Path) -> None:
    entries = traj_entries(3, ["h1", "h2"])
    _ledger_with(tmp_path, entries)
    checks, findings = _recheck(tmp_path)
    assert findings == [] and all(c.status == "ok" for c in checks)
    other = tmp_path.parent / f"{tmp_path.name}-low"
    other.mkdir()
    half = psg_eps([(0.25, 1.1, 8 * 2 + 4)])  # h2 forgot half of its local steps in round 3
    entries[5] = dataclasses.replace(entries[5], epsilon={"rdp": half}, epsilon_server=half,
                                     epsilon_release=half)
    _ledger_with(other, entries)
    checks, findings = _recheck(other)
    assert [c.status for c in checks] == ["ok"] * 5 + ["UNDER-COUNT"]
    assert findings[0].seq == 6 and "site h2" in findings[0].detail


def test_central_gaussian_has_no_guarantee_against_the_server(tmp_path: Path) -> None:
    entries = gaussian_entries(3)
    _ledger_with(tmp_path, entries)
    _, findings = _recheck(tmp_path)
    assert findings == []
    other = tmp_path.parent / f"{tmp_path.name}-finite"
    other.mkdir()
    entries[1] = dataclasses.replace(entries[1], epsilon_server=5.0)
    _ledger_with(other, entries)
    _, findings = _recheck(other)
    assert findings and findings[0].seq == 2 and "epsilon_server" in findings[0].detail


def test_small_epsilon_with_orders_above_256_is_not_a_false_under_count(tmp_path: Path) -> None:
    """sigma = 100, q = 1: the optimal order is ~480; the old auditor (orders <= 256) flagged it."""
    z = 100.0
    old_grid = [o for o in vl.SERVER_ORDERS if o <= 256]
    eps = psg_eps([(1.0, z, 1)])
    old = float(get_privacy_spent(orders=old_grid, rdp=[a / (2 * z * z) for a in old_grid], delta=DELTA)[0])
    assert eps < old * (1 - 1e-3)  # what an orders-to-256 auditor would call an under-count
    e = gaussian_entries(1, q=1.0, z=z)[0]
    e = dataclasses.replace(e, epsilon={"rdp": eps}, epsilon_release=eps)
    _ledger_with(tmp_path, [e])
    checks, findings = _recheck(tmp_path)
    assert findings == [] and checks[0].recomputed["release"] <= eps * (1 + 1e-9)


def test_finer_order_grids_are_not_flagged_but_anything_below_every_order_is(tmp_path: Path) -> None:
    z = 5.5
    fine = np.asarray([1 + x / 1000 for x in range(1, 255_000)])

    def fine_eps(rounds: int) -> float:
        return float(get_privacy_spent(orders=fine, rdp=rounds * fine / (2 * z * z), delta=DELTA)[0])

    assert fine_eps(2) < psg_eps([(1.0, z, 2)]) * (1 - 1e-6)  # the fine grid is tighter
    es = [psg_eps([(1.0, z, 1)]), fine_eps(2), fine_eps(3) * (1 - 1e-4)]
    entries = [dataclasses.replace(gaussian_entries(1, q=1.0, z=z)[0], round=i + 1,
                                   epsilon={"rdp": x}, epsilon_release=x) for i, x in enumerate(es)]
    _ledger_with(tmp_path, entries)
    checks, _ = _recheck(tmp_path)
    assert [c.status for c in checks] == ["ok", "ok", "UNDER-COUNT"], checks


def test_reproducible_sampling_and_unknown_mechanisms_fail(tmp_path: Path) -> None:
    entries = traj_entries(1, ["h1", "h2"])
    entries[0] = dataclasses.replace(entries[0], sampling="reproducible")
    entries[1] = dataclasses.replace(entries[1], mechanism="laplace")
    _ledger_with(tmp_path, entries)
    _, findings = _recheck(tmp_path)
    assert [(f.seq, f.reason) for f in findings] == [(1, "not a privacy guarantee"),
                                                     (2, "unknown mechanism")]
    _, findings = _recheck(tmp_path, allow_reproducible=True)
    assert [(f.seq, f.reason) for f in findings] == [(2, "unknown mechanism")]


def test_enforced_epsilon_must_be_the_threat_models(tmp_path: Path) -> None:
    e = ddg_entries(ROUNDS[:1])[0]
    _ledger_with(tmp_path, [dataclasses.replace(e, epsilon={"rdp": e.epsilon_release})])
    _, findings = _recheck(tmp_path)
    assert findings and findings[0].reason == "epsilon mismatch"


# -- the run directory: rollback and config ----------------------------------------------------------
CONFIG_TOML = """
[federation]
name = "audit-test"
[secure_aggregation]
enabled = true
max_colluding_sites = 0
[sampling]
fraction = 0.5
poisson = true
[privacy]
unit = "client"
mechanism = "ddg"
clip = 0.5
noise_multiplier = 1.0
delta = 1e-05
threat_model = "server"
"""


def _run_dir(tmp_path: Path, entries: list[LedgerEntry], *, snapshot_after: int | None = None,
             config: str = CONFIG_TOML) -> Path:
    """A run directory as the runtime writes it: ledger, metrics with ledger heads, state.json,
    checkpoints; optionally keep a copy of the ledger files after `snapshot_after` rows."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.resolved.toml").write_text(config)
    (run / "config.fingerprint").write_text(CONFIG)
    metrics = []
    with open_ledger(run, config_hash=CONFIG) as led:
        for i, e in enumerate(entries):
            led.append(e)
            seq, h = led.head()
            metrics.append({"round": e.round, "ledger_head": {"seq": seq, "row_hash": h}})
            (run / "checkpoints" / f"round-{e.round:05d}.pt").write_bytes(b"")
            if snapshot_after == i + 1:
                snap = tmp_path / "snapshot"
                snap.mkdir()
                for f in run.glob("privacy_ledger.sqlite*"):
                    shutil.copy2(f, snap / f.name)
        (run / "state.json").write_text(json.dumps({"round": entries[-1].round,
                                                    "ledger_head": metrics[-1]["ledger_head"]}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


def test_an_honest_run_directory_passes(tmp_path: Path, capsys) -> None:
    run = _run_dir(tmp_path, ddg_entries(ROUNDS))
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "run directory: ledger head and last round agree with metrics.jsonl (4 rounds), " \
           "state.json, checkpoints (4), config.resolved.toml" in out


def test_a_rolled_back_ledger_fails_even_though_it_is_validly_signed(tmp_path: Path, capsys) -> None:
    run = _run_dir(tmp_path, ddg_entries(ROUNDS), snapshot_after=2)
    for f in run.glob("privacy_ledger.sqlite*"):
        f.unlink()
    for f in (tmp_path / "snapshot").iterdir():
        shutil.copy2(f, run / f.name)
    vl.verify(vl.load(run), public_key=vl.load(run).meta["public_key"])  # consistent and signed
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("FAIL: run: rolled back: metrics.jsonl round 3 recorded ledger row 3, "
                               "the ledger ends at row 2") for line in lines), lines
    assert any("state.json" in line for line in lines)
    assert any("checkpoint round-00004.pt is at round 4, the ledger's last round is 2" in line
               for line in lines)


def test_a_consistently_rewritten_ledger_fails(tmp_path: Path, capsys) -> None:
    """The attacker holds the key and re-signs a same-length ledger with a site left out."""
    entries = ddg_entries(ROUNDS)
    run = _run_dir(tmp_path, entries)
    forged = ddg_entries([ROUNDS[0], ["a", "c"], ROUNDS[2], ROUNDS[3]])
    for f in run.glob("privacy_ledger.sqlite*"):
        f.unlink()
    with open_ledger(run, config_hash=CONFIG) as led:  # same key directory: the attacker has it
        for e in forged:
            led.append(e)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "FAIL: row seq 2: rewritten: metrics.jsonl round 2 recorded ledger row 2" in out


def test_round_check_without_recorded_heads(tmp_path: Path, capsys) -> None:
    run = _run_dir(tmp_path, ddg_entries(ROUNDS))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"round": r}) + "\n" for r in range(1, 7)))
    (run / "state.json").unlink()
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    assert "FAIL: run: rolled back: metrics.jsonl is at round 6, the ledger's last round is 4" in \
        capsys.readouterr().out


def test_missing_metrics_is_a_finding(tmp_path: Path, capsys) -> None:
    run = _run_dir(tmp_path, ddg_entries(ROUNDS))
    (run / "metrics.jsonl").unlink()
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    assert "FAIL: run: missing run file" in capsys.readouterr().out


@pytest.mark.parametrize("key, value, field", [
    ("noise_multiplier", "2.0", "sigma_planned"),
    ("clip", "0.25", "clip"),
    ("delta", "1e-06", "delta"),
    ("fraction", "0.25", "sample_rate"),
    ("threat_model", '"release"', "threat_model"),
    ("max_colluding_sites", "1", "max_colluding"),
    ("mechanism", '"gaussian"', "mechanism"),
])
def test_recorded_parameters_that_disagree_with_the_config(tmp_path: Path, capsys, key: str,
                                                            value: str, field: str) -> None:
    config = "\n".join(f"{key} = {value}" if line.startswith(f"{key} =") else line
                       for line in CONFIG_TOML.splitlines())
    run = _run_dir(tmp_path, ddg_entries(ROUNDS), config=config)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert f"FAIL: row seq 1: disagrees with config: recorded {field}" in out, out


# -- gamma mode (secure_aggregation.colluding_fraction) ---------------------------------------------
GAMMA_TOML = CONFIG_TOML.replace("max_colluding_sites = 0", "colluding_fraction = 0.2") + """
[[sites]]
name = "s"
count = 5
"""


def _gamma_entries(rounds=ROUNDS, *, lowered: int | None = None, **kw) -> list[LedgerEntry]:
    """The runtime's gamma-mode rows: delta = privacy.delta + k 2^-40 on the k-th client row;
    `lowered` = that row's seq recorded at privacy.delta instead."""
    out = []
    kw.setdefault("m", 2)  # C = floor(0.2 x 5) = 1 colluder: 3 survivors hold >= 2 honest shares
    kw.setdefault("planned", 5)  # never more than the federation's N = 5
    for k, e in enumerate(ddg_entries(rounds, **kw), 1):
        d = DELTA if k == lowered else DELTA + k * 2.0 ** -40
        out.append(dataclasses.replace(e, delta=d, max_colluding=1))
    return out


def test_gamma_mode_ledger_passes(tmp_path: Path, capsys) -> None:
    run = _run_dir(tmp_path, _gamma_entries(), config=GAMMA_TOML)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 0, capsys.readouterr().out


def test_gamma_mode_row_delta_lowered_to_privacy_delta_is_flagged(tmp_path: Path, capsys) -> None:
    """A gamma-mode ledger whose row 2 states privacy.delta (dropping the graph's 2 x 2^-40),
    re-signed with the run's own key: the auditor flags the row's delta."""
    run = _run_dir(tmp_path, _gamma_entries(lowered=2), config=GAMMA_TOML)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "FAIL: row seq 2: disagrees with config: recorded delta" in out, out
    assert "2 x 2^-40" in out


def test_gamma_mode_row_delta_above_is_pinned_too(tmp_path: Path, capsys) -> None:
    entries = _gamma_entries()
    entries[2] = dataclasses.replace(entries[2], delta=DELTA + 10 * 2.0 ** -40)
    run = _run_dir(tmp_path, entries, config=GAMMA_TOML)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    assert "FAIL: row seq 3: disagrees with config: recorded delta" in capsys.readouterr().out


def _rows_of(tmp_path: Path, entries: list[LedgerEntry]) -> list[dict]:
    d = tmp_path / f"ledger-{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    _ledger_with(d, entries)
    return vl.load(d).rows


def test_gamma_mode_converts_at_privacy_delta(tmp_path: Path) -> None:
    """In gamma mode epsilon is recomputed at privacy.delta = row delta - k 2^-40 (what the
    runtime's epsilon is at), not at the larger row delta (which would give a smaller epsilon)."""
    gamma_rows = _rows_of(tmp_path, _gamma_entries())
    plain_rows = _rows_of(tmp_path, ddg_entries(ROUNDS, m=2))
    got, findings = vl.recheck_epsilon(gamma_rows, gamma=(0.2, 5))
    assert not findings, findings
    ref, _ = vl.recheck_epsilon(plain_rows)
    at_row_delta, _ = vl.recheck_epsilon(gamma_rows)
    for g, r, lax in zip(got, ref, at_row_delta):
        for k in ("server", "release"):
            assert g.recomputed[k] == pytest.approx(r.recomputed[k], rel=1e-12)
            assert lax.recomputed[k] < g.recomputed[k]


def test_gamma_mode_sum_check_counts_all_colluders(tmp_path: Path) -> None:
    """noise_shares m with survived - C < m (C = min(floor(gamma N), n), not c_max) is flagged."""
    rows = _rows_of(tmp_path, _gamma_entries([["a", "b", "c"]], m=2))  # max_colluding (c_max) = 1
    _, findings = vl.recheck_epsilon(rows, gamma=(0.4, 5))  # C = 2, survived 3: 1 honest
    assert any("cannot hold 2 honest shares" in f.detail for f in findings), findings
    _, findings = vl.recheck_epsilon(rows, gamma=(0.2, 5))  # C = 1: 2 honest
    assert not any("honest shares" in f.detail for f in findings), findings


def test_gamma_mode_c_max_is_recomputed_and_pinned(tmp_path: Path, capsys) -> None:
    """Complete graph (<= 16 sites, automatic degree): c_max = C = 1; a row recording 0 is flagged.
    The auditor's exact (rational) hypergeometric c_max agrees with the runtime's on SecAgg+."""
    from secure_fedrl.secagg.graph import colluders_per_holder_set as runtime_c_max

    entries = [dataclasses.replace(e, max_colluding=0) if e.round == 2 else e for e in _gamma_entries()]
    run = _run_dir(tmp_path, entries, config=GAMMA_TOML)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    assert "FAIL: row seq 2: disagrees with config: recorded max_colluding 0, the config says 'c_max 1" in \
        capsys.readouterr().out
    for n, k, c in [(40, 4, 8), (200, 30, 40), (2000, 152, 100), (61, 12, 6), (20, 4, 19), (30, 28, 5)]:
        assert vl.colluders_per_holder_set(n, k, c) == runtime_c_max(n, k, c, sigma=40.0)[0]
    # the automatic SecAgg+ degree above 16 sites is recomputed too (SPEC 2's table: n = 2000, 152)
    assert vl.expected_c_max(0.05, 2000, 2000, 0) == runtime_c_max(2000, 152, 100, sigma=40.0)[0]


@pytest.mark.parametrize("n, big_n, gamma, dropout", [
    (17, 17, 0.2, 0.0), (40, 40, 0.2, 0.0), (40, 100, 0.05, 0.1), (100, 100, 0.05, 0.0), (61, 200, 0.1, 0.2),
    (333, 333, 0.3, 0.0), (2000, 2000, 0.05, 0.0), (25, 60, 0.45, 0.0), (18, 18, 0.01, 0.3),
    (200, 200, 0.01, 0.0), (40, 40, 0.05, 0.0), (201, 201, 0.01, 0.0), (400, 400, 0.05, 0.2),
    (32, 32, 0.05, 0.0), (32, 32, 0.07, 0.0)])
def test_auditor_degree_search_agrees_with_the_runtime(n, big_n, gamma, dropout):
    """The auditor's own search of SPEC 2's automatic degree (no secure_fedrl import) gives the
    runtime's degree and c_max for a gamma-mode round of n planned sites of N."""
    from secure_fedrl.config import corrupt_sites
    from secure_fedrl.secagg.graph import colluders_per_holder_set as runtime_c_max
    from secure_fedrl.secagg.graph import effective_degree, secagg_plus_parameters

    corrupt = min(corrupt_sites(gamma, big_n), n)
    d = max(dropout, 0.05)
    k = secagg_plus_parameters(n, colluders=corrupt, dropout=d, sigma=40.0)[0]
    assert vl.auto_degrees(n, corrupt, d) == (effective_degree(n, k),)
    want = runtime_c_max(n, k, corrupt, sigma=40.0)[0]
    assert vl.accepted_c_max(gamma, big_n, n, 0, dropout) == {want: effective_degree(n, k)}


GAMMA2000_TOML = CONFIG_TOML.replace("max_colluding_sites = 0", "colluding_fraction = 0.05") + """
[[sites]]
name = "s"
count = 2000
"""


def _gamma2000_entries(c_max: int) -> list[LedgerEntry]:
    """Gamma-mode rows of 2000 planned sites of N = 2000 (automatic degree: SecAgg+), 102 of
    them surviving (C = 100 colluders leave the 2 honest shares m = 2 needs)."""
    names = [f"s-{i:04d}" for i in range(102)]
    out = []
    for k, e in enumerate(ddg_entries([names, names], m=2, planned=2000), 1):
        out.append(dataclasses.replace(e, delta=DELTA + k * 2.0 ** -40, max_colluding=c_max))
    return out


def test_a_forged_c_max_under_the_automatic_degree_is_flagged(tmp_path: Path, capsys) -> None:
    """N = 2000, gamma = 0.05 (C = 100), neighbors = 0: the runtime runs SecAgg+ at the automatic
    degree (152, SPEC 2's table) and records its c_max (< C: the hypergeometric bound). A ledger
    re-signed with another c_max (one fewer colluders per holder set than that degree allows,
    one more, or the complete graph's C) is flagged, naming the degree; the honest value passes."""
    from secure_fedrl.secagg.graph import colluders_per_holder_set as runtime_c_max
    from secure_fedrl.secagg.graph import effective_degree, secagg_plus_parameters

    k = secagg_plus_parameters(2000, colluders=100, dropout=0.05, sigma=40.0)[0]
    assert k == 152 == effective_degree(2000, k)
    honest = runtime_c_max(2000, k, 100, sigma=40.0)[0]
    assert 0 < honest < 100
    run = _run_dir(tmp_path / "ok", _gamma2000_entries(honest), config=GAMMA2000_TOML)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 0, capsys.readouterr().out
    for forged in (honest - 1, honest + 1, 100):
        d = tmp_path / f"forged-{forged}"
        run = _run_dir(d, _gamma2000_entries(forged), config=GAMMA2000_TOML)
        assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
        out = capsys.readouterr().out
        assert (f"FAIL: row seq 1: disagrees with config: recorded max_colluding {forged}, the config says "
                f"'c_max {honest} (gamma mode, degree 152 at n = 2000)'") in out, out


def test_a_row_planning_more_sites_than_the_federation_is_flagged(tmp_path: Path, capsys) -> None:
    run = _run_dir(tmp_path, _gamma_entries(planned=6), config=GAMMA_TOML)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "recorded sites_planned 6, the config says \"at most the federation's 5 sites\"" in out, out


@pytest.mark.parametrize("line", ['neighbors = "four"', "neighbors = -2", "dropout_rate = 1.5"])
def test_a_malformed_graph_setting_is_one_finding(tmp_path: Path, capsys, line: str) -> None:
    config = GAMMA_TOML.replace("colluding_fraction = 0.2", f"colluding_fraction = 0.2\n{line}")
    run = _run_dir(tmp_path, _gamma_entries(), config=config)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "bad run file: config.resolved.toml: secure_aggregation:" in out and "Traceback" not in out, out


def test_auditor_graph_helpers_match_the_runtime_and_scipy():
    """The auditor's own SPEC 2 pieces (mutation-testing gaps): the effective degree, the
    explicit-degree and complete-graph paths, and the exact binomial tail against scipy."""
    from scipy.stats import binom

    from secure_fedrl.secagg.graph import colluders_per_holder_set as runtime_c_max
    from secure_fedrl.secagg.graph import effective_degree, secagg_plus_parameters

    for n in (5, 6, 17, 40, 41):
        for k in (None, 1, 2, 3, 4, 5, n - 2, n - 1, n, n + 3):
            if k is not None and k >= 1:
                assert vl.effective_degree(n, k) == effective_degree(n, k), (n, k)
        assert vl.effective_degree(n, None) == n - 1
    # explicit neighbors (odd k on odd n rounds up), -1, and 0 up to 16 sites: the complete graph
    for n, neighbors in [(41, 5), (40, 5), (41, 6), (30, 29), (30, 40), (16, 0), (20, -1), (17, 3)]:
        C = vl.corrupt_sites(0.2, 60)  # 12 of N = 60
        corrupt = min(C, n)
        k = vl.effective_degree(n, neighbors if neighbors > 0 else None)
        want = runtime_c_max(n, k, corrupt, sigma=40.0)[0]
        assert vl.round_degrees(n, neighbors, corrupt, 0.0) == (k,)
        assert vl.accepted_c_max(0.2, 60, n, neighbors) == {want: k}, (n, neighbors)
        assert vl.expected_c_max(0.2, 60, n, neighbors) == want
    # -1 and 1 are not the automatic degree (which is sparse here: 28 at n = 40 with 2 colluders)
    assert vl.auto_degrees(40, 2, 0.05) == (28,)
    assert vl.round_degrees(40, -1, 2, 0.0) == (39,) and vl.round_degrees(40, 1, 2, 0.0) == (1,)
    assert vl.round_degrees(40, 0, 2, 0.0) == (28,)
    assert vl.accepted_c_max(0.05, 40, 40, -1) == {2: 39}
    assert vl.accepted_c_max(0.05, 2000, 2000, 0) == {runtime_c_max(2000, 152, 100, sigma=40.0)[0]: 152}
    assert vl.expected_c_max(0.05, 2000, 2000, 0, 0.2) == runtime_c_max(
        2000, secagg_plus_parameters(2000, colluders=100, dropout=0.2, sigma=40.0)[0], 100, sigma=40.0)[0] != \
        vl.expected_c_max(0.05, 2000, 2000, 0)
    assert vl.colluders_per_holder_set(2000, 152, 100, sigma=20) == runtime_c_max(2000, 152, 100, sigma=20.0)[0] \
        != vl.colluders_per_holder_set(2000, 152, 100)
    assert vl.colluders_per_holder_set(20, 4, 20) == runtime_c_max(20, 4, 20, sigma=40.0)[0] == 4  # all corrupt
    # exact integers where floats overflow (comb(1999, 600) > 1e308)
    tails, total = vl._holder_tails(2000, 600, 100)
    assert tails[29] == sum(math.comb(100, x) * math.comb(1899, 600 - x) for x in range(30, 101))
    assert total == math.comb(1999, 600) and isinstance(tails[29], int)
    assert vl.round_degrees(17, 0, 3, 0.0) == vl.auto_degrees(17, 3, 0.05)  # dropout floored at 0.05
    assert vl.round_degrees(400, 0, 20, 0.2) == vl.auto_degrees(400, 20, 0.2) != vl.auto_degrees(400, 20, 0.05)
    for t, trials, p in [(0, 5, 0.95), (3, 10, 0.95), (12, 40, 0.95), (60, 150, 0.8), (9, 10, 0.5), (1, 3, 0.3)]:
        assert vl._binom_cdf_log2(t, trials, p) == pytest.approx(math.log2(binom.cdf(t, trials, p)), rel=1e-9, abs=1e-12)
    assert vl._binom_cdf_log2(-1, 5, 0.5) == -math.inf
    assert vl._binom_cdf_log2(5, 5, 0.5) == 0.0 == vl._binom_cdf_log2(7, 5, 0.5)
    assert vl._binom_cdf_log2(2, 5, 0.0) == 0.0 and vl._binom_cdf_log2(2, 5, 1.0) == -math.inf
    assert vl._log2_ratio(0, 7) == -math.inf and vl._log2_ratio(1, 8) == -3.0
    # the exact tails: n P[X > c] for X ~ Hypergeometric(n-1, corrupt, k), against scipy
    from scipy.stats import hypergeom

    for n, k, corrupt in [(40, 4, 8), (30, 25, 20), (12, 10, 10)]:
        tails, total = vl._holder_tails(n, k, corrupt)
        assert len(tails) == k + 1 and total == math.comb(n - 1, k)
        for c in range(k + 1):
            assert tails[c] / total == pytest.approx(float(hypergeom.sf(c, n - 1, corrupt, k)), rel=1e-9, abs=1e-300)


def test_auditor_accepts_either_outcome_at_a_float_boundary(monkeypatch):
    """Within BOUNDARY_LOG2 of a threshold a float evaluation may decide either way: every such
    outcome is accepted (never a correct run flagged), the exact one always among them."""
    from secure_fedrl.secagg.graph import colluders_per_holder_set as runtime_c_max
    from secure_fedrl.secagg.graph import effective_degree, secagg_plus_parameters

    n, C = 400, 20
    k = effective_degree(n, secagg_plus_parameters(n, colluders=C, dropout=0.05, sigma=40.0)[0])
    exact = runtime_c_max(n, k, C, sigma=40.0)[0]
    vl.auto_degrees.cache_clear()
    assert vl.auto_degrees(n, C, 0.05) == (k,) and vl._degree_outcome(n, k, C, 0.05)[0] == "pass"
    assert vl._degree_outcome(n, k - 2, C, 0.05)[0] == "fail"
    assert [c for c, _ in vl._c_max_options(n, k, C)] == [exact]
    monkeypatch.setattr(vl, "BOUNDARY_LOG2", 3.0)  # a wide band: more outcomes are "either"
    vl.auto_degrees.cache_clear()
    try:
        degrees = vl.auto_degrees(n, C, 0.05)
        assert len(degrees) > 1 and degrees[-1] >= k and k in degrees
        assert degrees == tuple(sorted(set(degrees)))
        big = runtime_c_max(2000, 152, 100, sigma=40.0)[0]
        options = [c for c, _ in vl._c_max_options(2000, 152, 100)]
        assert len(options) > 1 and options[-1] == big and options == sorted(options)
        assert exact in vl.accepted_c_max(C / n, n, n, 0)
        assert vl._degree_outcome(n, degrees[0], C, 0.05)[0] == "either"
    finally:
        vl.auto_degrees.cache_clear()


def test_gamma_mode_a_deleted_delta_line_does_not_switch_the_pin_off(tmp_path: Path, capsys) -> None:
    """A server that drops `delta =` from config.resolved.toml and records every row at privacy.delta
    (the 2^-40 per round left out) is still caught: the pin uses the default, and the file is flagged."""
    config = "\n".join(line for line in GAMMA_TOML.splitlines() if not line.startswith("delta ="))
    assert config != GAMMA_TOML
    entries = [dataclasses.replace(e, delta=1e-5) for e in _gamma_entries()]
    run = _run_dir(tmp_path, entries, config=config)
    assert vl.main([str(run), "--public-key-file", _pin(run), "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "FAIL: row seq 1: disagrees with config: recorded delta" in out, out
    assert "config.resolved.toml: [privacy] has no delta" in out
