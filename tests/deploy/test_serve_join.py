"""`secure-fedrl serve` + `secure-fedrl join` as real processes over gRPC with mutual TLS.

The same federation as `simulate`: without privacy noise every random choice derives from the
seed and the secure-aggregation sum is exact, so the served run must reach the very policy the
simulated one reaches, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from secure_fedrl.cli import main

FED = textwrap.dedent("""
    [federation]
    name = "deploy-test"
    rounds = 2
    seed = 11

    [local]
    algorithm = "ppo"
    steps = 128

    [local.ppo]
    num_steps = 32
    update_epochs = 1
    num_minibatches = 2

    [strategy]
    name = "fedavg"
    weighting = "uniform"

    [secure_aggregation]
    enabled = true

    [evaluation]
    every = 100
    episodes = 1

    [[sites]]
    name = "clinic"
    env = "CartPole-v1"
    num_envs = 2
    seed = 3
    count = 4
    randomize = { length = [0.4, 0.8] }
""")
SITES = [f"clinic-{i}" for i in range(4)]


def cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "secure_fedrl.cli", *args], env=env, **kw)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("deploy") / "pki"
    assert main(["pki", "init", str(d)]) == 0
    assert main(["pki", "issue", str(d), "--server", "--host", "127.0.0.1"]) == 0
    for name in SITES:
        assert main(["pki", "issue", str(d), "--site", name]) == 0
    return d


def wait_ready(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return json.loads(path.read_text())["port"]
        assert proc.poll() is None, "serve exited before listening"
        time.sleep(0.1)
    raise AssertionError("serve did not start listening")


def served_run(tmp_path: Path, pki: Path, config: Path, *, kill_server_after_round: int | None = None):
    out, ready = tmp_path / "run", tmp_path / "ready.json"
    keys = tmp_path / "ledger-key"
    serve_args = ["serve", str(config), "--out", str(out), "--pki", str(pki), "--address", "127.0.0.1:0",
                  "--ready-file", str(ready), "--wait", "60", "--ledger-key", str(keys)]
    server = cli(*serve_args, stderr=open(tmp_path / "serve.log", "wb"))
    port = wait_ready(ready, server)
    join = cli("join", str(config), *sum((["--site", n] for n in SITES), []), "--server", f"127.0.0.1:{port}",
               "--pki", str(pki), "--state", str(tmp_path / "state"), stderr=open(tmp_path / "join.log", "wb"))
    try:
        if kill_server_after_round is not None:
            metrics = out / "metrics.jsonl"
            end = time.monotonic() + 120
            while time.monotonic() < end and (not metrics.exists() or
                                               len(metrics.read_text().splitlines()) < kill_server_after_round):
                time.sleep(0.05)
            server.send_signal(signal.SIGKILL)
            server.wait()
            ready.unlink()
            server = cli(*serve_args, stderr=open(tmp_path / "serve2.log", "wb"))
            wait_ready(ready, server)  # same port is not guaranteed: the sites are told below
            port2 = json.loads(ready.read_text())["port"]
            assert port2, "restarted server"
        assert server.wait(timeout=240) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        if kill_server_after_round is None:
            assert join.wait(timeout=60) == 0, (tmp_path / "join.log").read_text()[-3000:]
    finally:
        for p in (server, join):
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_serve_join_reaches_the_simulated_policy_bit_for_bit(tmp_path: Path, pki: Path) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(FED)
    out = served_run(tmp_path, pki, config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["sites_aggregated"] == 4 for r in rows)
    assert all(r["bytes_per_site"] > 0 for r in rows)
    # The site keeps its own diagnostics; the server's file has none of them.
    assert "train_return_mean" not in json.dumps(rows)
    site_rows = (tmp_path / "state" / "clinic-0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round_status"] for x in site_rows] == ["done", "done"]

    sim = tmp_path / "sim"
    assert main(["simulate", str(config), "--out", str(sim), "--no-progress",
                 "--ledger-key", str(tmp_path / "k2")]) == 0
    served = torch.load(out / "checkpoints" / "round-00002.pt", weights_only=False)["global_params"]
    simulated = torch.load(sim / "checkpoints" / "round-00002.pt", weights_only=False)["global_params"]
    assert torch.equal(served, simulated)
    # Every site keeps the final global model, in the checkpoint's format, to personalise from.
    from secure_fedrl.runtime.personalise import load_global_params

    for name in SITES:
        kept = tmp_path / "state" / name / "final_policy.pt"
        assert oct(kept.stat().st_mode & 0o777) == "0o600"
        params, round_id = load_global_params(kept)
        assert round_id == 2 and torch.equal(torch.from_numpy(params), served.float())
    assert main(["personalise", str(config), "--site", "clinic-1", "--model", str(tmp_path / "state" / "clinic-1" /
                 "final_policy.pt"), "--rounds", "1", "--eval-episodes", "1", "--out", str(tmp_path / "personal")]) == 0


def test_serve_refuses_a_plaintext_federation(tmp_path: Path, pki: Path, capsys) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(FED.replace("enabled = true", "enabled = false"))
    code = main(["serve", str(config), "--out", str(tmp_path / "run"), "--pki", str(pki), "--address", "127.0.0.1:0"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "secure_aggregation.enabled" in err[0]


def test_join_refuses_a_site_not_in_the_config(tmp_path: Path, pki: Path, capsys) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(FED)
    code = main(["join", str(config), "--site", "nobody", "--server", "127.0.0.1:1", "--pki", str(pki)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nobody" in err[0]


def test_join_gives_up_on_a_server_that_is_not_there(tmp_path: Path, pki: Path, capsys) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(FED)
    t0 = time.monotonic()
    code = main(["join", str(config), "--site", SITES[0], "--server", f"127.0.0.1:{free_port()}", "--pki", str(pki),
                 "--state", str(tmp_path / "state"), "--give-up-after", "2"])
    assert code == 2 and time.monotonic() - t0 < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("secure-fedrl: error: ") and "could not join the server" in err[-1]
    assert "within 2 s (--give-up-after)" in err[-1]


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_join_refuses_a_give_up_window_that_is_not_positive(tmp_path: Path, pki: Path, capsys, value) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(FED)
    code = main(["join", str(config), "--site", SITES[0], "--server", "127.0.0.1:1", "--pki", str(pki),
                 "--give-up-after", value])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--give-up-after" in err[0]


PRIVATE = (FED.replace("rounds = 2", "rounds = 3") + textwrap.dedent("""
    [privacy]
    unit = "client"
    clip = 0.5
    noise_multiplier = 1.0
    target_epsilon = 50.0

    [sampling]
    fraction = 1.0
