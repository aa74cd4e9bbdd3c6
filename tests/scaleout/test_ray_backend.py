"""`simulate --backend ray`: the same run as `--backend local`, bit for bit; resume after a SIGKILL.

One local Ray (2 CPUs) for the whole module; skipped without Ray (`pip install -e '.[ray]'`).
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

ray = pytest.importorskip("ray")
if not hasattr(ray, "init"):  # pragma: no cover - a stray directory named ray, not the package
    pytest.skip("ray is not installed", allow_module_level=True)

from secure_fedrl.config import load_config  # noqa: E402
from secure_fedrl.runtime.ray_backend import RaySimulation, run_ray_simulation, start_ray  # noqa: E402
from secure_fedrl.runtime.simulate import run_simulation  # noqa: E402

pytestmark = pytest.mark.timeout(600)

BASE = textwrap.dedent("""
    [federation]
    name = "ray-{name}"
    rounds = {rounds}
    seed = 7

    [local]
    algorithm = "ppo"
    steps = 128
    hidden_sizes = [16]
    federate_critic = false

    [local.ppo]
    num_steps = 32
    update_epochs = 2
    num_minibatches = 2

    [strategy]
    name = "fedavg"
    weighting = "uniform"

    [sampling]
    clients_per_round = 3

    [evaluation]
    every = 2
    episodes = 2
    max_sites = 3

    [[sites]]
    name = "short"
    env = "CartPole-v1"
    num_envs = 2
    seed = 1
    overrides = {{ length = 0.3, gravity = 8.0 }}

    [[sites]]
    name = "long"
    env = "CartPole-v1"
    num_envs = 2
    seed = 2
    count = 3
    randomize = {{ length = [0.5, 1.0], force_mag = [8.0, 12.0] }}
