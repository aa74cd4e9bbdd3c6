"""End to end: `simulate` with SCAFFOLD keeps the server's c equal to the mean of the sites' c_i
through secure-aggregation dropouts and rejected uploads (sites commit only when aggregated)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from secure_fedrl.config import config_from_dict
from secure_fedrl.errors import ConfigError
from secure_fedrl.runtime.simulate import Simulation


class _NaNCartPole(CartPoleEnv):
    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, info


gym.register("FlScaffoldNaNCartPole-v0", entry_point=_NaNCartPole, max_episode_steps=500)


def _config(extra: dict, sites: list[dict]) -> object:
    raw = {
        "federation": {"rounds": 4, "seed": 11},
        "local": {"algorithm": "ppo", "steps": 128},
        "local.ppo": {},
        "strategy": {"name": "scaffold", "weighting": "uniform"},
        "evaluation": {"every": 100, "episodes": 1},
        "sites": sites,
    }
    raw.pop("local.ppo")
    raw["local"]["ppo"] = {"num_steps": 32, "update_epochs": 2, "num_minibatches": 2}
    for section, table in extra.items():
        raw[section] = {**raw.get(section, {}), **table}
    return config_from_dict(raw)


def _run_checking_invariant(cfg, out, rounds: int, *, dim_slice: bool = False):
    """Run `rounds` rounds; after each: dropped / rejected sites unchanged, c + mean(e) = mean(c_i)."""
    sim = Simulation(cfg, out, progress=False)
    rows = []
    try:
        for r in range(1, rounds + 1):
            before = {s.spec.name: (s.scaffold.control_variate, s.compressor.residual) for s in sim.sites}
            row = sim.run_round(r)
            rows.append(row)
            untouched = set(row["sites_dropped"]) | set(row["sites_rejected"])
            for s in sim.sites:
                if s.spec.name in untouched:
                    np.testing.assert_array_equal(s.scaffold.control_variate, before[s.spec.name][0])
                    old_res = before[s.spec.name][1]
                    if old_res is None:
                        assert s.compressor.residual is None
                    else:
                        np.testing.assert_array_equal(s.compressor.residual, old_res)
            d = sim.dim
            residual_c = [s.compressor.residual[d:] if s.compressor.residual is not None else np.zeros(d)
                          for s in sim.sites]
            mean_c = np.mean([s.scaffold.control_variate for s in sim.sites], axis=0)
            scale = max(1.0, float(np.abs(mean_c).max()))
            # secure aggregation's fixed-point rounding is the only error (~1e-7 per coordinate per round)
            np.testing.assert_allclose(sim.strategy.control_variate + np.mean(residual_c, axis=0), mean_c,
                                       atol=1e-5 * scale, err_msg=f"round {r}")
    finally:
        sim.privacy.close()
    return sim, rows


SITES5 = [{"name": "s", "env": "CartPole-v1", "num_envs": 2, "seed": 3, "count": 5,
           "randomize": {"length": [0.3, 1.2]}}]


@pytest.mark.parametrize("compression", [{"method": "none"}, {"method": "shared_mask", "ratio": 0.5}],
                         ids=["dense", "shared_mask-ef"])
def test_scaffold_with_secure_aggregation_dropouts_keeps_c_the_mean_of_the_sites(tmp_path, compression):
    cfg = _config({"secure_aggregation": {"enabled": True, "threshold": 2, "dropout_rate": 0.3},
                   "compression": compression}, SITES5)
    sim, rows = _run_checking_invariant(cfg, tmp_path / "run", 4)
    dropped = [n for row in rows for n in row["sites_dropped"]]
    assert dropped, "no site dropped out: the test would not test anything"
    assert any(row["sites_aggregated"] for row in rows)
    assert np.abs(sim.strategy.control_variate).max() > 0  # c moved


def test_scaffold_rejected_site_keeps_its_control_variate(tmp_path):
    sites = SITES5[:1] + [{"name": "broken", "env": "FlScaffoldNaNCartPole-v0", "num_envs": 2, "seed": 9}]
    sites = [{**sites[0], "count": 3}, sites[1]]
    cfg = _config({}, sites)
    sim, rows = _run_checking_invariant(cfg, tmp_path / "run", 2)
    assert all("broken" in row["sites_rejected"] for row in rows)
    broken = next(s for s in sim.sites if s.spec.name == "broken")
    np.testing.assert_array_equal(broken.scaffold.control_variate, 0.0)
    assert np.isfinite(sim.strategy.control_variate).all()


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"strategy": {"name": "scaffold", "weighting": "steps"}}, "strategy.weighting"),
        ({"privacy": {"unit": "client", "noise_multiplier": 1.0}}, "strategy.name"),
    ],
)
def test_scaffold_refusals_are_one_line_config_errors(extra, key):
    with pytest.raises(ConfigError) as info:
        _config(extra, SITES5)
    msg = str(info.value)
    assert msg.startswith(key) and "scaffold" in msg and "\n" not in msg
