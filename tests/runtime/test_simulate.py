"""End-to-end `secure-fedrl simulate`: metrics, determinism, exact resume, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from secure_fedrl.cli import main
from secure_fedrl.config import config_from_dict
from secure_fedrl.runtime.simulate import run_simulation

SMALL = textwrap.dedent("""
    [federation]
    name = "smoke"
    rounds = 3
    seed = 7

    [local]
    algorithm = "ppo"
    steps = 256

    [local.ppo]
    num_steps = 64
    update_epochs = 2
    num_minibatches = 2

    [strategy]
    name = "fedavg"

    [evaluation]
    every = 2
    episodes = 2

    [[sites]]
    name = "short"
    env = "CartPole-v1"
    num_envs = 4
    seed = 1
    overrides = { length = 0.3, gravity = 8.0 }

    [[sites]]
    name = "long"
    env = "CartPole-v1"
    num_envs = 4
    seed = 2
    count = 2
    randomize = { length = [0.5, 1.0], force_mag = [8.0, 12.0] }
""")


def write(tmp_path: Path, text: str = SMALL, name: str = "fed.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "timing"} for r in rows]


def test_simulate_writes_run_directory(tmp_path):
    cfg = write(tmp_path)
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    run = tmp_path / "run"
    rows = metrics(run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for key in ("eval_return_mean", "eval_return_worst", "bytes_per_site", "sites_aggregated"):
        assert key in rows[1] and key in rows[2]
    assert rows[1]["eval_return_worst"] <= rows[1]["eval_return_mean"]
    # Site-local data stays in the sites' files, never in the server's metrics.
    site_keys = {"env_steps", "round_env_steps", "train_return_mean", "diagnostics",
                 "eval_return_per_site", "eval_return"}
    assert not any(site_keys & set(r) for r in rows)
    assert not any({"train_s", "env_steps_per_s"} & set(r["timing"]) for r in rows)
    sites = {"short", "long-0", "long-1"}
    assert {p.name for p in (run / "sites").iterdir()} == sites
    per_site = {s: [json.loads(x) for x in (run / "sites" / s / "metrics.jsonl").read_text().splitlines()]
                for s in sites}
    assert sum(r["env_steps"] for rs in per_site.values() for r in rs) == 3 * 3 * 256
    evals = {s: next(r["eval_return"] for r in rs if r["round"] == 2) for s, rs in per_site.items()}
    assert rows[1]["eval_return_worst"] == min(evals.values())
    assert rows[1]["eval_return_mean"] == pytest.approx(sum(evals.values()) / 3)
    assert all("diagnostics" in r and "train_return_mean" in r for rs in per_site.values()
               for r in rs if "env_steps" in r)
    assert (run / "config.resolved.toml").exists()
    ckpt = torch.load(run / "checkpoints" / "round-00003.pt", weights_only=False)
    assert ckpt["round"] == 3 and ckpt["global_params"].dtype == torch.float32


def test_same_seed_same_metrics_and_exact_resume(tmp_path):
    cfg_path = write(tmp_path)
    from secure_fedrl.config import load_config

    cfg = load_config(cfg_path)
    run_simulation(cfg, tmp_path / "a", progress=False)
    run_simulation(cfg, tmp_path / "b", progress=False)
    assert comparable(metrics(tmp_path / "a")) == comparable(metrics(tmp_path / "b"))

    short = load_config(cfg_path, overrides={"federation.rounds": 1})
    run_simulation(short, tmp_path / "c", progress=False)
    run_simulation(cfg, tmp_path / "c", resume=True, progress=False)
    # The stopped run also evaluated at its last round (evaluation never touches training state).
    no_eval = lambda rows: [{k: v for k, v in r.items() if not k.startswith("eval_")} for r in comparable(rows)]
    assert no_eval(metrics(tmp_path / "c")) == no_eval(metrics(tmp_path / "a"))
    assert comparable(metrics(tmp_path / "c"))[1:] == comparable(metrics(tmp_path / "a"))[1:]
    a = torch.load(tmp_path / "a" / "checkpoints" / "round-00003.pt", weights_only=False)
    c = torch.load(tmp_path / "c" / "checkpoints" / "round-00003.pt", weights_only=False)
    assert torch.equal(a["global_params"], c["global_params"])


def test_resume_with_other_config_is_refused(tmp_path, capsys):
    cfg = write(tmp_path)
    run = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run), "--rounds", "1", "--no-progress"]) == 0
    other = write(tmp_path, SMALL.replace("seed = 7", "seed = 8"), "other.toml")
    assert main(["simulate", str(other), "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "different config" in err and len(err.splitlines()) == 1
    # a fresh run into an existing run directory is refused too
    assert main(["simulate", str(cfg), "--out", str(run), "--no-progress"]) == 2


class NaNRewardCartPole(CartPoleEnv):
    """A broken site: its rewards are NaN, so its update is NaN."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, info


def test_nan_update_is_rejected_and_round_goes_on(tmp_path):
    gym.register("NaNRewardCartPole-v0", entry_point=NaNRewardCartPole, max_episode_steps=500)
    text = SMALL + textwrap.dedent("""
        [[sites]]
        name = "broken"
        env = "NaNRewardCartPole-v0"
        num_envs = 2
        seed = 9
    """)
    cfg = write(tmp_path, text)
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "run"), "--rounds", "2", "--no-progress"]) == 0
    rows = metrics(tmp_path / "run")
    for row in rows:
        assert "broken" in row["sites_rejected"]
        assert row["sites_aggregated"] == 3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "round-00002.pt", weights_only=False)
    assert torch.isfinite(ckpt["global_params"]).all()


