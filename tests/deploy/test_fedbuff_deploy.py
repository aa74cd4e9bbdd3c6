"""FedBuff deployed: `serve` + `join` as real processes, sites training at their own pace.

Each site fetches the current model, trains, reports ready; the server opens a secure-
aggregation round with the first K ready sites and the broadcast names the model version, so
each site weights its own update by its staleness. A site killed while it trains ahead is
replaced by a restarted process that trains again; the federation still ends with exit 0.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from secure_fedrl.cli import main

from test_serve_join import cli, wait_ready

pytestmark = pytest.mark.timeout(420)

FED = textwrap.dedent("""
    [federation]
    name = "fedbuff-deploy-test"
    rounds = 4
    seed = 5

    [local]
    algorithm = "ppo"
    steps = 128

    [local.ppo]
    num_steps = 32
    update_epochs = 1
    num_minibatches = 2

    [strategy]
    name = "fedbuff"
    weighting = "uniform"
    params = { buffer_size = 2 }

    [secure_aggregation]
    enabled = true

    [evaluation]
    every = 100
    episodes = 1

    [[sites]]
    name = "desk"
    env = "CartPole-v1"
    num_envs = 2
    seed = 3
    count = 4
""")
SITES = [f"desk-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fedbuff") / "pki"
    assert main(["pki", "init", str(d)]) == 0
    assert main(["pki", "issue", str(d), "--server", "--host", "127.0.0.1"]) == 0
    for name in SITES:
        assert main(["pki", "issue", str(d), "--site", name]) == 0
    return d


def test_served_fedbuff_aggregates_each_k_arrivals_with_staleness(tmp_path: Path, pki: Path) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(FED)
    out, ready = tmp_path / "run", tmp_path / "ready.json"
    server = cli("serve", str(config), "--out", str(out), "--pki", str(pki), "--address", "127.0.0.1:0",
                 "--ready-file", str(ready), "--wait", "60", "--ledger-key", str(tmp_path / "keys"),
                 stderr=open(tmp_path / "serve.log", "wb"))
    port = wait_ready(ready, server)
    common = ["--server", f"127.0.0.1:{port}", "--pki", str(pki)]
    # Three sites in one process; the fourth alone, killed once while it trains ahead, then restarted.
    group = cli("join", str(config), *sum((["--site", n] for n in SITES[:3]), []), *common,
                "--state", str(tmp_path / "state"), stderr=open(tmp_path / "join.log", "wb"))
    lone_log = tmp_path / "lone.log"
    lone = cli("join", str(config), "--site", SITES[3], *common, "--state", str(tmp_path / "lone"),
               stderr=open(lone_log, "wb"))
    procs = [server, group, lone]
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and b"site_ready" not in lone_log.read_bytes():
            time.sleep(0.05)
        lone.send_signal(signal.SIGKILL)  # killed holding an update it reported ready with
        lone.wait()
        lone = cli("join", str(config), "--site", SITES[3], *common, "--state", str(tmp_path / "lone"),
                   "--give-up-after", "60", stderr=open(tmp_path / "lone2.log", "wb"))
        procs.append(lone)
        assert server.wait(timeout=300) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert group.wait(timeout=180) == 0, (tmp_path / "join.log").read_text()[-3000:]
        code = lone.wait(timeout=180)
        log2 = (tmp_path / "lone2.log").read_bytes()
        if code != 0:
            # Race (seen once in a clean-clone CI run): the other sites finished every round while
            # the restarted site still waited for its killed session to lapse (ALREADY_EXISTS); the
            # server then exited, and the site gives up after its --give-up-after window with one
            # line. Only that case is excused; a site that rejoined must exit 0.
            assert b"site_joined_server" not in log2 and b"(--give-up-after)" in log2, log2.decode()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["sites_sampled"] <= 2 for r in rows)
    assert [r["model_version"] for r in rows] == [sum(r2["sites_aggregated"] > 0 for r2 in rows[:i + 1])
                                                 for i in range(4)]
    assert sum(r["sites_aggregated"] for r in rows) >= 6  # rounds completed with the arrivals' sum
    assert all(r["staleness"]["max"] is not None and r["staleness"]["max"] >= 0 for r in rows if r["sites_sampled"])
    assert any(r["staleness"]["max"] >= 1 for r in rows)  # sites trained on older models while others aggregated
    # What a site did stays at the site: its own metrics file, rounds it took part in.
    took = [json.loads(x) for n in SITES[:3] for x in (tmp_path / "state" / n / "metrics.jsonl").read_text().splitlines()]
    assert any(t["round_status"] == "done" for t in took)
    # Every site kept the final model: the one the server published last, its last checkpoint's.
    from secure_fedrl.runtime.personalise import load_global_params

    last = sorted((out / "checkpoints").glob("round-*.pt"))[-1]
    final = load_global_params(last)[0]
    for n in SITES[:3]:
        kept, _ = load_global_params(tmp_path / "state" / n / "final_policy.pt")
        assert kept.tobytes() == final.tobytes()
