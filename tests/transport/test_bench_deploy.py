"""bench/deploy.py --quick runs end to end (both arms of part 1, part 2 with a killed site) and
prints its tables; a bad flag is a one-line error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "deploy.py"
# ~20 s on a loaded 2-core box (half of it imports); the timeout leaves room for a busier one.
pytestmark = pytest.mark.timeout(120)


def test_quick_mode_prints_the_tables():
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--seed", "3"], capture_output=True, text=True,
                          timeout=110, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for header in ("Part 1: the same federation in memory and over gRPC + mTLS", "round s (median)",
                   "SecAgg KiB/site up+down", "wire KiB/site up", "ratio gRPC / in-memory",
                   "Part 2: 8 sites over gRPC + mTLS", "failed rounds", "in sum / expected"):
        assert header in out, out
    part2 = out[out.index("Part 2"):]
    assert "exact sum" in part2 and "killed at random phases" in part2
    rows = [line.split() for line in part2.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert len(rows) == 2 and all(r[-2:] == ["exact", "sum"] for r in rows), part2  # round 1 clean, round 2 with a kill
    assert rows[1][1] == "1"


def test_bad_flag_is_a_one_line_error():
    proc = subprocess.run([sys.executable, str(BENCH), "--sites", "1"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert proc.returncode == 2 and "--sites: must be at least 3" in proc.stderr and "Traceback" not in proc.stderr
