"""`secure-fedrl personalise`: fine-tune the federated policy at one site (runtime/personalise.py)."""

from __future__ import annotations

import json
import os
import re
import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_fedrl.cli import main
from secure_fedrl.config import load_config
from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.policies import get_flat
from secure_fedrl.runtime.personalise import load_global_params, personalise_site
from secure_fedrl.runtime.simulate import run_simulation

CONFIG = textwrap.dedent("""
    [federation]
    name = "personalise"
    rounds = 2
    seed = 3

    [local]
    algorithm = "ppo"
    steps = 128
    hidden_sizes = [8]

    [local.ppo]
    num_steps = 64
    update_epochs = 1
    num_minibatches = 2

    [evaluation]
    every = 100
    episodes = 1

    [[sites]]
    name = "short"
    env = "CartPole-v1"
    num_envs = 2
    seed = 1
    overrides = { length = 0.3 }

    [[sites]]
    name = "long"
    env = "CartPole-v1"
    num_envs = 2
    seed = 2
    overrides = { length = 0.9 }
""")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("personalise")
    path = root / "fed.toml"
    path.write_text(CONFIG)
    run_simulation(load_config(path), root / "run", progress=False)
    return path, root / "run"


def test_fine_tunes_from_the_federated_policy_and_keeps_it_private(run, tmp_path):
    path, run_dir = run
    config = load_config(path)
    report = personalise_site(config, "long", run_dir, tmp_path / "out", rounds=2, eval_episodes=2)
    assert report["from_round"] == 2 and report["rounds"] == 2 and report["env_steps"] >= 2 * 128
    assert report["model_ledger_head"] is None  # a run without privacy keeps no ledger
    saved = torch.load(tmp_path / "out" / "policy.pt", weights_only=True)
    global_params, _ = load_global_params(run_dir)
    import gymnasium as gym

    from secure_fedrl.runtime.site import initial_policy

    env = gym.make("CartPole-v1")
    policy = initial_policy(config, env.observation_space, env.action_space)
    policy.load_state_dict(saved["policy_state_dict"])
    tuned = get_flat(list(policy.shared_parameters(config.local.federate_critic)))
    assert tuned.size == global_params.size and not np.allclose(tuned, global_params)  # it trained
    for name in ("policy.pt", "personalise.json"):  # the site's data without noise: owner-only
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o600
    assert json.loads((tmp_path / "out" / "personalise.json").read_text())["before"] == report["before"]
    # 'before' is the federated policy's own evaluation: a run of 0 extra rounds of a second site
    # would start from the same parameters, so the start is the checkpoint's, not the initial policy
    again = personalise_site(config, "long", run_dir, tmp_path / "again", rounds=1, eval_episodes=2)
    assert again["before"] == report["before"]
    assert load_global_params(run_dir)[0].tobytes() == global_params.tobytes()  # the model is not touched


def test_before_is_the_checkpoint_not_the_initial_policy(run, tmp_path):
    path, run_dir = run
    config = load_config(path)
    first = personalise_site(config, "short", run_dir / "checkpoints" / "round-00001.pt", tmp_path / "a", rounds=1,
                             eval_episodes=2)
    last = personalise_site(config, "short", run_dir, tmp_path / "b", rounds=1, eval_episodes=2)
    assert first["from_round"] == 1 and last["from_round"] == 2
    assert first["before"] != last["before"]


def test_learning_rate_override_reaches_the_learner(run, tmp_path):
    path, run_dir = run
    report = personalise_site(load_config(path), "short", run_dir, tmp_path / "out", rounds=1, learning_rate=1e-2,
                              eval_episodes=1)
    assert report["learning_rate"] == pytest.approx(1e-2)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nothing", "no such checkpoint"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "without checkpoints"),
    (lambda d: (d / "t.pt").write_text("hello") and d / "t.pt", "not a secure-fedrl run checkpoint"),
    (lambda d: torch.save({"global_params": torch.zeros(3), "round": 1, "x": _Payload()}, d / "evil.pt") or d / "evil.pt",
     "not a secure-fedrl run checkpoint"),
    (lambda d: torch.save({"round": 1}, d / "partial.pt") or d / "partial.pt", "not a secure-fedrl run checkpoint"),
    (lambda d: torch.save({"round": 1, "global_params": {"a": 1}}, d / "dict.pt") or d / "dict.pt",
     "not a secure-fedrl run checkpoint"),
    (lambda d: torch.save({"round": 1, "global_params": torch.zeros(3), "federation": 7}, d / "f.pt") or d / "f.pt",
     "not a secure-fedrl run checkpoint"),
    (lambda d: torch.save({"round": 1, "global_params": torch.tensor([0.0, float("nan")])}, d / "nan.pt") or d / "nan.pt",
     "non-finite parameters"),
    (lambda d: torch.save({"round": 1, "global_params": torch.tensor([float("inf")])}, d / "inf.pt") or d / "inf.pt",
     "non-finite parameters"),
])
def test_bad_model_is_refused_in_one_line(tmp_path, make, message, capsys):
    with pytest.raises(ConfigError, match=message):
        load_global_params(make(tmp_path))
    assert "code ran" not in capsys.readouterr().out  # weights_only: a checkpoint cannot run code


