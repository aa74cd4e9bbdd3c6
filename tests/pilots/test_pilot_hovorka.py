"""Healthcare pilot env: the Hovorka 2004 model behaves like a T1D patient on a pump."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from secure_fedrl.rl.pilots import HOVORKA_ID
from secure_fedrl.rl.pilots.hovorka import (
    DIA_MIN,
    MAX_BASAL,
    MAX_BOLUS,
    STEP_MIN,
    CGMNoise,
    HovorkaEnv,
    basal_need,
    magni_risk,
    nominal_patient,
    sample_patient,
    steady_state,
    therapy_settings,
)


def quiet_env(**kw) -> HovorkaEnv:
    env = HovorkaEnv(**kw)
    env.cgm_noise = 0.0
    env.carb_error = 0.0
    return env


def rate_action(env: HovorkaEnv, basal_u_h: float, bolus_u: float = 0.0) -> np.ndarray:
    """action_mode 1: the action that delivers exactly this basal rate and bolus."""
    return np.array([2 * basal_u_h / MAX_BASAL - 1, 2 * bolus_u / MAX_BOLUS - 1], dtype=np.float32)


@pytest.mark.parametrize("kw", [{}, {"patient_seed": 3.0}, {"patient_seed": 11.0, "action_mode": 1.0}])
def test_check_env(kw):
    check_env(HovorkaEnv(**kw), skip_render_check=True)


def test_registered_id_makes_the_env():
    env = gym.make(HOVORKA_ID)
    assert isinstance(env.unwrapped, HovorkaEnv)
    env.close()


def test_basal_need_holds_fasting_glucose_at_target():
    env = quiet_env()
    env.reset(seed=0)
    env.meals = {}
    env.state = steady_state(env.patient, env.therapy["basal"], 110.0)
    for _ in range(6 * 12):  # 6 h at the programmed basal, no meal
        env.step(np.zeros(2))
    assert env.glucose == pytest.approx(110.0, abs=0.5)


def test_no_insulin_glucose_rises_and_a_bolus_makes_it_fall():
    up = quiet_env(action_mode=1.0)
    up.reset(seed=1)
    up.meals = {}
    g0 = up.glucose
    for _ in range(48):  # 4 h without insulin
        up.step(rate_action(up, 0.0))
    assert up.glucose > g0 + 40

    down = quiet_env(action_mode=1.0)
    down.reset(seed=1)
    down.meals = {}
    basal = down.therapy["basal"]
    down.step(rate_action(down, basal, 2.0))
    for _ in range(24):  # 2 h after a 2 U correction bolus
        down.step(rate_action(down, basal))
    assert down.glucose < g0 - 40


def test_a_meal_without_bolus_peaks_within_two_hours():
    env = quiet_env()
    env.reset(seed=0)
    env.meals = {0: 50.0}
    g0 = env.glucose
    trace = []
    for _ in range(48):
        env.step(np.array([0.0, -2.0]))  # programmed basal, bolus x 0 (a1 is clipped to -1 -> x0.5)
        env.meals = {}
        trace.append(env.glucose)
    peak = int(np.argmax(trace))
    assert 40 < max(trace) - g0 < 250
    assert 6 <= peak <= 24  # 30-120 min after the meal


def test_day_with_meals_stays_physiological_under_basal_bolus():
    for seed in range(6):
        env = HovorkaEnv(patient_seed=float(seed))
        env.reset(seed=seed)
        done = False
        while not done:
            _, r, term, trunc, info = env.step(np.zeros(2, dtype=np.float32))
            done = term or trunc
            assert 20.0 < info["glucose"] < 600.0
            assert 40.0 <= info["cgm"] <= 400.0
            assert 0.0 <= env.state[2] < 300.0  # plasma insulin mU/L
            assert all(math.isfinite(x) and x >= 0 for x in env.state)
        m = info["episode_metrics"]
        assert m["time_in_range"] + m["time_below_70"] + m["time_above_180"] == pytest.approx(1.0)
        assert 0.0 <= m["time_below_54"] <= m["time_below_70"]


def test_therapy_rules_and_population():
    s = therapy_settings(nominal_patient())
    assert s["basal"] == pytest.approx(0.5 * s["tdi"] / 24)
    assert s["cr"] == pytest.approx(500 / s["tdi"]) and s["cf"] == pytest.approx(1800 / s["tdi"])
    settings = [therapy_settings(sample_patient(seed)) for seed in range(40)]
    assert all(0.2 <= t["basal"] <= 2.5 and 3.0 <= t["cr"] <= 30.0 for t in settings)
    assert np.std([t["tdi"] for t in settings]) > 3.0  # the population is heterogeneous
    assert sample_patient(5) == sample_patient(5) and sample_patient(5) != sample_patient(6)
    with pytest.raises(ValueError):
        p = nominal_patient()
        basal_need(dataclasses.replace(p, f01=2 * p.egp0))  # uses more than it makes: no insulin needed


def test_magni_risk():
    zero = math.exp(3.7932 ** (1 / 0.8353))  # ~139 mg/dL
    assert magni_risk(zero) < 1e-9 and 138 < zero < 140
    assert magni_risk(50) > magni_risk(70) > magni_risk(90) > 0
    assert magni_risk(350) > magni_risk(250) > magni_risk(180) > 0
    g = 200.0
    assert magni_risk(g) == pytest.approx(10 * (3.35506 * (math.log(g) ** 0.8353 - 3.7932)) ** 2)
    assert magni_risk(5.0) == 100.0


def test_cgm_noise_is_autocorrelated_johnson_su():
    noise = CGMNoise(np.random.default_rng(0))
    eps = np.array([noise() for _ in range(20000)])
    lag1 = np.corrcoef(eps[:-1], eps[1:])[0, 1]
    assert 0.5 < lag1 < 0.85
    assert 5.0 < eps.std() < 30.0
    again = CGMNoise(np.random.default_rng(0))
    assert [again() for _ in range(5)] == list(eps[:5])


def test_insulin_on_board_and_pump_bounds():
    env = quiet_env(action_mode=1.0)
    env.reset(seed=0)
    env.meals = {}
    _, _, _, _, info = env.step(np.ones(2, dtype=np.float32))
    assert info["insulin"] == pytest.approx(MAX_BASAL * STEP_MIN / 60 + MAX_BOLUS)
    env = quiet_env(action_mode=1.0)
    env.reset(seed=0)
    env.meals = {}
    env.step(rate_action(env, 0.0, 5.0))
    assert env.insulin_on_board() == pytest.approx(5.0 * (1 - STEP_MIN / DIA_MIN))
    for _ in range(int(DIA_MIN // STEP_MIN)):
        env.step(rate_action(env, 0.0))
    assert env.insulin_on_board() == pytest.approx(0.0, abs=1e-9)


def test_zero_action_is_the_basal_bolus_rule():
    env = quiet_env()
    env.reset(seed=2)
    meal_step = min(env.meals)
    for _ in range(meal_step):
        _, _, _, _, info = env.step(np.zeros(2))
        assert info["insulin"] == pytest.approx(env.therapy["basal"] * STEP_MIN / 60)
    expected = env.standard_bolus(env.meals[meal_step], env.cgm_hist[-1], env.insulin_on_board())
    _, _, _, _, info = env.step(np.zeros(2))
    assert expected > 0.5
    assert info["insulin"] == pytest.approx(env.therapy["basal"] * STEP_MIN / 60 + expected)


def test_severe_hypo_terminates_with_a_large_penalty():
    env = quiet_env(action_mode=1.0)
    env.reset(seed=0)
    env.meals = {}
    for _ in range(200):
        _, reward, term, trunc, info = env.step(rate_action(env, MAX_BASAL, MAX_BOLUS))
        if term:
            break
    assert term and not trunc
    assert info["glucose"] < 40.0
    assert reward <= -env.termination_penalty


def test_seeded_determinism():
    def run(seed: int, patient: float) -> np.ndarray:
        env = HovorkaEnv(patient_seed=patient)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for k in range(100):
            obs, *_ = env.step(np.full(2, math.sin(k), dtype=np.float32))
            out.append(obs)
        return np.array(out)

    assert np.array_equal(run(4, 7.0), run(4, 7.0))
    assert not np.array_equal(run(4, 7.0), run(5, 7.0))  # other meals and sensor noise
    assert not np.array_equal(run(4, 7.0), run(4, 8.0))  # another patient


def test_reward_scale_multiplies_every_reward_and_nothing_else():
    def run(scale: float) -> tuple[list[float], list[np.ndarray]]:
        env = HovorkaEnv(patient_seed=3.0)
        env.reward_scale = scale
        env.reset(seed=1)
        rewards, obs = [], []
        for k in range(300):  # a day: meals, highs, and the -1 actions below force hypos
            o, r, term, trunc, _ = env.step(np.array([1.0 if k % 50 < 25 else -1.0, 1.0], dtype=np.float32))
            rewards.append(r)
            obs.append(o)
            if term or trunc:
                break
        return rewards, obs

    plain, plain_obs = run(1.0)
    scaled, scaled_obs = run(0.01)
    assert min(plain) < -1.0  # the hypoglycaemia penalty was hit
    assert np.allclose(scaled, np.array(plain) * 0.01, rtol=1e-12, atol=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain_obs, scaled_obs))


def test_tir_bonus_is_added_exactly_at_steps_in_range():
    def run(bonus: float) -> tuple[list[float], list[float]]:
        env = HovorkaEnv(patient_seed=3.0)
        env.tir_bonus = bonus
        env.reset(seed=1)
        rewards, glucose = [], []
        for k in range(300):  # highs, lows and in-range steps (as in the reward-scale test)
            _, r, term, trunc, info = env.step(np.array([1.0 if k % 50 < 25 else -1.0, 1.0], dtype=np.float32))
            rewards.append(r)
            glucose.append(info["glucose"])
            if term or trunc:
                break
        return rewards, glucose

    plain, g = run(0.0)
    bonus, g2 = run(0.5)
    assert g == g2  # the bonus changes the reward only
    g = np.array(g)
    in_range = (g >= 70.0) & (g <= 180.0)
    assert in_range.any() and (~in_range).any()
    assert np.allclose(np.array(bonus) - np.array(plain), 0.5 * in_range, rtol=0.0, atol=1e-12)


def test_patient_override_redraws_the_patient():
    env = HovorkaEnv()
    env.reset(seed=0)
    nominal = env.patient
    env.patient_seed = 12.0  # what a site's override does
    env.reset(seed=0)
    assert env.patient == sample_patient(12) != nominal


def test_therapy_action_bounds():
    env = quiet_env()
    env.reset(seed=0)
    env.meals = {}
    basal = env.therapy["basal"] * STEP_MIN / 60
    _, _, _, _, info = env.step(np.array([-1.0, 0.0], dtype=np.float32))
    assert info["insulin"] == 0.0  # suspended
    _, _, _, _, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert info["insulin"] == pytest.approx(basal * (1 + env.correction_basals))
    _, _, _, _, info = env.step(np.array([0.5, 0.0], dtype=np.float32))
    assert info["insulin"] == pytest.approx(basal * (1 + 0.5 * env.correction_basals))
