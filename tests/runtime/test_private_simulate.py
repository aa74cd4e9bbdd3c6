"""The main job end to end: secure aggregation, differential privacy, the ledger, the budget."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_fedrl.cli import main
from secure_fedrl.config import config_from_dict
from secure_fedrl.errors import ConfigError, PrivacyError
from secure_fedrl.ledger import PUBLIC_KEY_FILE, PrivacyLedger, default_key_dir
from secure_fedrl.runtime.simulate import run_simulation

REPO = Path(__file__).resolve().parents[2]


def cfg(**sections):
    raw = {
        "federation": {"rounds": 2, "seed": 3},
        "local": {"algorithm": "ppo", "steps": 128, "ppo": {"num_steps": 32, "update_epochs": 2}},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "evaluation": {"every": 100, "episodes": 1},
        "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 2, "seed": 10, "count": 5,
                   "randomize": {"length": [0.3, 0.9]}}],
    }
    for key, value in sections.items():
        raw[key] = value
    return config_from_dict(raw)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def params(run: Path, r: int) -> np.ndarray:
    return torch.load(run / "checkpoints" / f"round-{r:05d}.pt", weights_only=False)["global_params"].numpy()


def test_secure_aggregation_gives_the_plain_mean(tmp_path):
    plain = cfg()
    secure = cfg(secure_aggregation={"enabled": True, "threshold": 3})
    run_simulation(plain, tmp_path / "plain", progress=False)
    run_simulation(secure, tmp_path / "secure", progress=False)
    # Same training, only the summation differs: fixed-point rounding (~1e-6) is all that separates them.
    np.testing.assert_allclose(params(tmp_path / "secure", 1), params(tmp_path / "plain", 1), atol=1e-4)
    row = metrics(tmp_path / "secure")[0]
    assert row["sites_aggregated"] == 5 and row["bytes_per_site"] > 4 * 1000


def test_dropouts_leave_the_sum_of_survivors(tmp_path):
    c = cfg(secure_aggregation={"enabled": True, "threshold": 2, "dropout_rate": 0.4}, federation={"rounds": 3, "seed": 5})
    run_simulation(c, tmp_path / "run", progress=False)
    rows = metrics(tmp_path / "run")
    assert any(r["sites_dropped"] for r in rows)
    for r in rows:
        assert r["sites_aggregated"] + len(r["sites_dropped"]) == r["sites_sampled"]


def test_client_level_ddg_writes_a_verifiable_ledger(tmp_path):
    c = cfg(secure_aggregation={"enabled": True, "threshold": 3},
            privacy={"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 50.0},
            sampling={"fraction": 1.0})
    run = tmp_path / "run"
    run_simulation(c, run, progress=False)
    rows = metrics(run)
    assert rows[0]["epsilon"] < rows[1]["epsilon"] <= 50.0
    ledger = PrivacyLedger.open(run / "privacy_ledger.sqlite", config_hash=c.fingerprint(),
                                key_dir=default_key_dir(c.federation.name))
    entries = ledger.rows()
    ledger.close()
    assert [e.round for e in entries] == [1, 2]
    assert entries[-1].epsilon["rdp"] == pytest.approx(rows[-1]["epsilon"])
    assert entries[0].mechanism == "ddg" and entries[0].sites_survived == 5
    pinned = default_key_dir(c.federation.name) / PUBLIC_KEY_FILE  # obtained out of band
    audit = subprocess.run([sys.executable, str(REPO / "audit" / "verify_ledger.py"), str(run),
                            "--public-key-file", str(pinned)],
                           capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_budget_refuses_the_round_that_would_exceed_it(tmp_path):
    c = cfg(privacy={"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 5.0},
            federation={"rounds": 50, "seed": 1})
    summary = run_simulation(c, tmp_path / "run", progress=False)
    assert summary.stopped_reason and "budget" in summary.stopped_reason
    assert 0 < summary.rounds_done < 50 and summary.epsilon <= 5.0
    assert metrics(tmp_path / "run")[-1]["epsilon"] <= 5.0


def test_resume_keeps_every_ledger_row_counted(tmp_path):
    private = {"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 50.0}
    run = tmp_path / "run"
    run_simulation(cfg(privacy=private, federation={"rounds": 1, "seed": 1}), run, progress=False)
    saved = {f: (run / f).read_bytes() for f in ("state.pkl", "state.json")}
    run_simulation(cfg(privacy=private, federation={"rounds": 2, "seed": 1}), run, resume=True,
                   progress=False)
    # Simulate a crash after round 2's ledger row was fsynced but before its checkpoint: put back
    # this run's resumable state of round 1.
    for f, data in saved.items():
        (run / f).write_bytes(data)
    c = cfg(privacy=private, federation={"rounds": 3, "seed": 1})
    run_simulation(c, run, resume=True, progress=False)
    ledger = PrivacyLedger.open(run / "privacy_ledger.sqlite", config_hash=c.fingerprint(),
                                key_dir=default_key_dir(c.federation.name))
    entries = ledger.rows()
    ledger.close()
    # ledger ids: 1, 2 (round 2's first try, still counted), 3 (round 2 re-run), 4 (round 3)
    assert [e.round for e in entries] == [1, 2, 3, 4]
    eps = [e.epsilon["rdp"] for e in entries]
    assert eps == sorted(eps)
    assert [r["round"] for r in metrics(run)] == [1, 2, 3]
    assert metrics(run)[-1]["epsilon"] == pytest.approx(eps[-1])


def test_trajectory_level_rows_per_site(tmp_path):
    c = cfg(local={"algorithm": "reinforce", "steps": 0, "episodes": 4},
            privacy={"unit": "trajectory", "clip": 1.0, "noise_multiplier": 1.5, "target_epsilon": 30.0,
                     "sample_rate": 0.5, "noisy_steps": 2},
            secure_aggregation={"enabled": True, "threshold": 3})
    run = tmp_path / "run"
    run_simulation(c, run, progress=False)
    ledger = PrivacyLedger.open(run / "privacy_ledger.sqlite", config_hash=c.fingerprint(),
                                key_dir=default_key_dir(c.federation.name))
    entries = ledger.rows()
    ledger.close()
    assert {e.site for e in entries} == {f"s-{i}" for i in range(5)}
    assert all(e.unit == "trajectory" and e.steps == 2 for e in entries)
    assert max(e.epsilon["rdp"] for e in entries) == pytest.approx(metrics(run)[-1]["epsilon"])


def test_tampered_ledger_stops_the_run(tmp_path, capsys):
    c_text = textwrap.dedent("""
        [federation]
        rounds = 2
        [local]
        steps = 64
        [local.ppo]
        num_steps = 32
        update_epochs = 1
        [strategy]
        weighting = "uniform"
        [privacy]
        unit = "client"
        clip = 0.5
        noise_multiplier = 1.0
        target_epsilon = 50.0
        [[sites]]
        name = "a"
        env = "CartPole-v1"
        count = 2
    """)
    path = tmp_path / "f.toml"
    path.write_text(c_text)
    run = tmp_path / "run"
    assert main(["simulate", str(path), "--out", str(run), "--rounds", "2", "--no-progress"]) == 0
    db = sqlite3.connect(run / "privacy_ledger.sqlite")
    triggers = [r[0] for r in db.execute("select name from sqlite_master where type='trigger'")]
    for t in triggers:
        db.execute(f"drop trigger {t}")
    table = [r[0] for r in db.execute("select name from sqlite_master where type='table' and name != 'meta'")][0]
    cols = [r[1] for r in db.execute(f"pragma table_info({table})")]
    eps_col = next(c for c in cols if "eps" in c)
    db.execute(f"update {table} set {eps_col} = ? where rowid = 1", ('{"rdp":"0x0p+0"}',))
    db.commit()
    db.close()
    capsys.readouterr()
    assert main(["simulate", str(path), "--out", str(run), "--rounds", "3", "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ledger" in err.lower() and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"secure_aggregation": {"enabled": True}, "compression": {"method": "topk"}}, "compression.method"),
        ({"secure_aggregation": {"enabled": True}, "strategy": {"weighting": "steps"}}, "strategy.weighting"),
        ({"privacy": {"unit": "client", "mechanism": "ddg"}}, "privacy.mechanism"),
        ({"privacy": {"unit": "client"}, "sampling": {"fraction": 0.5}}, "sampling.poisson"),
        ({"privacy": {"unit": "trajectory"}}, "local.episodes"),
    ],
)
def test_privacy_config_errors(sections, key):
    with pytest.raises(ConfigError) as info:
        cfg(**sections)
    assert str(info.value).startswith(key)


def test_unreachable_budget_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "f.toml"
    path.write_text(textwrap.dedent("""
        [federation]
        rounds = 100000
        [local]
        steps = 64
        [strategy]
        weighting = "uniform"
        [privacy]
        unit = "client"
        target_epsilon = 0.0001
        delta = 1e-9
        [[sites]]
        name = "a"
        env = "CartPole-v1"
    """))
    assert main(["simulate", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_adaptive_clipping_tracks_the_update_norms(tmp_path):
    c = cfg(privacy={"unit": "client", "clip": 5.0, "noise_multiplier": 0.8, "target_epsilon": 100.0,
                     "adaptive_clipping": True, "target_quantile": 0.5, "clip_learning_rate": 0.5},
            sampling={"fraction": 0.5, "poisson": True}, federation={"rounds": 4, "seed": 2},
            sites=[{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": 40}],
            local={"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 32, "update_epochs": 1}})
    run = tmp_path / "run"
    run_simulation(c, run, progress=False)
    clips = [r["clip"] for r in metrics(run)]
    assert clips[0] == 5.0 and len(set(clips)) == len(clips)  # C moves every round
    assert clips[-1] < clips[0]  # PPO updates here are far shorter than 5: C shrinks toward their median
    ledger = PrivacyLedger.open(run / "privacy_ledger.sqlite", config_hash=c.fingerprint(),
                                key_dir=default_key_dir(c.federation.name))
    assert [e.clip for e in ledger.rows()] == clips
    ledger.close()


def test_adaptive_clipping_with_too_few_sites_is_refused(tmp_path):
    c = cfg(privacy={"unit": "client", "clip": 1.0, "noise_multiplier": 1.0, "target_epsilon": 100.0,
                     "adaptive_clipping": True})
    # 5 expected sites: the paper's count noise 5/20 cannot pay for the clipped-count query
    with pytest.raises(PrivacyError, match="count_noise_std must exceed"):
        run_simulation(c, tmp_path / "run", progress=False)


def test_resume_with_more_rounds_replays_ddg_rows_at_their_own_sigma(tmp_path):
    # sigma is calibrated over federation.rounds, so extending a run changes it; the rows already
    # in the ledger must still be priced from what they record (else the replay consistency check
    # refuses to continue). Against the server every site took part in both rounds, calibrated to
    # spend the whole budget in 2 participations: the extended run resumes and stops at once.
    private = {"unit": "client", "clip": 0.5, "target_epsilon": 20.0}
    sa = {"enabled": True, "threshold": 3}
    run = tmp_path / "run"
    run_simulation(cfg(privacy=private, secure_aggregation=sa, federation={"rounds": 2, "seed": 1}), run,
                   progress=False)
    longer = cfg(privacy=private, secure_aggregation=sa, federation={"rounds": 6, "seed": 1})
    summary = run_simulation(longer, run, resume=True, progress=False)
    rows = metrics(run)
    assert [r["round"] for r in rows] == [1, 2] and summary.rounds_done == 2
    assert "every site has spent its privacy budget against the server" in summary.stopped_reason
    assert rows[-1]["epsilon_server"] == pytest.approx(20.0, rel=1e-3)
    assert summary.epsilon_server == pytest.approx(rows[-1]["epsilon_server"])


def test_every_client_level_round_is_charged_even_with_nobody_sampled(tmp_path):
    c = cfg(privacy={"unit": "client", "clip": 0.5, "noise_multiplier": 2.0, "target_epsilon": 100.0},
            sampling={"fraction": 0.05, "poisson": True}, federation={"rounds": 6, "seed": 0})
    run = tmp_path / "run"
    run_simulation(c, run, progress=False)
    ledger = PrivacyLedger.open(run / "privacy_ledger.sqlite", config_hash=c.fingerprint(),
                                key_dir=default_key_dir(c.federation.name))
    entries = ledger.rows()
    ledger.close()
    assert len(entries) == 6
    assert any(e.sites_planned == 0 for e in entries)  # 5 sites at q = 0.05: most rounds pick nobody


def test_trajectory_spend_is_recorded_even_when_the_round_aborts(tmp_path):
    c = cfg(local={"algorithm": "reinforce", "steps": 0, "episodes": 2},
            privacy={"unit": "trajectory", "clip": 1.0, "noise_multiplier": 1.5, "target_epsilon": 50.0,
                     "sample_rate": 0.5, "noisy_steps": 1},
            secure_aggregation={"enabled": True, "threshold": 5, "dropout_rate": 0.6})
    run = tmp_path / "run"
    run_simulation(c, run, progress=False)
    rows = metrics(run)
    assert any(r["sites_aggregated"] == 0 for r in rows)  # 5 of 5 must survive: rounds abort
    ledger = PrivacyLedger.open(run / "privacy_ledger.sqlite", config_hash=c.fingerprint(),
                                key_dir=default_key_dir(c.federation.name))
    entries = ledger.rows()
    ledger.close()
    assert len(entries) == 5 * len(rows)  # every site, every round


def test_privacy_noise_is_secret_unless_asked_to_be_reproducible(tmp_path):
    private = {"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 100.0}
    for name in ("a", "b"):
        run_simulation(cfg(privacy=private, federation={"rounds": 1, "seed": 1}), tmp_path / name, progress=False)
    assert not np.array_equal(params(tmp_path / "a", 1), params(tmp_path / "b", 1))
    seeded = {**private, "reproducible_noise": True}
    for name in ("c", "d"):
        run_simulation(cfg(privacy=seeded, federation={"rounds": 1, "seed": 1}), tmp_path / name, progress=False)
    assert np.array_equal(params(tmp_path / "c", 1), params(tmp_path / "d", 1))


def test_secagg_plus_with_dropouts_is_deterministic(tmp_path):
    c = cfg(secure_aggregation={"enabled": True, "threshold": 0.6, "dropout_rate": 0.2},
            sites=[{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": 18}],
            local={"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 32, "update_epochs": 1}})
    for name in ("a", "b"):
        run_simulation(c, tmp_path / name, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "timing"} for r in rows]  # noqa: E731
    assert strip(metrics(tmp_path / "a")) == strip(metrics(tmp_path / "b"))
    assert np.array_equal(params(tmp_path / "a", 2), params(tmp_path / "b", 2))


# -- issue 7: secret sampling and the two guarantees -------------------------------------------------

def _ledger_rows(run: Path, c):
    ledger = PrivacyLedger.open(run / "privacy_ledger.sqlite", config_hash=c.fingerprint(),
                                key_dir=default_key_dir(c.federation.name))
    try:
        return ledger.rows()
    finally:
        ledger.close()


def _central(**privacy):
    return cfg(privacy={"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 1e4, **privacy},
               sampling={"fraction": 0.5, "poisson": True}, federation={"rounds": 3, "seed": 4},
               sites=[{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": 8}],
               local={"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 16, "update_epochs": 1}})


def test_sampled_sets_are_not_predictable_from_the_config(tmp_path):
    """Two runs of one config (same federation seed) draw different samples: nothing about who
    takes part is derivable from the config. With reproducible_noise they coincide, and say so."""
    samples = []
    for name in ("a", "b"):
        run_simulation(_central(), tmp_path / name, progress=False)
        samples.append([r["sampled"] for r in metrics(tmp_path / name)])
        assert all(r["sampling"] == "secret" for r in metrics(tmp_path / name))
    assert samples[0] != samples[1]  # 2^-24 to fail by chance
    rows = _ledger_rows(tmp_path / "a", _central())
    assert [list(r.participants) for r in rows] == samples[0]  # recorded, not re-derived
    repro = []
    for name in ("c", "d"):
        run_simulation(_central(reproducible_noise=True), tmp_path / name, progress=False)
        repro.append([r["sampled"] for r in metrics(tmp_path / name)])
        assert all(r["sampling"] == "reproducible" for r in metrics(tmp_path / name))
    assert repro[0] == repro[1]
    assert {r.sampling for r in _ledger_rows(tmp_path / "c", _central(reproducible_noise=True))} == {"reproducible"}


def test_central_gaussian_reports_no_guarantee_against_the_server(tmp_path, capsys):
    c = _central()
    summary = run_simulation(c, tmp_path / "run", progress=False)
    rows = metrics(tmp_path / "run")
    assert all(r["epsilon_server"] == float("inf") and r["threat_model"] == "release" for r in rows)
    assert 0 < rows[-1]["epsilon_release"] == pytest.approx(rows[-1]["epsilon"])
    ledger = _ledger_rows(tmp_path / "run", c)
    assert all(r.epsilon_server == float("inf") and r.site_epsilon_server == {} for r in ledger)
    assert "against the server inf" in summary.describe()


def test_client_level_ddg_charges_the_server_more_than_release_only_observers(tmp_path):
    # Budget 7.5 at z = 1 (4.73 per participation, 7.08 for two): each site may take part twice,
    # then refuses; 6 rounds at q = 0.5.
    c = cfg(secure_aggregation={"enabled": True, "threshold": 0.5, "neighbors": -1},
            privacy={"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 7.5},
            sampling={"fraction": 0.5, "poisson": True}, federation={"rounds": 6, "seed": 2},
            sites=[{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": 8}],
            local={"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 16, "update_epochs": 1}})
    summary = run_simulation(c, tmp_path / "run", progress=False)
    rows = metrics(tmp_path / "run")
    charged = [r for r in rows if r["participants"]]
    assert charged, "no round ran (all draws too small?)"
    last = rows[-1]
    assert last["threat_model"] == "server" and last["epsilon"] == pytest.approx(last["epsilon_server"])
    # Release-only observers never get more than the server (post-processing); with q = 0.5 the
    # first-order mixture bound can reach the worst site's server number, so ">=" not ">".
    assert last["epsilon_server"] >= last["epsilon_release"] > 0
    ledger = _ledger_rows(tmp_path / "run", c)
    assert all(r.mechanism == "ddg" and r.noise_shares >= 1 and set(r.site_epsilon_server) == set(r.participants)
               for r in ledger)
    assert ledger[-1].epsilon_server == pytest.approx(last["epsilon_server"])
    assert ledger[-1].epsilon_release == pytest.approx(last["epsilon_release"])
    # individual accounting: a site's epsilon grows only with the rounds it took part in
    counts: dict[str, int] = {}
    for r in ledger:
        for site in r.participants:
            counts[site] = counts.get(site, 0) + 1
    worst = max(counts, key=counts.get)
    assert ledger[-1].epsilon_server == pytest.approx(max(
        next(r.site_epsilon_server[s] for r in reversed(ledger) if s in r.participants) for s in counts))
    assert "against the server" in summary.describe() and summary.epsilon_server >= summary.epsilon_release
    assert counts[worst] == 2 and max(counts.values()) <= 2  # the sites' own guards stopped them
    assert any(r["sites_refused"] for r in rows) and last["epsilon_server"] <= 7.5


def test_resume_rebuilds_each_sites_account_from_the_ledger(tmp_path):
    c = cfg(secure_aggregation={"enabled": True, "threshold": 3, "neighbors": -1},
            privacy={"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 1e4},
            federation={"rounds": 2, "seed": 2})
    run = tmp_path / "run"
    run_simulation(c, run, progress=False)
    longer = cfg(secure_aggregation={"enabled": True, "threshold": 3, "neighbors": -1},
                 privacy={"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 1e4},
                 federation={"rounds": 3, "seed": 2})
    run_simulation(longer, run, resume=True, progress=False)
    ledger = _ledger_rows(run, longer)
    assert [r.round for r in ledger] == [1, 2, 3]
    # q = 1: every site in every round; round 3 continues each site's account (3 participations)
    one = ledger[0].site_epsilon_server["s-0"]
    assert ledger[2].site_epsilon_server["s-0"] > ledger[1].site_epsilon_server["s-0"] > one
    from secure_fedrl.privacy.accountants import RDPCurveStep, make_accountant
    from secure_fedrl.runtime.privacy_plan import row_cost

    cost = row_cost(ledger[0]).server
    assert isinstance(cost, RDPCurveStep)
    three = make_accountant("rdp").epsilon_after(RDPCurveStep(cost.rdp, 3), 1e-5)
    assert ledger[2].site_epsilon_server["s-0"] == pytest.approx(three, rel=1e-9)


def test_threat_model_server_with_central_noise_is_a_one_line_cli_error(tmp_path, capsys):
    path = tmp_path / "f.toml"
    path.write_text(textwrap.dedent("""
        [local]
        steps = 64
        [strategy]
        weighting = "uniform"
        [privacy]
        unit = "client"
        threat_model = "server"
        [[sites]]
        name = "a"
        env = "CartPole-v1"
    """))
    assert main(["simulate", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "privacy.threat_model" in err
