"""A process SIGKILLed at random points never loses a row whose append had returned."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger_helpers import key_dir_for, open_ledger
from secure_fedrl.ledger import LEDGER_FILE

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
        child = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), "cfg-crash",
                                  str(key_dir_for(tmp_path))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert child.stdout is not None
        header = child.stdout.readline()
        assert header.startswith("open "), child.stderr.read() if child.stderr else header
        # A SIGKILL keeps what reached the OS, so the kill alone cannot tell synchronous=OFF
        # from FULL (a power cut can): the child reports its connection's setting.
        assert header.split()[2:4] in (["sync", "2"], ["sync", "3"]), header
        # The chain the previous kill left behind verified, and kept every acknowledged row.
        assert int(header.split()[1]) >= max(acknowledged, default=0)
        target = rng.randint(1, 30)
        seen = 0
        while seen < target:
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "child exited"
            assert line.strip() != "SYNC-LOWERED", "synchronous lowered after an append"
            acknowledged.add(int(line))
            seen += 1
        time.sleep(rng.uniform(0.0, 0.004))  # land the kill anywhere, mid-transaction included
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        assert "SYNC-LOWERED" not in rest
        acknowledged.update(int(x) for x in rest.split())
        assert child.returncode == -signal.SIGKILL
    with open_ledger(tmp_path / LEDGER_FILE, config_hash="cfg-crash", create=False) as led:
        seqs = [r.seq for r in led.rows()]
        eps = [r.epsilon["rdp"] for r in led.rows()]
    assert acknowledged <= set(seqs), f"lost rows {sorted(acknowledged - set(seqs))}"
    assert seqs == list(range(1, len(seqs) + 1))
    assert eps == sorted(eps)  # cumulative spend never went backwards across restarts
    assert len(seqs) >= len(acknowledged)
    _independent_verify(tmp_path)  # the auditor reads the crashed ledger (with its -wal) read-only


def _syscalls_of_appends(tmp_path: Path, appends: int) -> tuple[int, list[str]]:
    """strace the child: (number of appends acknowledged, the fsync-family calls it made)."""
    log = tmp_path / "strace.log"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,sync_file_range",
                          "-o", str(log), sys.executable, str(CHILD), str(tmp_path / "led"),
                          "cfg-fsync", str(tmp_path / "led.keys"), str(appends)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    acked = [line for line in out.stdout.splitlines()[1:] if line.strip().isdigit()]
    return len(acked), [line for line in log.read_text().splitlines() if "sync" in line]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count fsync calls")
def test_every_append_is_fsynced(tmp_path: Path) -> None:
    """Durability measured at the system-call level: each acknowledged append costs fsyncs.

    With synchronous=OFF SQLite makes no fsync at all; with NORMAL in WAL mode none per commit
    (only at checkpoints), so both fail here, unlike the SIGKILL test above.
    """
    (tmp_path / "led").mkdir()
    _syscalls_of_appends(tmp_path, 0)  # creates the key and the ledger
    _, baseline = _syscalls_of_appends(tmp_path, 0)  # what opening an existing ledger costs
    acked, calls = _syscalls_of_appends(tmp_path, 20)
    assert acked == 20
    assert len(calls) - len(baseline) >= 20, calls
