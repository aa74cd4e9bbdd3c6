"""`audit canary`: the one-run auditing statistic (Steinke, Nasr, Jagielski 2023) and its use on
the project's own mechanisms. DP off must give a high lower bound; DP on must stay below the
theoretical epsilon; a mechanism that adds less noise than it claims must be caught."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from audit.canary import audit, epsilon_lower_bound, guess, p_value, run_fast  # noqa: E402

from secure_fedrl.cli import main  # noqa: E402

BASE = {"federation": {"name": "canary-test", "rounds": 1, "seed": 0},
        "local": {"algorithm": "reinforce", "steps": 0, "episodes": 2, "hidden_sizes": [16]},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "sampling": {"fraction": 1.0, "poisson": True},
        "evaluation": {"every": 100, "episodes": 1}}


def config(privacy: dict, *, secagg: bool = False, **fed) -> dict:
    raw = json.loads(json.dumps(BASE))
    raw["federation"].update(fed)
    raw["privacy"] = privacy
    raw["secure_aggregation"] = {"enabled": secagg}
    return raw


# -- the statistic -----------------------------------------------------------------------------------
def test_pure_dp_p_value_is_the_binomial_tail():
    eps = 1.3
    p = math.exp(eps) / (1 + math.exp(eps))
    assert p_value(100, 40, 30, eps, 0.0) == pytest.approx(binom.sf(29, 40, p))


def test_delta_term_matches_a_direct_sum():
    m, r, v, eps, delta = 500, 60, 50, 1.0, 1e-4
    p = 1 / (1 + math.exp(-eps))
    alpha = max(sum(binom.pmf(v - j, r, p) for j in range(1, i + 1)) / i for i in range(1, v + 1))
    assert p_value(m, r, v, eps, delta) == pytest.approx(binom.sf(v - 1, r, p) + 2 * m * delta * alpha)
    assert p_value(m, r, v, eps, delta) > p_value(m, r, v, eps, 0.0)


def test_lower_bound_closed_form_for_all_correct_and_pure_dp():
    # r = v: P[Bin(r, p) >= r] = p^r < beta  <=>  eps < log(p / (1 - p)) with p = beta^(1/r)
    r, beta = 100, 0.05
    p = beta ** (1 / r)
    assert epsilon_lower_bound(1000, r, r, delta=0.0, beta=beta) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)


def test_lower_bound_is_monotone_and_zero_for_chance():
    assert epsilon_lower_bound(1000, 100, 50, delta=1e-5, beta=0.05) == 0.0
    bounds = [epsilon_lower_bound(1000, 100, v, delta=1e-5, beta=0.05) for v in (70, 80, 90, 100)]
    assert bounds == sorted(bounds) and bounds[0] > 0


def test_guess_top_and_bottom():
    g = guess(np.array([0.1, 5.0, -3.0, 0.0, 2.0]), 2, 1)
    assert g.tolist() == [0, 1, -1, 0, 1]


def test_bound_is_valid_on_randomized_response():
    """Under an exactly eps-DP mechanism, the 95% bound exceeds eps in at most ~5% of trials."""
    rng = np.random.default_rng(1)
    eps, m, trials, over = 1.0, 200, 60, 0
    p = math.exp(eps) / (1 + math.exp(eps))
    bounds = []
    for _ in range(trials):
        member = np.where(rng.random(m) < 0.5, 1, -1)
        # randomized response on each canary's bit, then a score that ranks by the response
        noisy = np.where(rng.random(m) < p, member, -member)
        scores = noisy + 0.01 * rng.standard_normal(m)
        best, _ = audit(scores, member, delta=0.0, confidence=0.95)
        over += best.epsilon_lower_bound > eps
        bounds.append(best.epsilon_lower_bound)
    assert over / trials <= 0.1
    assert np.mean(bounds) > 0.3  # and it has power: not trivially zero


# -- fast mode: canary sites through the project's aggregator ------------------------------------------
def test_dp_off_gives_a_high_lower_bound():
    res = run_fast(config({"unit": "none"}), canaries=256, dim=2048)
    assert not res.dp and res.epsilon_theoretical is None
    assert res.correct == res.guesses and res.epsilon_lower_bound > 2.0


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_central_gaussian_bound_stays_below_theory(target):
    res = run_fast(config({"unit": "client", "target_epsilon": target, "clip": 1.0}), canaries=256, dim=2048)
    assert res.mechanism == "gaussian" and res.epsilon_theoretical == pytest.approx(target, rel=0.01)
    assert res.epsilon_lower_bound <= res.epsilon_theoretical


def test_distributed_discrete_gaussian_bound_stays_below_theory():
    res = run_fast(config({"unit": "client", "target_epsilon": 4.0, "clip": 1.0}, secagg=True),
                   canaries=48, dim=256)
    assert res.mechanism == "ddg"
    assert res.epsilon_lower_bound <= res.epsilon_theoretical


def test_a_mechanism_with_too_little_noise_is_caught(monkeypatch):
    """Defence check: if the central mechanism added 1/20 of the noise it accounts for, the audit's
    lower bound exceeds the claimed epsilon."""
    import secure_fedrl.privacy.central as central

    real = central.add_central_noise

    def weak(total, *, clip_norm, noise_multiplier, rng=None):
        return real(total, clip_norm=clip_norm, noise_multiplier=noise_multiplier / 20, rng=rng)

    monkeypatch.setattr(central, "add_central_noise", weak)
    res = run_fast(config({"unit": "client", "target_epsilon": 1.0, "clip": 1.0}), canaries=256, dim=2048)
    assert res.epsilon_lower_bound > res.epsilon_theoretical


# -- the command line ------------------------------------------------------------------------------------
def write_toml(path: Path, raw: dict) -> Path:
    import tomli_w

    raw = json.loads(json.dumps(raw))
    raw["sites"] = [{"name": "real", "env": "CartPole-v1", "num_envs": 1, "seed": 1, "count": 2}]
    path.write_bytes(tomli_w.dumps(raw).encode())
    return path


def test_cli_fast_writes_json(tmp_path, capsys):
    cfg = write_toml(tmp_path / "fed.toml", config({"unit": "client", "target_epsilon": 2.0, "clip": 1.0}))
    assert main(["audit", "canary", str(cfg), "--out", str(tmp_path / "out"), "--canaries", "64", "--dim", "256"]) == 0
    data = json.loads((tmp_path / "out" / "canary_audit.json").read_text())
    assert data["format"] == "secure-fedrl/canary-audit/v1" and data["level"] == "client"
    assert data["epsilon_lower_bound"] <= data["epsilon_theoretical"]
    assert "trajectory" in data["trajectory_level"] and "not done" in data["trajectory_level"]
    assert "epsilon lower bound" in capsys.readouterr().out


def test_cli_refuses_trajectory_level_and_missing_config(tmp_path, capsys):
    cfg = write_toml(tmp_path / "fed.toml", config({"unit": "trajectory"}))
    assert main(["audit", "canary", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trajectory" in err
    assert main(["audit", "canary", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_run_dp_off(tmp_path):
    """One small real `simulate` run with 128 canary sites (about half included) beside 2 real ones."""
    raw = config({"unit": "none"}, rounds=2)
    raw["local"]["hidden_sizes"] = [64, 64]  # a few thousand parameters: canary directions near-orthogonal
    cfg = write_toml(tmp_path / "fed.toml", raw)
    assert main(["audit", "canary", str(cfg), "--out", str(tmp_path / "out"), "--mode", "run",
                 "--canaries", "128"]) == 0
    data = json.loads((tmp_path / "out" / "canary_audit.json").read_text())
    assert data["mode"] == "run" and data["epsilon_lower_bound"] > 2.0
    report = json.loads((tmp_path / "out" / "run" / "privacy_report.json").read_text())
    assert report["canary"]["epsilon_lower_bound"] == data["epsilon_lower_bound"]


def test_real_run_dp_on_stays_below_the_ledgers_epsilon(tmp_path):
    raw = config({"unit": "client", "target_epsilon": 4.0, "clip": 1.0}, rounds=2)
    raw["local"]["hidden_sizes"] = [64, 64]
    cfg = write_toml(tmp_path / "fed.toml", raw)
    assert main(["audit", "canary", str(cfg), "--out", str(tmp_path / "out"), "--mode", "run",
                 "--canaries", "64"]) == 0
    data = json.loads((tmp_path / "out" / "canary_audit.json").read_text())
    assert data["dp"] and data["mechanism"] == "gaussian" and 0 < data["epsilon_theoretical"] <= 4.0 + 1e-9
    assert data["epsilon_lower_bound"] <= data["epsilon_theoretical"]


def test_choosing_the_best_k_after_the_fact_pays_for_it():
    """Bonferroni: with several (k+, k-) tried, each is tested at beta / (number of choices)."""
    rng = np.random.default_rng(3)
    member = np.where(rng.random(200) < 0.5, 1, -1)
    scores = member + 0.8 * rng.standard_normal(200)
    ks = [(5, 5), (10, 10), (25, 25), (50, 50)]
    best, choices = audit(scores, member, delta=1e-5, confidence=0.95, ks=ks)
    for c in choices:
        assert c.epsilon_lower_bound == pytest.approx(
            epsilon_lower_bound(200, c.guesses, c.correct, delta=1e-5, beta=0.05 / len(ks)))
    single, _ = audit(scores, member, delta=1e-5, confidence=0.95, ks=[(best.k_plus, best.k_minus)])
    assert single.epsilon_lower_bound > best.epsilon_lower_bound
