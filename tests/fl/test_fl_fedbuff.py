"""FedBuff (Nguyen et al. 2022): buffered asynchronous rounds under secure aggregation.

The strategy's math, the config rules, the simulated clock, the site-side staleness weight
(the server sees only the sum, so each site weights its own update) and the privacy
accounting of rounds whose sites are not sampled but arrive.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tomllib

from secure_fedrl.config import config_from_dict, load_config
from secure_fedrl.errors import ConfigError, PrivacyError
from secure_fedrl.fl.strategies import FedBuff, make_strategy
from secure_fedrl.runtime.simulate import Simulation, run_simulation

BASE = textwrap.dedent("""
    [federation]
    name = "fedbuff-test"
    rounds = {rounds}
    seed = 4

    [local]
    algorithm = "ppo"
    steps = 64
    hidden_sizes = [8]

    [local.ppo]
    num_steps = 32
    update_epochs = 1

    [strategy]
    name = "fedbuff"
    weighting = "uniform"
    params = {{ buffer_size = {k} }}

    [secure_aggregation]
    enabled = true

    [privacy]
    {privacy}

    [evaluation]
    every = 100
    episodes = 1

    [[sites]]
    name = "fast"
    env = "CartPole-v1"
    num_envs = 1
    seed = 1
    count = 4
    pace = 1.0

    [[sites]]
    name = "slow"
    env = "CartPole-v1"
    num_envs = 1
    seed = 20
    count = 2
    pace = {slow_pace}
