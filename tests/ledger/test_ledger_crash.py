"""A process SIGKILLed at random points never loses a row whose append had returned."""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secure_fedrl.ledger import LEDGER_FILE, PrivacyLedger

CHILD = Path(__file__).with_name("crash_child.py")
AUDIT = Path(__file__).parents[2] / "audit" / "verify_ledger.py"


def _independent_verify(target: Path) -> None:
    spec = importlib.util.spec_from_file_location("verify_ledger_crash", AUDIT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    mod.verify(mod.load(target))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_points_loses_no_returned_append(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    acknowledged: set[int] = set()
    for _ in range(6):
        child = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), "cfg-crash"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert child.stdout is not None
        header = child.stdout.readline()
        assert header.startswith("open "), child.stderr.read() if child.stderr else header
        # The chain the previous kill left behind verified, and kept every acknowledged row.
        assert int(header.split()[1]) >= max(acknowledged, default=0)
        target = rng.randint(1, 30)
        seen = 0
        while seen < target:
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "child exited"
            acknowledged.add(int(line))
            seen += 1
        time.sleep(rng.uniform(0.0, 0.004))  # land the kill anywhere, mid-transaction included
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        acknowledged.update(int(x) for x in rest.split())
        assert child.returncode == -signal.SIGKILL
    with PrivacyLedger.open(tmp_path / LEDGER_FILE, config_hash="cfg-crash", create=False) as led:
        seqs = [r.seq for r in led.rows()]
        eps = [r.epsilon["rdp"] for r in led.rows()]
    assert acknowledged <= set(seqs), f"lost rows {sorted(acknowledged - set(seqs))}"
    assert seqs == list(range(1, len(seqs) + 1))
    assert eps == sorted(eps)  # cumulative spend never went backwards across restarts
    assert len(seqs) >= len(acknowledged)
    _independent_verify(tmp_path)  # the auditor reads the crashed ledger (with its -wal) read-only
