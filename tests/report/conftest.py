"""One small real `simulate` run (trajectory-level DP, 2 sites, 2 rounds) shared by the report
and `audit verify` tests: a real run costs seconds, so it is made once per session."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

SMALL_PRIVATE = textwrap.dedent("""
    [federation]
    name = "report-sim"
    rounds = 2
    seed = 3

    [local]
    algorithm = "reinforce"
    steps = 0
    episodes = 8
    hidden_sizes = [4]

    [strategy]
    name = "fedavg"
    weighting = "uniform"

    [privacy]
    unit = "trajectory"
    clip = 1.0
    target_epsilon = 8.0
    noise_multiplier = 1.1  # fixed: calibration is not what these tests are about
    sample_rate = 0.25
    noisy_steps = 1

    [evaluation]
    every = 1
    episodes = 1

    [[sites]]
    name = "s"
    env = "CartPole-v1"
    num_envs = 1
    seed = 1
    count = 2
""")


@pytest.fixture(scope="session")
def small_private_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory; copy it before changing anything in it."""
    from secure_fedrl.cli import main

    base = tmp_path_factory.mktemp("small-private-run")
    cfg = base / "fed.toml"
    cfg.write_text(SMALL_PRIVATE)
    assert main(["simulate", str(cfg), "--out", str(base / "run"), "--no-progress"]) == 0
    return base / "run"