""")).replace("[secure_aggregation]\nenabled = true", "[secure_aggregation]\nenabled = true\nthreshold = 3")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_sigkilled_mid_run_resumes_and_the_witnessed_ledger_audits(tmp_path: Path, pki: Path) -> None:
    config = tmp_path / "fed.toml"
    assert "threshold = 3" in PRIVATE
    config.write_text(PRIVATE)
    out, ready, keys = tmp_path / "run", tmp_path / "ready.json", tmp_path / "ledger-key"
    address = f"127.0.0.1:{free_port()}"
    serve_args = ["serve", str(config), "--out", str(out), "--pki", str(pki), "--address", address,
                  "--ready-file", str(ready), "--wait", "60", "--ledger-key", str(keys)]
    server = cli(*serve_args, stderr=open(tmp_path / "serve.log", "wb"))
    wait_ready(ready, server)
    join = cli("join", str(config), *sum((["--site", n] for n in SITES), []), "--server", address,
               "--pki", str(pki), "--state", str(tmp_path / "state"), stderr=open(tmp_path / "join.log", "wb"))
    try:
        metrics = out / "metrics.jsonl"
        end = time.monotonic() + 180
        while time.monotonic() < end and (not metrics.exists() or len(metrics.read_text().splitlines()) < 1):
            time.sleep(0.05)
        time.sleep(0.5)  # into round 2
        server.send_signal(signal.SIGKILL)
        server.wait()
        eps_before = json.loads(metrics.read_text().splitlines()[-1])["epsilon"]
        ready.unlink()
        server = cli(*serve_args, stderr=open(tmp_path / "serve2.log", "wb"))
        assert server.wait(timeout=300) == 0, (tmp_path / "serve2.log").read_text()[-3000:]
        assert join.wait(timeout=60) == 0, (tmp_path / "join.log").read_text()[-3000:]
    finally:
        for p in (server, join):
            if p.poll() is None:
                p.kill()
                p.wait()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[-1]["epsilon"] >= eps_before
    assert any(r.get("witness_expected") for r in rows)

    # The auditor pins the sites' keys from the CA, not the server's witness_keys.json.
    pinned = tmp_path / "site-keys.json"
    keys_out = subprocess.run([sys.executable, "-m", "secure_fedrl.cli", "pki", "keys", str(pki)],
                              capture_output=True, text=True, check=True).stdout
    assert sorted(json.loads(keys_out)) == SITES
    pinned.write_text(keys_out)
    audit = [sys.executable, "audit/verify_ledger.py", str(out), "--public-key-file", str(keys / "ledger_public_key.hex"),
             "--witness-keys", str(pinned), "--require-witnesses", "1"]
    root = Path(__file__).resolve().parents[2]
    ok = subprocess.run(audit, cwd=root, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # A witness signature removed from the ledger is caught by the audit.
    import sqlite3

    db = sqlite3.connect(out / "privacy_ledger.sqlite")
    for (name,) in db.execute("select name from sqlite_master where type='trigger'").fetchall():
        db.execute(f"drop trigger {name}")
    db.execute("delete from witnesses where rowid = (select min(rowid) from witnesses)")
    db.commit()
    db.close()
    bad = subprocess.run(audit, cwd=root, capture_output=True, text=True)
    assert bad.returncode == 2 and "witness" in bad.stdout, bad.stdout


def read_site_state(path: Path) -> dict:
    """The site's state (after its magic line and 32-byte authentication tag)."""
    import pickle

    from secure_fedrl.runtime.deploy import STATE_MAGIC

    return pickle.loads(path.read_bytes()[len(STATE_MAGIC) + 32:])


