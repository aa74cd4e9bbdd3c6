"""bench/pilots.py's per-patient training (the personalised and patients-alone arms): each patient
trains its own copy of the start, whatever the process pool does with the tensors."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import torch

from secure_fedrl.config import config_from_dict
from secure_fedrl.rl.envs import make_site_env
from secure_fedrl.runtime.site import initial_policy
from secure_fedrl.runtime.sites import expand_sites

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_pilots", ROOT / "bench" / "pilots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_pilots", module)
    spec.loader.exec_module(module)
    return module


def test_patients_trained_in_the_pool_leave_the_start_and_each_other_alone():
    """The pool shares a tensor passed to it with every job and with the caller (torch pickles
    storages into shared memory): training it in place made the fine-tuned patients train one
    policy in turn, and the caller's "global" policy changed under it."""
    pilots = _bench()
    raw = tomllib.loads((ROOT / "bench" / "configs" / "healthcare-es.toml").read_text())
    raw["local"]["episodes"] = 2
    raw["sites"][0].update(count=3, num_envs=1)
    config = config_from_dict(raw)
    specs = expand_sites(config.sites)
    env = make_site_env(specs[0].env_id, overrides=specs[0].overrides, num_envs=1, seed=0, site=specs[0].name)
    start = initial_policy(config, env.single_observation_space, env.single_action_space)
    env.close()
    with torch.no_grad():
        for p in start.actor_parameters():
            p.add_(0.05)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    together = pilots.train_at_sites([start] * 3, specs, config, rounds=1, episodes=1, tag=0)
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())
    # The last patient, trained beside the others, gets what it gets when it is the only job.
    alone = pilots.train_at_site((start, specs[2], 2, config, 1, pilots.derive_seed(config.federation.seed, 0, 2, 0xF17E),
                                  1, None))
    assert together[specs[2].name] == alone


def test_a_pump_keeps_a_start_between_the_initial_and_the_federated_policy():
    """`--finetune-interpolate`: the interpolated starts are candidates of the pump's selection."""
    from secure_fedrl.runtime.personalise import parse_selection

    pilots = _bench()
    raw = tomllib.loads((ROOT / "bench" / "configs" / "healthcare-es.toml").read_text())
    raw["local"]["episodes"] = 2
    raw["sites"][0].update(count=1, num_envs=1)
    config = config_from_dict(raw)
    spec = expand_sites(config.sites)[0]
    env = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=1, seed=0, site=spec.name)
    start = initial_policy(config, env.single_observation_space, env.single_action_space)
    env.close()
    keep = (parse_selection("time_in_range", ["time_in_range>=baseline"]), 1, 1, "zero", (0.5,))
    row = pilots.train_at_site((start, spec, 0, config, 1, 7, 1, keep))
    assert row["kept_weight"] in (0.5, 1.0) and row["kept_round"] in (0, 1)
    assert set(row) >= {"time_in_range", "time_below_54", "return"}


def test_finance_goal_compares_the_federation_with_the_desks_alone_over_their_draws():
    """One alone draw is as noisy as one federated draw: the goal is judged against the alone
    arm's mean over its draws, and a desk counts as beyond noise only if its interval is."""
    pilots = _bench()

    def arm(sharpe: float, high: float | None = None) -> dict:
        row = {"annual_return": 0.1, "sharpe": sharpe, "max_drawdown": 0.3, "turnover": 1.0}
        if high is not None:
            row["vs_buy_and_hold"] = {"difference": sharpe - 0.5, "low": high - 0.4, "high": high}
        return {"desk-a": row}

    r = {"buy_and_hold": arm(0.5), "equal_weight": arm(0.6), "federated_plain": arm(0.6),
         "federated_dp_draws": [arm(0.62, 0.2), arm(0.45, -0.01)], "alone_draws": [arm(0.70), arm(0.50)]}
    r["federated_dp"], r["alone"] = r["federated_dp_draws"][0], r["alone_draws"][0]
    s = r["summary"] = pilots.finance_summary(r)
    assert s["alone_draws"] == [0.70, 0.50] and s["over_draws"]["alone_sharpe"] == 0.6
    # draw 1 (0.62) beats the alone mean 0.60, though not the first alone draw (0.70)
    assert [d["goals"]["sharpe_dp_ge_alone_on_average"] for d in s["draws"]] == [True, False]
    assert [d["below_buy_and_hold_beyond_noise"] for d in s["draws"]] == [[], ["desk-a"]]
    assert "desk-a -0.050" in pilots.markdown_finance(r)


def test_no_draws_is_refused_before_anything_runs(capsys):
    import pytest

    pilots = _bench()
    for argv in (["--draws", "0"], ["--alone-draws", "-1"]):
        with pytest.raises(SystemExit) as exc:
            pilots.main(["--pilot", "finance", *argv])
        assert exc.value.code == 2
        assert "--draws must be >= 1 and --alone-draws >= 0" in capsys.readouterr().err
