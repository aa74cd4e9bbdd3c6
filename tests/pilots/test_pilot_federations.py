"""The shipped pilot federations: what they promise, and a tiny two-round end-to-end run of each."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from secure_fedrl.config import config_from_dict, load_config
from secure_fedrl.runtime.simulate import run_simulation
from secure_fedrl.runtime.sites import expand_sites

ROOT = Path(__file__).resolve().parents[2]
HEALTHCARE = ROOT / "clients" / "healthcare" / "federation.toml"
FINANCE = ROOT / "clients" / "finance" / "federation.toml"


def test_healthcare_federation_is_what_it_says():
    c = load_config(HEALTHCARE)
    specs = expand_sites(c.sites)
    assert len(specs) >= 100
    assert c.privacy.unit == "client" and c.privacy.mechanism == "ddg" and c.secure_aggregation.enabled
    assert c.sampling.poisson or c.sampling.fraction == 1.0  # what client-level accounting needs
    patients = {s.overrides["patient_seed"] for s in specs}
    assert len(patients) == len(specs)  # one patient per site, each drawn from its site seed
    assert all(s.env_id == "secure_fedrl/Hovorka-v0" for s in specs)


def test_finance_federation_is_what_it_says():
    c = load_config(FINANCE)
    specs = expand_sites(c.sites)
    assert len(specs) >= 5
    assert c.privacy.unit == "trajectory" and c.secure_aggregation.enabled
    assert len({s.overrides["desk"] for s in specs}) == len(specs)  # each desk its own book


def tiny(path: Path, **changes) -> dict:
    raw = tomllib.loads(path.read_text())
    raw["federation"]["rounds"] = 2
    raw["evaluation"].update(every=1, episodes=1, max_sites=0)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return raw


def _last_row(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_healthcare_two_rounds_end_to_end(tmp_path):
    raw = tiny(HEALTHCARE, local__steps=288, sampling__fraction=1.0)
    raw["local"]["ppo"]["num_steps"] = 144
    raw["sites"][0].update(count=3, num_envs=1)
    summary = run_simulation(config_from_dict(raw), tmp_path / "run", progress=False)
    assert summary.rounds_done == 2 and summary.epsilon is not None and 0 < summary.epsilon <= 8.0
    row = _last_row(tmp_path / "run")
    mean, worst = row["eval_domain_mean"], row["eval_domain_worst"]
    for key in ("time_in_range", "time_below_70", "time_below_54", "mean_risk"):
        assert key in mean and key in worst
    assert worst["time_in_range"] <= mean["time_in_range"] and worst["time_below_54"] >= mean["time_below_54"]
    assert (tmp_path / "run" / "privacy_ledger.sqlite").is_file()


@pytest.mark.slow
def test_finance_two_rounds_end_to_end(tmp_path):
    raw = tiny(FINANCE, local__episodes=4, privacy__noisy_steps=1)
    raw["sites"] = raw["sites"][:3]
    for site in raw["sites"]:
        site["num_envs"] = 2
    summary = run_simulation(config_from_dict(raw), tmp_path / "run", progress=False)
    assert summary.rounds_done == 2 and summary.epsilon is not None and 0 < summary.epsilon <= 8.0
    row = _last_row(tmp_path / "run")
    for key in ("annual_return", "sharpe", "max_drawdown", "turnover"):
        assert key in row["eval_domain_mean"]
    assert row["eval_domain_worst"]["sharpe"] <= row["eval_domain_mean"]["sharpe"]
    assert (tmp_path / "run" / "privacy_ledger.sqlite").is_file()


@pytest.mark.slow
def test_healthcare_es_experiment_two_rounds_end_to_end(tmp_path):
    """bench/configs/healthcare-es.toml (docs/pilots.md): local ES under client-level DDG and SecAgg."""
    raw = tiny(ROOT / "bench" / "configs" / "healthcare-es.toml", local__episodes=2, sampling__fraction=1.0)
    raw["sites"][0].update(count=3, num_envs=2)
    summary = run_simulation(config_from_dict(raw), tmp_path / "run", progress=False)
    assert summary.rounds_done == 2 and summary.epsilon is not None and 0 < summary.epsilon <= 8.0
    assert "time_in_range" in _last_row(tmp_path / "run")["eval_domain_mean"]
    assert (tmp_path / "run" / "privacy_ledger.sqlite").is_file()