@pytest.mark.parametrize("extra, message", [
    (["--site", "nobody"], "--site 'nobody': not a site of this config"),
    (["--site", "short", "--learning-rate", "0"], "--learning-rate: must be > 0"),
    (["--site", "short", "--learning-rate", "inf"], "--learning-rate: must be > 0 and finite"),
    (["--site", "short", "--learning-rate", "nan"], "--learning-rate: must be > 0 and finite"),
])
def test_cli_user_errors_exit_2(run, tmp_path, extra, message, capsys):
    path, run_dir = run
    rc = main(["personalise", str(path), "--model", str(run_dir), "--rounds", "1", "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_another_federations_model_and_an_existing_result(run, tmp_path, capsys):
    path, run_dir = run
    other = tmp_path / "other.toml"
    other.write_text(CONFIG.replace("hidden_sizes = [8]", "hidden_sizes = [4]"))
    assert main(["personalise", str(other), "--site", "short", "--model", str(run_dir), "--rounds", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "federated parameters" in capsys.readouterr().err
    renamed = tmp_path / "renamed.toml"  # the same shape, another federation: its name is in the checkpoint
    renamed.write_text(CONFIG.replace('name = "personalise"', 'name = "elsewhere"'))
    assert main(["personalise", str(renamed), "--site", "short", "--model", str(run_dir), "--rounds", "1",
                 "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "federation 'personalise', not of this config's 'elsewhere'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()
    args = ["personalise", str(path), "--site", "short", "--model", str(run_dir), "--rounds", "1",
            "--eval-episodes", "1", "--out", str(tmp_path / "ok")]
    assert main(args) == 0
    assert "keep it at the site" in capsys.readouterr().out
    before = (tmp_path / "ok" / "policy.pt").read_bytes()
    assert main(args) == 2  # never overwrite a site's personalised policy
    assert "already holds a personalised policy" in capsys.readouterr().err
    assert (tmp_path / "ok" / "policy.pt").read_bytes() == before


# --- keeping the best checkpoint on validation episodes (--keep-best / --require) ---------------

from secure_fedrl.runtime.personalise import (  # noqa: E402
    Requirement, Selection, ZeroAction, choose, fine_tune, fine_tune_select, interpolate, parse_selection, parse_weights)

TARGETS = Selection("time_in_range", True, (Requirement("time_below_54", 0.01), Requirement("time_below_70", 0.04)))


def test_choose_keeps_the_best_checkpoint_meeting_every_bound():
    checks = [{"time_in_range": 0.82, "time_below_54": 0.02, "time_below_70": 0.06},   # best TIR, too many lows
              {"time_in_range": 0.78, "time_below_54": 0.005, "time_below_70": 0.03},
              {"time_in_range": 0.80, "time_below_54": 0.0, "time_below_70": 0.01},
              {"time_in_range": 0.17, "time_below_54": 0.0, "time_below_70": 0.0}]     # no lows, no use
    assert choose(checks, TARGETS) == 2
    assert choose(checks, Selection("time_in_range")) == 0  # no bounds: the metric alone
    assert choose(checks, Selection("time_below_70", maximise=False)) == 3


def test_choose_without_a_feasible_checkpoint_goes_by_the_bounds_in_priority_order():
    checks = [{"time_in_range": 0.9, "time_below_54": 0.03, "time_below_70": 0.05},
              {"time_in_range": 0.5, "time_below_54": 0.02, "time_below_70": 0.09},
              {"time_in_range": 0.7, "time_below_54": 0.02, "time_below_70": 0.07}]
    assert choose(checks, TARGETS) == 2  # least over the first bound, then the second
    assert choose([{"return": 1.0}, {"return": 1.0}], Selection()) == 0  # equals: fewer local rounds


@pytest.mark.parametrize("best, require, message", [
    ("avg:return", [], "--keep-best 'avg:return'"),
    ("max:", [], "--keep-best 'max:'"),
    ("return", ["time_below_54<0.01"], "--require 'time_below_54<0.01'"),
    ("return", ["time_below_54<=low"], "--require 'time_below_54<=low'"),
    ("return", ["time_below_54<=nan"], "--require 'time_below_54<=nan'"),
    ("return", ["time_below_54<=baseline*2"], "--require 'time_below_54<=baseline*2'"),
    ("return", ["time_below_54<=baseline+"], "--require 'time_below_54<=baseline+'"),
    ("return", ["time_below_54<=baseline+inf"], "--require 'time_below_54<=baseline+inf'"),
    ("return", ["time_below_54=>0.1"], "--require 'time_below_54=>0.1'"),
])
def test_parse_selection_refuses_bad_input(best, require, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_selection(best, require)


def test_parse_selection_reads_direction_and_bounds():
    assert parse_selection("min:mean_risk", ["time_below_54 <= 0.01", "time_below_70<=4e-2"]) == Selection(
        "mean_risk", False, (Requirement("time_below_54", 0.01), Requirement("time_below_70", 0.04)))
    assert parse_selection("max:return") == parse_selection("return") == Selection()
    relative = parse_selection("time_in_range", ["time_below_54<=baseline+0.002", "time_in_range >= baseline",
                                                  "time_below_70<=baseline - 1e-3", "return>=-5"])
    assert relative.requirements == (Requirement("time_below_54", 0.002, True, True),
                                     Requirement("time_in_range", 0.0, False, True),
                                     Requirement("time_below_70", -0.001, True, True),
                                     Requirement("return", -5.0, False, False))
    assert relative.relative and not TARGETS.relative
    assert [str(r) for r in relative.requirements] == [
        "time_below_54<=baseline+0.002", "time_in_range>=baseline", "time_below_70<=baseline-0.001", "return>=-5"]


def test_choose_measures_relative_bounds_from_the_baseline():
    """A pump keeps a checkpoint only if it has no more lows than its current therapy on the same
    days and at least its time in range; otherwise the one least short of that, in priority order."""
    selection = parse_selection("time_in_range", ["time_below_54<=baseline", "time_in_range>=baseline"])
    checks = [{"time_in_range": 0.70, "time_below_54": 0.00},
              {"time_in_range": 0.85, "time_below_54": 0.02},   # best TIR, more lows than the therapy
              {"time_in_range": 0.76, "time_below_54": 0.01},
              {"time_in_range": 0.74, "time_below_54": 0.005}]
    assert choose(checks, selection, {"time_in_range": 0.72, "time_below_54": 0.01}) == 2
    assert choose(checks, selection, {"time_in_range": 0.75, "time_below_54": 0.005}) == 3  # least short of TIR
    assert choose(checks, selection, {"time_in_range": 0.60, "time_below_54": 0.03}) == 1  # all meet: best TIR
    assert choose(checks, selection, {"time_in_range": 0.90, "time_below_54": 0.0}) == 0   # only 0 has no lows
    at_least = parse_selection("min:time_below_54", ["time_in_range>=0.75"])
    assert choose(checks, at_least) == 2  # >= an absolute bound: 0.76 and 0.85 qualify, fewest lows wins
    with pytest.raises(ValueError, match="relative to a baseline"):
        choose(checks, selection)


def test_a_nan_metric_never_meets_a_bound_and_never_wins():
    """An env that failed to measure a metric (NaN) must not pass a safety bound, nor beat a
    measured checkpoint, nor make every relative bound look met through a NaN baseline."""
    nan = float("nan")
    bounded = parse_selection("time_in_range", ["time_below_54<=0.01"])
    assert choose([{"time_in_range": 0.9, "time_below_54": nan},
                   {"time_in_range": 0.7, "time_below_54": 0.0}], bounded) == 1
    assert choose([{"return": nan}, {"return": -5.0}], Selection()) == 1
    assert choose([{"return": nan}, {"return": -5.0}], Selection("return", maximise=False)) == 1
    relative = parse_selection("time_in_range", ["time_below_54<=baseline"])
    checks = [{"time_in_range": 0.9, "time_below_54": 0.3}, {"time_in_range": 0.7, "time_below_54": 0.0}]
    assert choose(checks, relative, {"time_in_range": 0.7, "time_below_54": nan}) == 0  # no bound met: by TIR
    with pytest.raises(ValueError, match="no checkpoints"):
        choose([], Selection())


def test_zero_action_is_the_programmed_therapy():
    """`--baseline zero` in the Hovorka env's therapy mode is the basal-bolus rule: action 0."""
    import gymnasium as gym

    box, discrete = ZeroAction(gym.spaces.Box(-1.0, 1.0, (2,))), ZeroAction(gym.spaces.Discrete(3))
    obs = torch.ones(5, 4)
    assert not box.discrete and box.deterministic_action(obs).shape == (5, 2)
    assert discrete.discrete and discrete.deterministic_action(obs).shape == (5,)
    assert not box.deterministic_action(obs).any() and not discrete.deterministic_action(obs).any()


def _cartpole_policy(config):
    from secure_fedrl.rl.envs import make_site_env
    from secure_fedrl.runtime.site import initial_policy

    env = make_site_env("CartPole-v1", overrides={}, num_envs=2, seed=1, site="t")
    return initial_policy(config, env.single_observation_space, env.single_action_space), env


@pytest.mark.parametrize("prefer, kept", [("first", 0), ("last", 3)])
def test_fine_tune_select_leaves_the_chosen_checkpoint_in_the_policy(run, prefer, kept):
    config = load_config(run[0])
    policy, env = _cartpole_policy(config)
    start = get_flat(list(policy.parameters())).copy()
    calls = []

    def validate(p):
        calls.append(get_flat(list(p.parameters())).copy())
        return {"return": -len(calls) if prefer == "first" else len(calls)}

    steps, kept_round, weight, checks, reference = fine_tune_select(
        policy, env, config, 3, torch.Generator().manual_seed(4), selection=Selection(), check_every=2, validate=validate)
    assert weight == 1.0 and all(c["weight"] == 1.0 for c in checks)
    assert [c["round"] for c in checks] == [0, 2, 3] and steps >= 3 * 128 and reference is None
    assert kept_round == (0 if prefer == "first" else 3)
    now = get_flat(list(policy.parameters()))
    assert np.array_equal(now, calls[0] if prefer == "first" else calls[-1])
    assert np.array_equal(calls[0], start)
    plain, env2 = _cartpole_policy(config)
    fine_tune(plain, env2, config, 3, torch.Generator().manual_seed(4))
    env.close(), env2.close()
    assert np.array_equal(calls[-1], get_flat(list(plain.parameters())))  # validation does not perturb training


def test_personalise_keep_best_reports_its_checks_on_separate_episodes(run, tmp_path):
    path, run_dir = run
    config = load_config(path)
    report = personalise_site(config, "long", run_dir, tmp_path / "out", rounds=2, eval_episodes=2,
                              selection=Selection(), check_every=1, validation_episodes=2)
    checks = report["selection"]["checks"]
    assert [c["round"] for c in checks] == [0, 1, 2]
    assert report["kept_round"] == max(checks, key=lambda c: (c["return"], -c["round"]))["round"]
    saved = torch.load(tmp_path / "out" / "policy.pt", weights_only=True)
    assert saved["kept_round"] == report["kept_round"]


def _one_round_cli(path, run_dir) -> list[str]:
    """`personalise` at site "short" for one round and one episode per check: the CLI tests' base."""
    return ["personalise", str(path), "--site", "short", "--model", str(run_dir), "--rounds", "1",
            "--eval-episodes", "1", "--validation-episodes", "1"]


def test_cli_keep_best_errors_are_one_line(run, tmp_path, capsys):
    path, run_dir = run
    base = _one_round_cli(path, run_dir)
    assert main([*base, "--out", str(tmp_path / "a"), "--require", "return<=1"]) == 2
    assert "need --keep-best" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--keep-best", "time_in_range"]) == 2
    err = capsys.readouterr().err
    assert "reports no metric 'time_in_range'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "policy.pt").exists()
    assert main([*base, "--out", str(tmp_path / "c"), "--keep-best", "return", "--check-every", "1"]) == 0
    assert "kept the round-" in capsys.readouterr().out


@pytest.mark.parametrize("baseline", ["zero", "start"])
def test_fine_tune_select_measures_the_baseline_on_the_validation_episodes(run, baseline):
    """The baseline is validated like the checkpoints; with a bound no checkpoint but the start
    meets (return above the baseline's own), the start is kept."""
    config = load_config(run[0])
    policy, env = _cartpole_policy(config)
    seen = []

    def validate(p):
        seen.append(type(p).__name__)
        return {"return": 10.0 if isinstance(p, ZeroAction) else float(len(seen))}

    selection = parse_selection("return", ["return<=baseline"])
    _, kept, _, checks, reference = fine_tune_select(policy, env, config, 2, torch.Generator().manual_seed(4),
                                                     selection=selection, check_every=1, validate=validate,
                                                     baseline=baseline)
    env.close()
    if baseline == "zero":
        assert seen.count("ZeroAction") == 1 and reference == {"return": 10.0}
        assert kept == 2  # every checkpoint under the therapy's 10: the best return, the last
    else:
        assert "ZeroAction" not in seen and reference == {"return": 1.0}
        assert kept == 0  # only the start is <= itself


def test_interpolate_is_a_straight_line_between_the_two_policies():
    origin = {"w": torch.zeros(2, 2), "b": torch.ones(2), "steps": torch.tensor(3)}
    target = {"w": torch.full((2, 2), 4.0), "b": torch.full((2,), 3.0), "steps": torch.tensor(7)}
    half = interpolate(origin, target, 0.25)
    assert torch.equal(half["w"], torch.full((2, 2), 1.0)) and torch.equal(half["b"], torch.full((2,), 1.5))
    assert half["steps"] == 7  # not a parameter: the target's
    assert all(torch.equal(interpolate(origin, target, 1.0)[k], target[k]) for k in target)
    with pytest.raises(ValueError, match="different parameters"):
        interpolate(origin, {**target, "w": torch.zeros(3)}, 0.5)


@pytest.mark.parametrize("text", ["0", "1", "0.5,0.5", "-0.1", "1.5", "a", "", "0.5,", "nan", "inf", "5e-324",
                                  "0.0009", "\u0660.5", "0x1p-1", ",".join(f"0.{i:02d}" for i in range(10, 27))])
def test_interpolate_weights_outside_0_1_are_refused(text):
    with pytest.raises(ConfigError, match="--interpolate"):
        parse_weights(text)
    assert parse_weights("0.25,0.5,0.75") == (0.25, 0.5, 0.75) and parse_weights(" 0.3, 0.001") == (0.3, 0.001)
    assert len(parse_weights(",".join(f"0.{i:02d}" for i in range(10, 26)))) == 16


@pytest.mark.parametrize("best_weight", [1.0, 0.5, 0.25])
def test_fine_tune_select_fine_tunes_from_the_best_interpolated_start(run, best_weight):
    """Each weight's start is validated at round 0; the fine-tune runs from the best of them (the
    federated policy itself wins ties), and its checkpoints carry that start's weight."""
    config = load_config(run[0])
    policy, env = _cartpole_policy(config)
    origin = {k: torch.zeros_like(v) for k, v in policy.state_dict().items()}
    target = get_flat(list(policy.parameters())).copy()
    seen = []

    def validate(p):
        flat = get_flat(list(p.parameters())).copy()
        seen.append(flat)
        if len(seen) <= 3:  # the three starts: federated, 0.5, 0.25
            w = float(np.dot(flat, target) / np.dot(target, target))
            return {"return": 1.0 if abs(w - best_weight) < 1e-6 else 0.0}
        return {"return": 0.5}  # every fine-tuned checkpoint worse than the best start, better than the rest

    tuned = fine_tune_select(policy, env, config, 2, torch.Generator().manual_seed(4), selection=Selection(),
                             check_every=1, validate=validate, origin=origin, weights=(0.5, 0.25))
    env.close()
    assert [(c["round"], c["weight"]) for c in tuned.checks] == [(0, 1.0), (0, 0.5), (0, 0.25),
                                                                  (1, best_weight), (2, best_weight)]
    assert np.allclose(seen[1], 0.5 * target) and np.allclose(seen[2], 0.25 * target)
    assert (tuned.kept_round, tuned.kept_weight) == (0, best_weight)
    assert np.allclose(get_flat(list(policy.parameters())), best_weight * target)
    # the fine-tune started from the chosen start: its first step moved away from it, not from another
    distances = [np.linalg.norm(seen[3] - w * target) for w in (1.0, 0.5, 0.25)]
    assert int(np.argmin(distances)) == (1.0, 0.5, 0.25).index(best_weight)


def test_interpolated_starts_need_the_origin(run):
    config = load_config(run[0])
    policy, env = _cartpole_policy(config)
    with pytest.raises(ValueError, match="origin"):
        fine_tune_select(policy, env, config, 1, torch.Generator().manual_seed(4), selection=Selection(),
                         check_every=1, validate=lambda p: {"return": 0.0}, weights=(0.5,))
    env.close()


def test_relative_bound_without_a_baseline_is_refused_before_training(run):
    config = load_config(run[0])
    policy, env = _cartpole_policy(config)
    trained = []
    with pytest.raises(ConfigError, match="needs --baseline"):
        fine_tune_select(policy, env, config, 1, torch.Generator().manual_seed(4),
                         selection=parse_selection("return", ["return>=baseline"]), check_every=1,
                         validate=lambda p: trained.append(1) or {"return": 0.0})
    with pytest.raises(ConfigError, match="--baseline 'rule'"):
        fine_tune_select(policy, env, config, 1, torch.Generator().manual_seed(4), selection=Selection(),
                         check_every=1, validate=lambda p: {"return": 0.0}, baseline="rule")
    env.close()
    assert not trained


def _refused(argv: list[str], capsys) -> str:
    """The CLI's error for `argv`: exit 2 and one line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_cli_baseline(run, tmp_path, capsys):
    path, run_dir = run
    base = _one_round_cli(path, run_dir)
    assert "need --keep-best" in _refused([*base, "--out", str(tmp_path / "a"), "--baseline", "zero"], capsys)
    assert "needs --baseline" in _refused([*base, "--out", str(tmp_path / "b"), "--keep-best", "return", "--require",
                                           "return>=baseline"], capsys)
    assert main([*base, "--out", str(tmp_path / "c"), "--keep-best", "return", "--require",
                 "return>=baseline-1000", "--baseline", "zero", "--check-every", "1"]) == 0
    report = json.loads((tmp_path / "c" / "personalise.json").read_text())
    assert report["selection"]["baseline"]["name"] == "zero" and "return" in report["selection"]["baseline"]
    assert report["selection"]["requirements"] == ["return>=baseline-1000"]


def test_cli_interpolate(run, tmp_path, capsys):
    path, run_dir = run
    base = _one_round_cli(path, run_dir)
    assert "need --keep-best" in _refused([*base, "--out", str(tmp_path / "a"), "--interpolate", "0.5"], capsys)
    assert "--interpolate '0.5,2'" in _refused([*base, "--out", str(tmp_path / "b"), "--keep-best", "return",
                                                "--interpolate", "0.5,2"], capsys)
    assert not (tmp_path / "b").exists()
    assert main([*base, "--out", str(tmp_path / "c"), "--keep-best", "return", "--interpolate", "0.25,0.5",
                 "--check-every", "1"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "c" / "personalise.json").read_text())
    assert report["selection"]["interpolate"] == [0.25, 0.5]
    assert [(c["round"], c["weight"]) for c in report["selection"]["checks"]][:3] == [(0, 1.0), (0, 0.25), (0, 0.5)]
    assert (report["kept_round"], report["kept_weight"]) in {(c["round"], c["weight"]) for c in report["selection"]["checks"]}
    assert (f"of the start with {report['kept_weight']:g}" in out) == (report["kept_weight"] != 1.0)
    assert torch.load(tmp_path / "c" / "policy.pt", weights_only=True)["kept_weight"] == report["kept_weight"]


def test_latest_checkpoint_of_a_run_directory_is_by_round_and_a_file(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    for r in (99_999, 100_000):
        torch.save({"round": r, "global_params": torch.full((2,), float(r))}, ckpt / f"round-{r:05d}.pt")
    (ckpt / "round-200000.pt").mkdir()  # not a file: never read
    assert load_global_params(tmp_path / "run")[1] == 100_000


def test_out_that_is_a_file_is_refused_before_training(run, tmp_path, capsys):
    path, run_dir = run
    (tmp_path / "o").write_text("not a directory")
    assert main(["personalise", str(path), "--site", "short", "--model", str(run_dir), "--rounds", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_a_diverged_fine_tune_writes_nothing(run, tmp_path, monkeypatch, capsys):
    import secure_fedrl.runtime.personalise as personalise

    def diverge(policy, *args, **kwargs):
        with torch.no_grad():
            next(policy.parameters()).fill_(float("nan"))
        return 0

    monkeypatch.setattr(personalise, "fine_tune", diverge)
    path, run_dir = run
    assert main(["personalise", str(path), "--site", "short", "--model", str(run_dir), "--rounds", "1",
                 "--eval-episodes", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "policy.pt").exists()


def test_the_report_names_the_run_the_model_came_from_by_its_ledger_head(tmp_path):
    """Two runs of one federation are told apart: the checkpoint records the ledger head."""
    path = tmp_path / "private.toml"
    path.write_text(CONFIG.replace("rounds = 2", "rounds = 1") + textwrap.dedent("""
        [privacy]
        unit = "client"
        clip = 0.5
        noise_multiplier = 1.0
        target_epsilon = 50.0

        [strategy]
        name = "fedavg"
        weighting = "uniform"
    """))
    run_simulation(load_config(path), tmp_path / "run", progress=False)
    report = personalise_site(load_config(path), "short", tmp_path / "run", tmp_path / "out", rounds=1, eval_episodes=1)
    head = json.loads((tmp_path / "run" / "state.json").read_text())["ledger_head"]
    assert head is not None and report["model_ledger_head"] == head


def _out_cases(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)  # not sticky: anyone may rename open/out away and put their own
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(private)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    return {"chmod 700": shared, "may be written by other users": open_parent / "out",
            "symbolic link": link, "symbolic link ": dangling}


@pytest.mark.parametrize("case", ["chmod 700", "may be written by other users", "symbolic link", "symbolic link "])
def test_an_out_directory_others_may_replace_is_refused_before_training(run, tmp_path, capsys, monkeypatch, case):
    """Whoever may write the directory, or its parent, or re-point a link to it, may swap the
    policy the pump will run, whatever the files' modes."""
    import secure_fedrl.runtime.personalise as personalise

    trained = []
    monkeypatch.setattr(personalise, "fine_tune", lambda *a, **k: trained.append(1) or 0)
    path, run_dir = run
    out = _out_cases(tmp_path)[case]
    err = _refused([*_one_round_cli(path, run_dir), "--out", str(out)], capsys)
    assert "--out" in err and case.strip() in err
    assert not trained
    assert not os.path.lexists(tmp_path / "private" / "policy.pt") and not (tmp_path / "shared" / "policy.pt").exists()


def test_an_out_directory_opened_to_others_during_the_fine_tune_is_refused(run, tmp_path):
    import secure_fedrl.runtime.personalise as personalise

    path, run_dir = run
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    real = personalise.fine_tune

    def opening(*args, **kwargs):
        out.chmod(0o777)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(personalise, "fine_tune", opening)
        with pytest.raises(ConfigError, match="chmod 700"):
            personalise_site(load_config(path), "short", run_dir, out, rounds=1, eval_episodes=1)
    assert list(out.iterdir()) == []


def test_a_dangling_policy_link_counts_as_a_policy(run, tmp_path):
    path, run_dir = run
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    (out / "policy.pt").symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(ConfigError, match="already holds a personalised policy"):
        personalise_site(load_config(path), "short", run_dir, out, rounds=1, eval_episodes=1)
    assert not (tmp_path / "elsewhere.pt").exists()


def test_a_policy_written_meanwhile_by_another_run_is_never_replaced(run, tmp_path, monkeypatch):
    """Two runs sharing one --out both pass the early check; the second to finish must not replace
    the first's policy (an exclusive write, not a second look)."""
    import secure_fedrl.runtime.personalise as personalise

    path, run_dir = run
    out = tmp_path / "out"
    real = personalise.fine_tune

    def racing(*args, **kwargs):
        out.mkdir(mode=0o700, exist_ok=True)
        (out / "policy.pt").write_bytes(b"the other run's policy")
        return real(*args, **kwargs)

    monkeypatch.setattr(personalise, "fine_tune", racing)
    with pytest.raises(ConfigError, match="another run wrote a personalised policy there meanwhile"):
        personalise_site(load_config(path), "short", run_dir, out, rounds=1, eval_episodes=1)
    assert (out / "policy.pt").read_bytes() == b"the other run's policy"
    assert sorted(p.name for p in out.iterdir()) == ["policy.pt"]  # no temporary file, no report