@pytest.mark.parametrize(
    "snippet, key",
    [
        ("[federation]\nrounds = 'x'\n", "federation.rounds"),
        ("[[sites]]\nname='a'\nenv='NoSuchEnv-v9'\n[local]\nsteps=64\n", "NoSuchEnv-v9"),
        ("[[sites]]\nname='a'\nenv='CartPole-v1'\noverrides={wingspan=2.0}\n[local]\nsteps=64\n", "wingspan"),
    ],
)
def test_cli_bad_config_one_line_exit_2(tmp_path, snippet, key):
    cfg = write(tmp_path, snippet)
    proc = subprocess.run([sys.executable, "-m", "secure_fedrl.cli", "simulate", str(cfg), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert key in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "extra",
    [
        {"strategy": {"name": "fedprox", "params": {"mu": 0.1}}},
        {"strategy": {"name": "fedadam", "params": {"server_lr": 0.01}}},
        {"strategy": {"name": "fedyogi"}},
        {"strategy": {"name": "fedadagrad"}},
        {"strategy": {"name": "scaffold", "weighting": "uniform"}},
        {"strategy": {"name": "scaffold", "weighting": "uniform"}, "secure_aggregation": {"enabled": True, "threshold": 2}},
        {"strategy": {"name": "fedasync", "params": {"alpha": 0.5, "staleness": "polynomial", "a": 0.5}}},
        {"local": {"algorithm": "ppo", "steps": 128, "federate_critic": False}},
        {"local": {"algorithm": "ppo", "steps": 128, "linear_actor": True, "federate_critic": False, "init_log_std": -1.2}},
        {"local": {"algorithm": "reinforce", "steps": 128}},
        {"compression": {"method": "topk", "ratio": 0.1}},
        {"compression": {"method": "quantize", "levels": 8}},
        {"compression": {"method": "shared_mask", "ratio": 0.25}, "strategy": {"weighting": "uniform"},
         "secure_aggregation": {"enabled": True, "threshold": 2}},
        {"sampling": {"clients_per_round": 2}},
    ],
    ids=lambda e: "-".join(f"{k}" for k in e) + ":" + str(next(iter(e.values()))).replace(" ", ""),
)
def test_every_strategy_and_option_runs(tmp_path, extra):
    raw = {
        "federation": {"rounds": 2, "seed": 4},
        "local": {"algorithm": "ppo", "steps": 128},
        "evaluation": {"every": 2, "episodes": 1},
        "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 2, "seed": 3, "count": 3,
                   "randomize": {"length": [0.3, 0.9]}}],
    }
    for section, table in extra.items():
        raw[section] = {**raw.get(section, {}), **table}
    cfg = config_from_dict(raw)
    summary = run_simulation(cfg, tmp_path / "run", progress=False)
    rows = metrics(tmp_path / "run")
    assert summary.rounds_done == 2 and len(rows) == 2
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "round-00002.pt", weights_only=False)
    first = torch.load(tmp_path / "run" / "checkpoints" / "round-00001.pt", weights_only=False)
    assert torch.isfinite(ckpt["global_params"]).all()
    assert not torch.equal(ckpt["global_params"], first["global_params"])  # the policy moved
    assert rows[-1]["bytes_per_site"] > 0
    if "compression" in extra:
        dense = 4 * ckpt["global_params"].numel()
        assert rows[-1]["bytes_per_site"] < dense


def test_initial_policy_is_the_servers_round_zero_policy(tmp_path):
    """bench/pilots.py starts its patients-alone arm from `initial_policy`: it must be the
    federation's own start, and depend on the federation seed."""
    from secure_fedrl.config import load_config
    from secure_fedrl.rl.policies import get_flat
    from secure_fedrl.runtime.simulate import Simulation
    from secure_fedrl.runtime.site import initial_policy

    config = load_config(write(tmp_path))
    sim = Simulation(config, tmp_path / "run", progress=False)
    env = gym.make("CartPole-v1")
    start = get_flat(list(initial_policy(config, env.observation_space, env.action_space).parameters()))
    assert (start == get_flat(list(sim.policy.parameters()))).all()
    other = load_config(write(tmp_path, SMALL.replace("seed = 7", "seed = 8"), "other.toml"))
    assert not (start == get_flat(list(initial_policy(other, env.observation_space, env.action_space).parameters()))).all()


@pytest.mark.parametrize("crash", [False, True])
def test_only_a_run_that_ended_cleanly_publishes_its_final_model(tmp_path, monkeypatch, crash):
    """A crash after a round's aggregate was applied leaves parameters of a round that never
    completed: the hub gets no final model then, so no site keeps it."""
    from secure_fedrl.runtime.simulate import Simulation

    config = config_from_dict(tomllib.loads(SMALL.replace("rounds = 3", "rounds = 2")))
    sim = Simulation(config, tmp_path / "run", progress=False, ledger_key=tmp_path / "keys")
    run_round = sim.run_round

    def failing(r):
        row = run_round(r)
        if crash and r == 2:
            raise RuntimeError("disk gone after the aggregate")
        return row

    monkeypatch.setattr(sim, "run_round", failing)
    if crash:
        with pytest.raises(RuntimeError):
            sim.run()
        assert sim.hub._final is None
    else:
        sim.run()
        assert sim.hub._final[0] == 2 and sim.hub._final[1].tobytes() == sim.global_params.astype("<f4").tobytes()