""")
def loads_config(text: str):
    return config_from_dict(tomllib.loads(text))


CLIENT_DP = 'unit = "client"\nmechanism = "ddg"\nthreat_model = "server"\nclip = 1.0\ntarget_epsilon = 8.0\n' \
            'delta = 1e-5\naccountant = "rdp"'


def config_text(*, rounds: int = 4, k: int = 3, privacy: str = 'unit = "none"', slow_pace: float = 2.5) -> str:
    return BASE.format(rounds=rounds, k=k, privacy=privacy, slow_pace=slow_pace)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fed.toml"
    path.write_text(text)
    return path


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# -- the strategy --------------------------------------------------------------------------------
def test_staleness_weight_is_fedbuffs_inverse_square_root_and_bounded_by_one() -> None:
    s = make_strategy("fedbuff", buffer_size=4)
    assert [s.staleness_weight(t) for t in (0, 3, 8)] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert all(0 < s.staleness_weight(t) <= 1 for t in range(50))
    capped = make_strategy("fedbuff", buffer_size=4, max_staleness=2)
    assert capped.staleness_weight(2) > 0 and capped.staleness_weight(3) == 0.0
    assert make_strategy("fedbuff", staleness="constant").staleness_weight(9) == 1.0


def test_apply_steps_by_server_lr_and_counts_versions_through_a_checkpoint() -> None:
    s = make_strategy("fedbuff", buffer_size=2, server_lr=0.5)
    x = s.apply(np.ones(3, np.float32), np.full(3, 2.0, np.float32))
    assert np.allclose(x, 2.0) and s.version == 1
    t = FedBuff(buffer_size=2, server_lr=0.5)
    t.load_state_dict(s.state_dict())
    assert t.version == 1
    with pytest.raises(ConfigError):
        FedBuff(buffer_size=3, server_lr=0.5).load_state_dict(s.state_dict())  # another buffer size


@pytest.mark.parametrize("params", [{"buffer_size": 0}, {"buffer_size": 2.5}, {"max_staleness": -1},
                                    {"server_lr": 0.0}, {"staleness": "nope"}])
def test_bad_fedbuff_parameters_are_config_errors(params) -> None:
    with pytest.raises(ConfigError):
        make_strategy("fedbuff", **params)


# -- the config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, where", [
    (("enabled = true", "enabled = false"), "strategy.name"),
    (('unit = "none"', 'unit = "trajectory"'), "privacy.unit"),
    (("pace = 2.5", "pace = 0.0"), "sites[1].pace"),
    (("[privacy]", "[sampling]\nclients_per_round = 3\n\n[privacy]"), "sampling"),
])
def test_configs_fedbuff_cannot_run_are_refused_naming_the_key(edit, where) -> None:
    text = config_text().replace(*edit)
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        loads_config(text)


def test_compression_is_refused_under_fedbuff() -> None:
    text = config_text() + '\n[compression]\nmethod = "shared_mask"\nratio = 0.5\n'
    with pytest.raises(ConfigError, match="compression.method"):
        loads_config(text)


# -- the simulated clock ------------------------------------------------------------------------
def test_simulated_fedbuff_takes_the_first_k_to_finish_and_slow_sites_arrive_stale(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_simulation(load_config(write(tmp_path, config_text(rounds=6, slow_pace=5.0))), out, progress=False)
    got = rows(out)
    assert [r["sites_aggregated"] for r in got] == [3] * 6
    assert [r["model_version"] for r in got] == list(range(1, 7))
    assert max(r["staleness"]["max"] for r in got) >= 1  # some update trained on an older model
    sites = [json.loads(x) for x in (out / "sites").glob("*/metrics.jsonl") for x in x.read_text().splitlines()]
    counts = {}
    for row in sites:
        counts[row["site"]] = counts.get(row["site"], 0) + 1
    fast = [counts.get(f"fast-{i}", 0) for i in range(4)]
    slow = [counts.get(f"slow-{i}", 0) for i in range(2)]
    assert sum(fast) / 4 > 1.5 * sum(slow) / 2, counts  # the fast sites take part more often


def test_simulated_fedbuff_is_reproducible_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    cfg = load_config(write(tmp_path, config_text(rounds=4)))
    run_simulation(cfg, a, progress=False)
    run_simulation(cfg, b, progress=False)
    short = load_config(write(tmp_path, config_text(rounds=4)), overrides={"federation.rounds": 2})
    run_simulation(short, c, progress=False)
    Simulation(cfg, c, resume=True, progress=False).run()
    import pickle

    final = [pickle.loads((d / "state.pkl").read_bytes())["global_params"] for d in (a, b, c)]
    assert np.array_equal(final[0], final[1]) and np.array_equal(final[0], final[2])
    assert [r["staleness"] for r in rows(a)] == [r["staleness"] for r in rows(c)]


def test_client_level_fedbuff_has_no_sampling_discount_and_the_audit_agrees(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = load_config(write(tmp_path, config_text(rounds=3, k=4, privacy=CLIENT_DP)))
    summary = run_simulation(cfg, out, progress=False, ledger_key=tmp_path / "keys")
    assert summary.epsilon_server == pytest.approx(summary.epsilon_release)  # arrival is not a secret sample
    assert 0 < summary.epsilon_server <= 8.0
    from secure_fedrl.ledger.store import read_ledger

    ledger_rows = read_ledger(out / "privacy_ledger.sqlite")
    assert ledger_rows and all(float(r.sample_rate) == 1.0 for r in ledger_rows)
    import subprocess
    import sys

    pub = (out / "ledger_public_key.hex").read_text().strip()
    res = subprocess.run([sys.executable, "audit/verify_ledger.py", str(out), "--public-key", pub],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


# -- the site's half ------------------------------------------------------------------------------
def _site(tmp_path: Path, privacy: str = CLIENT_DP):
    from secure_fedrl.runtime.site_build import SiteBuilder

    cfg = load_config(write(tmp_path, config_text(k=4, privacy=privacy)))
    return SiteBuilder(cfg, secure=True).build(0)


def test_site_scales_its_clipped_update_by_its_own_staleness_weight(tmp_path: Path) -> None:
    from secure_fedrl.runtime.round import staleness_scaled

    site = _site(tmp_path)
    v = np.full(site.dim, 3.0, np.float32)  # norm far above the clip norm 1
    assert staleness_scaled(site, v, 1.0) is v
    half = staleness_scaled(site, v, 0.5)
    assert np.linalg.norm(half) == pytest.approx(0.5, rel=1e-5)  # clipped to C first, then weighted
    small = np.full(site.dim, 1e-3, np.float32)
    assert np.allclose(staleness_scaled(site, small, 0.5), small * 0.5)


def _announcement(site, *, version: int | None, planned: int = 4):
    from secure_fedrl.runtime.site import RoundOrder
    from secure_fedrl.secagg.protocol import RoundConfig
    from secure_fedrl.transport.base import RosterEntry, RoundAnnouncement

    cfg = RoundConfig(round_id=3, site_ids=(1, 2), identity_keys=(b"\x01" * 32, b"\x02" * 32), threshold=2,
                      dim=4, bits=32, degree=None, graph_seed=b"\x00" * 32)
    order = RoundOrder(round=3, round_seed=7, planned=planned, dim=site.dim, version=version)
    from secure_fedrl.config import expand_site_names

    other = next(n for sec in site.config.sites for n in expand_site_names(sec) if n != site.name)  # a config peer
    return RoundAnnouncement(cfg, (RosterEntry(1, site.name), RosterEntry(2, other)),
                             np.zeros(site.dim, np.float32), order.encode())


class _Silent:
    name = "fast-0"
    left: list = []

    def leave(self, round_id: int) -> None:
        self.left.append(round_id)


@pytest.mark.parametrize("version, ahead_version, why", [
    (2, 5, "older than version 5"),       # the server claims a version before the one we trained from
    (None, 1, "synchronous round"),       # a FedBuff site handed a synchronous round
])
def test_site_refuses_a_buffered_round_that_contradicts_what_it_trained(tmp_path: Path, version, ahead_version,
                                                                        why) -> None:
    from secure_fedrl.runtime.round import TrainedAhead, take_part

    site = _site(tmp_path, privacy='unit = "none"')
    ahead = TrainedAhead(ahead_version, None, None, 0.0)
    report = take_part(site, _Silent(), _announcement(site, version=version), ahead=ahead)
    assert report.status.startswith("refused") and why in report.status


def test_site_too_stale_for_max_staleness_sits_the_round_out(tmp_path: Path) -> None:
    from secure_fedrl.runtime.round import TrainedAhead, take_part

    site = _site(tmp_path, privacy='unit = "none"')
    site.fedbuff = FedBuff(buffer_size=4, max_staleness=2)
    report = take_part(site, _Silent(), _announcement(site, version=9), ahead=TrainedAhead(1, None, None, 0.0))
    assert report.status.startswith("refused") and "8 versions stale" in report.status


def test_synchronous_site_refuses_a_buffered_round(tmp_path: Path) -> None:
    from secure_fedrl.runtime.round import take_part
    from secure_fedrl.runtime.site_build import SiteBuilder

    text = config_text(privacy='unit = "none"').replace('name = "fedbuff"', 'name = "fedavg"') \
        .replace("params = { buffer_size = 3 }", "")
    site = SiteBuilder(loads_config(text), secure=True).build(0)
    report = take_part(site, _Silent(), _announcement(site, version=0))
    assert report.status.startswith("refused") and "synchronous rounds" in report.status


def test_ray_backend_refuses_fedbuff_in_one_line(tmp_path: Path) -> None:
    from secure_fedrl.runtime.ray_backend import run_ray_simulation

    with pytest.raises(ConfigError, match="fedbuff runs with --backend local"):
        run_ray_simulation(load_config(write(tmp_path, config_text())), tmp_path / "run", progress=False)


def test_site_refuses_a_graph_seed_its_round_seed_does_not_give(tmp_path: Path) -> None:
    """D binds the graph seed; the site checks it is the hash of the broadcast round seed, so D
    binds the round seed too (one rotation and mask per round, not one per site: review F3)."""
    from secure_fedrl.runtime.round import take_part
    from secure_fedrl.runtime.site_build import SiteBuilder

    text = config_text(privacy='unit = "none"').replace('name = "fedbuff"', 'name = "fedavg"') \
        .replace("params = { buffer_size = 3 }", "")
    site = SiteBuilder(loads_config(text), secure=True).build(0)
    report = take_part(site, _Silent(), _announcement(site, version=None))  # graph seed 0, round seed 7
    assert report.status.startswith("refused") and "graph seed" in report.status


def test_the_ready_fedbuff_config_runs_a_round_of_k_arrivals(tmp_path: Path) -> None:
    """clients/cartpole/fedbuff.toml as shipped (one round): 40 of 200 sites, no sampling discount."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "clients" / "cartpole" / "fedbuff.toml",
                      overrides={"federation.rounds": 1})
    out = tmp_path / "run"
    summary = run_simulation(cfg, out, progress=False, ledger_key=tmp_path / "keys")
    (row,) = rows(out)
    assert row["sites_aggregated"] == 40 and row["model_version"] == 1
    assert summary.epsilon_server == pytest.approx(summary.epsilon_release) and summary.epsilon_server <= 8.0
