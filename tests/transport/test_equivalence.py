"""The same SecAgg round over the in-memory transport and over gRPC + mTLS between real processes
(a server process; four sites in two processes, one channel each) carries the same messages,
byte for byte, and the server recovers the same exact sum of the survivors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _fed import SITES, announcements, expected_sum, server_main, site_main

from secure_fedrl.transport.base import Hub, InMemorySite

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent
#: s3 dies just before its masked input: a dropout the server must unmask around.
DROPS = {"s3": "masked_input"}


def _in_memory(pki_dir):
    trace: list = []
    hub = Hub(trace=trace)
    anns, ids = announcements(pki_dir, SITES)
    threads = [threading.Thread(target=site_main, args=(InMemorySite(hub, n, ids[n].number), ids[n]),
                                kwargs={"stop_before": DROPS.get(n)}) for n in SITES]
    for t in threads:
        t.start()
    res = server_main(hub, anns, expect=len(SITES))
    for t in threads:
        t.join()
    return trace, res


def _over_grpc(pki_dir, tmp_path):
    port_file, result = str(tmp_path / "port"), tmp_path / "result.json"
    py = [sys.executable, str(HERE / "_fed.py")]
    spec = [f"{n}:{DROPS[n]}" if n in DROPS else n for n in SITES]
    procs = [subprocess.Popen(py + ["server", str(pki_dir), port_file, str(result), *SITES],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen(py + ["sites", str(pki_dir), port_file, *spec[:2]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen(py + ["sites", str(pki_dir), port_file, *spec[2:]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    statuses = {**json.loads(outs[1]), **json.loads(outs[2])}
    return json.loads(result.read_text()), statuses


def test_in_memory_and_grpc_carry_the_same_round(pki, tmp_path):
    mem_trace, mem = _in_memory(pki.dir)
    net, statuses = _over_grpc(pki.dir, tmp_path)
    survivors = [1, 2, 4]
    assert mem.outcome.accepted == tuple(survivors) and net["accepted"] == survivors
    np.testing.assert_array_equal(mem.outcome.sum, expected_sum(survivors))
    np.testing.assert_array_equal(np.array(net["sum"], dtype=np.uint32), expected_sum(survivors))
    assert statuses["s1"] == statuses["s2"] == statuses["s4"] == "done" and statuses["s3"].startswith("dropped")
    # Same messages, byte for byte (arrival order within a phase may differ).
    net_trace = sorted(tuple(x) for x in net["trace"])
    assert sorted(mem_trace) == net_trace
    phases = {(p, d) for _, p, d, _, _ in net_trace}
    assert len(phases) == 9 and ("masked_input", "up") in phases  # every phase, both ways (none after unmasking)
    assert not any(s == "s3" and p in ("masked_input", "consistency_check", "unmasking") and d == "up"
                   for _, p, d, s, _ in net_trace)


def test_ten_sites_three_sigkilled_at_random_phases(tmp_path):
    """Real process deaths mid-round over gRPC: the survivors' exact sum, no stalled phase."""
    import os
    import random
    import time

    from secure_fedrl.runtime.aggregation import SIMULATED_DROPOUT_PHASES as PHASES
    from secure_fedrl.transport.pki import CertificateAuthority

    ca = CertificateAuthority.init(tmp_path / "pki")
    names = [f"site{i:02d}" for i in range(1, 11)]
    for n in names:
        ca.issue_site(n)
    ca.issue_server()
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    killed = dict(zip(rng.sample(names, 3), (rng.choice(PHASES) for _ in range(3))))
    port_file, result = str(tmp_path / "port"), tmp_path / "result.json"
    py = [sys.executable, str(HERE / "_fed.py")]
    env = {**os.environ, "FED_DEADLINE": "4"}
    t0 = time.monotonic()
    server = subprocess.Popen(py + ["server", str(ca.dir), port_file, str(result), *names], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    alive = [n for n in names if n not in killed]
    procs = [subprocess.Popen(py + ["sites", str(ca.dir), port_file, *alive], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    victims = [subprocess.Popen(py + ["sites", str(ca.dir), port_file, f"{n}:{ph}"],
                                env={**env, "FED_SIGKILL": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for n, ph in killed.items()]
    try:
        for v in victims:
            v.communicate(timeout=90)
            assert v.returncode == -9, f"seed {seed}: a victim was not killed"
        out, err = procs[0].communicate(timeout=90)
        assert procs[0].returncode == 0, err[-3000:]
        _, err = server.communicate(timeout=90)
        assert server.returncode == 0, err[-3000:]
    finally:
        for p in [server, *procs, *victims]:
            if p.poll() is None:
                p.kill()
    res = json.loads(result.read_text())
    number = {n: i for i, n in enumerate(names, start=1)}
    # A site killed after its masked input was accepted is in the sum (its self-mask is recovered).
    inside = [number[n] for n in names
              if n not in killed or PHASES.index(killed[n]) > PHASES.index("masked_input")]
    assert res["aborted"] is None, f"seed {seed}, killed {killed}: {res['aborted']}"
    assert res["accepted"] == inside, f"seed {seed}, killed {killed}"
    np.testing.assert_array_equal(np.array(res["sum"], dtype=np.uint32), expected_sum(inside))
    assert set(json.loads(out).values()) == {"done"}
    assert time.monotonic() - t0 < 60  # three phases' deadlines at most, never a stall