""")

# shared_mask keeps a residual per site: only an upload the aggregate included may commit it (settle)
SECAGG = "\n[secure_aggregation]\nenabled = true\nthreshold = 2\n\n[compression]\nmethod = \"shared_mask\"\nratio = 0.5\n"


def write(tmp_path: Path, name: str, *, rounds: int = 3, secagg: bool = True) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE.format(name=name, rounds=rounds) + (SECAGG if secagg else ""))
    return path


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "timing"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_params(run: Path, r: int) -> torch.Tensor:
    return torch.load(run / "checkpoints" / f"round-{r:05d}.pt", weights_only=False)["global_params"]


def site_rows(run: Path) -> dict[str, list[dict]]:
    out = {}
    for f in sorted((run / "sites").glob("*/metrics.jsonl")):
        out[f.parent.name] = [{k: v for k, v in json.loads(line).items() if k not in ("train_s", "env_steps_per_s")}
                              for line in f.read_text().splitlines()]
    return out


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    start_ray(ray, num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_secure_aggregation_run_equals_local(tmp_path):
    cfg = load_config(write(tmp_path, "secagg", rounds=2))
    run_simulation(cfg, tmp_path / "local", progress=False)
    sim = RaySimulation(cfg, tmp_path / "ray", progress=False)
    try:
        assert len(sim._hosts) == 2  # 4 sites placed on 2 actors (2 CPUs, 1 CPU each)
        sim.run()
        assert ray.get(sim._hub_actor.held_uploads.remote()) == 0  # every masked upload was taken and dropped
    finally:
        sim.close()
    assert torch.equal(final_params(tmp_path / "local", 2), final_params(tmp_path / "ray", 2))
    assert rows(tmp_path / "local") == rows(tmp_path / "ray")
    assert site_rows(tmp_path / "local") == site_rows(tmp_path / "ray")
    assert rows(tmp_path / "ray")[-1]["sites_aggregated"] == 3


def test_plaintext_run_stopped_and_resumed_equals_local(tmp_path):
    path = write(tmp_path, "plain", rounds=3, secagg=False)
    run_simulation(load_config(path), tmp_path / "local", progress=False)
    run_ray_simulation(load_config(path, overrides={"federation.rounds": 1}), tmp_path / "ray", progress=False,
                       cpus_per_site=0.5)
    run_ray_simulation(load_config(path), tmp_path / "ray", resume=True, progress=False)
    assert torch.equal(final_params(tmp_path / "local", 3), final_params(tmp_path / "ray", 3))
    # the stopped run also evaluated at its last round; rounds 2 and 3 are the uninterrupted run's
    assert rows(tmp_path / "local")[1:] == rows(tmp_path / "ray")[1:]


def test_driver_sigkilled_mid_run_resumes_to_the_local_result(tmp_path):
    path = write(tmp_path, "killed", rounds=4)
    run = tmp_path / "ray"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "secure_fedrl.cli", "simulate", str(path), "--out", str(run),
                             "--no-progress", "--backend", "ray"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end and proc.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the driver finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; its Ray goes with the process group below
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the local Ray the killed driver started (its own session)
        except ProcessLookupError:
            pass
    done = len(rows(run))
    assert 1 <= done < 4
    run_simulation(load_config(path), tmp_path / "local", progress=False)
    run_ray_simulation(load_config(path), run, resume=True, progress=False)
    assert torch.equal(final_params(tmp_path / "local", 4), final_params(run, 4))
    assert [r["round"] for r in rows(run)] == [1, 2, 3, 4]


@pytest.mark.timeout(180)
def test_a_site_host_that_dies_drops_its_sites_and_the_run_goes_on(tmp_path):
    cfg = load_config(write(tmp_path, "hostdies", rounds=3))
    sim = RaySimulation(cfg, tmp_path / "ray", progress=False)
    try:
        sim.run_round(1)
        dead = {n for n, h in sim._host_of.items() if h == 0}
        ray.kill(sim._hosts[0])  # its process is gone: no site on it can say it leaves
        t0 = time.monotonic()
        for r in (2, 3):
            sim.run_round(r)
        assert time.monotonic() - t0 < 120  # not the in-memory deadlines (a day for the first phase)
    finally:
        sim.privacy.close()
        sim.close()
    later = rows(tmp_path / "ray")[1:]
    assert any(dead & set(row["sites_dropped"]) for row in later)  # 3 of 4 sampled: a dead one each round


def _gamma_config(rounds: int):
    from secure_fedrl.config import config_from_dict

    return config_from_dict({
        "federation": {"rounds": rounds, "seed": 3, "name": "ray-gamma"},
        "local": {"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 32, "update_epochs": 1}},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "evaluation": {"every": 100, "episodes": 1},
        "secure_aggregation": {"enabled": True, "colluding_fraction": 0.25, "neighbors": 4},
        "privacy": {"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 50.0, "delta": 1e-5},
        "sampling": {"fraction": 1.0},
        "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": 8}],
    })


def _host_counts(sim) -> dict[str, int]:
    out = {}
    for h, names in sim._by_host(sim.site_names).items():
        for n, st in ray.get(sim._hosts[h].state_dicts.remote(names)).items():
            out[n] = st["guard"]["graph_reveals"]
    return out


def test_gamma_mode_ray_resume_never_under_counts_and_sites_state_their_delta(tmp_path, monkeypatch):
    """Gamma mode on Ray, as simulate: every resume counts one more GraphReveal per site, also a
    run killed in round 1 before its first checkpoint (no saved state) and one resumed from a
    checkpoint; each site writes epsilon_site / delta_site / graph_reveals into its own metrics."""
    from secure_fedrl.runtime.server import ServerRuntime

    class Killed(Exception):
        pass

    def die(self):
        raise Killed

    run, keys = tmp_path / "run", tmp_path / "keys"
    with monkeypatch.context() as m:  # killed at the end of round 1, after the reveals, before the save
        m.setattr(ServerRuntime, "_save", die)
        sim = RaySimulation(_gamma_config(2), run, progress=False, ledger_key=keys)
        try:
            with pytest.raises(Killed):
                sim.run()
            assert set(_host_counts(sim).values()) == {1}
        finally:
            sim.close()
    sim = RaySimulation(_gamma_config(2), run, resume=True, progress=False, ledger_key=keys)
    try:
        assert sim.round == 0 and set(_host_counts(sim).values()) == {1}  # not 0
        sim.run()
        assert set(_host_counts(sim).values()) == {3}
    finally:
        sim.close()
    sites = site_rows(run)
    assert len(sites) == 8
    for name, site in sites.items():
        last = [r for r in site if "graph_reveals" in r][-1]
        assert last["round"] == 2 and last["graph_reveals"] == 3, (name, site)
        assert last["delta_site"] == 1e-5 + 3 * 2.0 ** -40 and last["epsilon_site"] > 0
    server = (run / "metrics.jsonl").read_text()
    assert "graph_reveals" not in server and "delta_site" not in server
    sim = RaySimulation(_gamma_config(3), run, resume=True, progress=False, ledger_key=keys)
    try:  # from the checkpoint of round 2: 3 + 1 (what the checkpoint holds, never a stale cache)
        assert sim.round == 2 and set(_host_counts(sim).values()) == {4}
        assert {s["guard"]["graph_reveals"] for s in sim.site_states()} == {4}
    finally:
        sim.close()