def test_a_sigkilled_site_restarts_with_its_state_and_takes_part_again(tmp_path: Path, pki: Path) -> None:

    config = tmp_path / "fed.toml"
    config.write_text(PRIVATE.replace("rounds = 3", "rounds = 8"))
    out, ready = tmp_path / "run", tmp_path / "ready.json"
    server = cli("serve", str(config), "--out", str(out), "--pki", str(pki), "--address", "127.0.0.1:0",
                 "--ready-file", str(ready), "--wait", "60", "--liveness", "3", "--ledger-key", str(tmp_path / "k"),
                 stderr=open(tmp_path / "serve.log", "wb"))
    address = f"127.0.0.1:{wait_ready(ready, server)}"

    def join(name: str, log: str) -> subprocess.Popen:
        return cli("join", str(config), "--site", name, "--server", address, "--pki", str(pki),
                   "--state", str(tmp_path / "state" / name), stderr=open(tmp_path / log, "wb"))

    procs = {n: join(n, f"{n}.log") for n in SITES}
    victim_state = tmp_path / "state" / "clinic-0"
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and not (victim_state / "metrics.jsonl").exists():
            time.sleep(0.05)
        procs["clinic-0"].send_signal(signal.SIGKILL)
        procs["clinic-0"].wait()
        before = read_site_state(victim_state / "site_state.pkl")
        rows_before = len((victim_state / "metrics.jsonl").read_text().splitlines())
        procs["clinic-0"] = join("clinic-0", "clinic-0.restart.log")
        assert server.wait(timeout=300) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        for n, p in procs.items():
            assert p.wait(timeout=60) == 0, n
    finally:
        for p in [server, *procs.values()]:
            if p.poll() is None:
                p.kill()
                p.wait()
    after = read_site_state(victim_state / "site_state.pkl")
    rows = [json.loads(x) for x in (victim_state / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) > rows_before, "the restarted site took part again"
    # Its own budget was restored, not reset: participations only grow.
    assert after["guard"]["participations"] > before["guard"]["participations"] >= 1
    assert set(before["history"]) <= set(after["history"])
    server_rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in server_rows] == list(range(1, 9))
    assert all(r["sites_aggregated"] >= 3 for r in server_rows if r["sites_aggregated"])


@pytest.mark.parametrize("args", [["serve", "--address", "bogus"], ["serve", "--address", "nohost.invalid:5"],
                                  ["join", "--server", "no-port"]])
def test_bad_addresses_are_one_line_errors(tmp_path: Path, pki: Path, capsys, args) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(FED)
    if args[0] == "serve":
        argv = ["serve", str(config), "--out", str(tmp_path / "run"), "--pki", str(pki), *args[1:]]
    else:
        argv = ["join", str(config), "--site", SITES[0], "--pki", str(pki), *args[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("secure-fedrl: error:"), err
    assert not (tmp_path / "run").exists()  # nothing written before the address is usable
