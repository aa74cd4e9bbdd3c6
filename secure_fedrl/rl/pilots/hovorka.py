"""Type 1 diabetes insulin dosing: the Hovorka glucose-insulin model as a gymnasium env.

One env instance is one patient's insulin pump with a CGM. Every site of the healthcare pilot
is one patient: its own physiological parameters (a heterogeneous MDP), drawn from the
published inter-patient distributions by its `patient_seed`.

Model (Hovorka et al., "Nonlinear model predictive control of glucose concentration in subjects
with type 1 diabetes", Physiol. Meas. 25:905-920, 2004, section 2), time in minutes:

  insulin absorption   dS1 = u - S1/tmaxI,  dS2 = (S1 - S2)/tmaxI,  dI = S2/(tmaxI VI) - ke I
  insulin action       dx1 = -ka1 x1 + ka1 SIT I,  dx2 = -ka2 x2 + ka2 SID I,  dx3 = -ka3 x3 + ka3 SIE I
  glucose              dQ1 = -(F01c/(VG G) + x1) Q1 + k12 Q2 - FR + UG + EGP0 max(0, 1 - x3)
                       dQ2 = x1 Q1 - (k12 + x2) Q2,   G = Q1 / VG
  F01c = F01 min(1, G/4.5)   FR = 0.003 (G - 9) VG if G >= 9 else 0
  gut (two compartments) dD1 = AG D - D1/tmaxG,  dD2 = (D1 - D2)/tmaxG,  UG = D2/tmaxG
  (a meal of m grams is an impulse AG * m/180.16e-3 mmol into D1)

Nominal parameters, Hovorka et al. 2004, Table 1 (values there from Hovorka et al. 2002,
Am. J. Physiol. Endocrinol. Metab. 282:E992-E1007):
  k12 0.066 /min; ka1 0.006, ka2 0.06, ka3 0.03 /min; SIT 51.2e-4 /min per mU/L,
  SID 8.2e-4 /min per mU/L, SIE 520e-4 per mU/L; ke 0.138 /min; VI 0.12 L/kg; VG 0.16 L/kg;
  F01 0.0097 mmol/kg/min; EGP0 0.0161 mmol/kg/min; tmaxI 55 min; AG 0.8; tmaxG 40 min.

Inter-patient variability (`sample_patient`): the virtual-population distributions of
Wilinska et al., "Simulation environment to evaluate closed-loop insulin delivery systems in
type 1 diabetes", J. Diabetes Sci. Technol. 4(1):132-144, 2010 (its parameter table), and the
population SDs of Hovorka et al. 2002 (its results table) for the insulin sensitivities:
  SIT, SID, SIE   log-normal with the nominal means and SDs 32.09e-4, 7.84e-4, 306.2e-4
                  (Hovorka 2002)
  EGP0 ~ N(0.0161, 0.0039), F01 ~ N(0.0097, 0.0022) mmol/kg/min   (Hovorka 2002 / Wilinska 2010)
  k12 ~ N(0.066, 0.0335) /min;  ka1, ka2, ka3 log-normal, CV 50 %   (Wilinska 2010 uses CV ~50 %)
  exp(VG) ~ N(1.16, 0.23) (VG in L/kg);  VI ~ N(0.12, 0.012) L/kg;  ke ~ N(0.14, 0.035) /min;
  1/tmaxI ~ N(0.018, 0.0045) /min;  AG ~ U(0.7, 1.2) capped at 1;  1/tmaxG: ln ~ N(-3.689, 0.25)
                                                                     (Wilinska 2010)
  body weight ~ U(50, 100) kg (assumption: the adult range; the papers report mean ~70 kg).
The nominal values are Hovorka 2004's. The SDs, distribution shapes and table locations above
were transcribed by the authors of this module WITHOUT the papers at hand (the ka CVs of 50 % in
particular are an approximation): `tests/pilots` checks the consequences (plausible basal needs
and carb ratios, a heterogeneous population), not the digits. Re-check them against the papers
before any clinical claim. Draws are rejected and redrawn (a plausibility filter of ours)
unless the patient's fasting basal need is 0.2-2.5 U/h and the carb ratio 3-30 g/U. No UVA/Padova (simglucose) parameter is used anywhere.

Interstitial glucose: dC = (G - C)/tau_ig with tau_ig = 10 min (assumption within the 5-15 min
blood-to-interstitium lag reported by Rebrin et al., Am. J. Physiol. 277:E561, 1999).

CGM sensor error (`CGMNoise`): Breton & Kovatchev, "Analysis, modeling, and simulation of the
accuracy of continuous glucose sensors", J. Diabetes Sci. Technol. 2(5):853-862, 2008: AR(1)
e_n = 0.7 (e_{n-1} + v_n), v_n ~ N(0, 1), passed through a Johnson S_U transform
eps_n = xi + lambda sinh((e_n - gamma)/delta) with xi = -5.471, lambda = 15.9574, delta = 1.6898,
gamma = -0.5444 (mg/dL); readings clipped to the sensor range 40-400 mg/dL.

Reward: minus the Magni risk index, Magni et al., "Model predictive control of type 1 diabetes:
an in silico trial", J. Diabetes Sci. Technol. 1(6):804-812, 2007:
  risk(G) = 10 (c0 (ln(G)^c1 - c2))^2, c0 = 3.35506, c1 = 0.8353, c2 = 3.7932, G in mg/dL
  (zero at ~139 mg/dL, 22 at 70, 16 at 250), scaled by 1/100, minus `hypo_penalty` per step below 70 mg/dL (three times that below 54), and
minus `termination_penalty` when the episode ends on severe hypo- (< 40 mg/dL) or
hyperglycaemia (> 500 mg/dL); plus `tir_bonus` (default 0) per step in 70-180 mg/dL.

Therapy (`therapy_settings`): the standard basal-bolus rules (Walsh & Roberts, "Pumping
Insulin", 5th ed., Torrey Pines Press, 2012): basal = 50 % of total daily insulin (TDI),
carb ratio CR = 500/TDI g/U, correction factor CF = 1800/TDI mg/dL per U. TDI is that of a
patient whose basal rate is titrated to hold fasting glucose at 110 mg/dL (basal need from the
model's steady state, so TDI = 2 x 24 x basal need).

Action (Box [-1, 1]^2), `action_mode`:
  0 (default, "therapy"): a0 < 0 lowers the programmed basal (x (1 + a0), down to a suspension),
    a0 > 0 adds automatic correction insulin (x (1 + 2 a0), up to 3x basal: `correction_basals`), and a1 scales the
    meal and correction bolus of the standard rule (x (1 + a1/2), 0.5-1.5x); a = 0 IS the
    basal-bolus rule.
  1 ("rate"): a0 -> basal rate in [0, max_basal_rate] U/h, a1 -> bolus in [0, max_bolus] U now.
Either way the delivered insulin is clipped to the pump's bounds (basal <= 5 U/h, bolus <= 25 U).
Observation (16): last 12 CGM readings (1 h, scaled (g - 140)/70), insulin on board (pump-style,
linear decay over a 4 h action duration, Walsh & Roberts; in units of TDI/10), the announced
meal's standard bolus (same units), sin and cos of the time of day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from scipy.optimize import brentq

__all__ = [
    "CGMNoise",
    "HovorkaEnv",
    "Patient",
    "basal_need",
    "magni_risk",
    "nominal_patient",
    "sample_patient",
    "therapy_settings",
]

MG_PER_MMOL = 18.016  # glucose: 1 mmol/L = 18.016 mg/dL
MMOL_PER_G = 1000.0 / 180.16  # glucose 180.16 g/mol
STEP_MIN = 5  # control / CGM period
SUBSTEPS = 5  # RK4 steps of 1 min per control step
STEPS_PER_DAY = 24 * 60 // STEP_MIN
MAX_BASAL = 5.0  # U/h, pump bound
MAX_BOLUS = 25.0  # U, pump bound
TARGET_MGDL = 110.0  # fasting target the basal is titrated to
CORRECTION_TARGET = 120.0
DIA_MIN = 240.0  # insulin action duration for insulin on board
HISTORY = 12


@dataclass(frozen=True)
class Patient:
    """One virtual patient's Hovorka 2004 parameters (per-kg values already times body weight)."""

    bw: float  # kg
    k12: float
    ka1: float
    ka2: float
    ka3: float
    sit: float
    sid: float
    sie: float
    ke: float
    vi: float  # L
    vg: float  # L
    f01: float  # mmol/min
    egp0: float  # mmol/min
    tmax_i: float
    ag: float
    tmax_g: float


def nominal_patient(bw: float = 70.0) -> Patient:
    """Hovorka et al. 2004, Table 1."""
    return Patient(bw=bw, k12=0.066, ka1=0.006, ka2=0.06, ka3=0.03, sit=51.2e-4, sid=8.2e-4,
                   sie=520e-4, ke=0.138, vi=0.12 * bw, vg=0.16 * bw, f01=0.0097 * bw, egp0=0.0161 * bw,
                   tmax_i=55.0, ag=0.8, tmax_g=40.0)


def _lognormal(rng: np.random.Generator, mean: float, sd: float) -> float:
    s2 = math.log(1.0 + (sd / mean) ** 2)
    return float(rng.lognormal(math.log(mean) - s2 / 2.0, math.sqrt(s2)))


def _positive_normal(rng: np.random.Generator, mean: float, sd: float, floor: float) -> float:
    for _ in range(100):
        x = float(rng.normal(mean, sd))
        if x >= floor:
            return x
    return max(mean, floor)


def _draw(rng: np.random.Generator) -> Patient:
    bw = float(rng.uniform(50.0, 100.0))
    vg = math.log(_positive_normal(rng, 1.16, 0.23, 1.06))  # Wilinska 2010: exp(VG) ~ N(1.16, 0.23)
    return Patient(
        bw=bw,
        k12=_positive_normal(rng, 0.066, 0.0335, 0.01),
        ka1=_lognormal(rng, 0.006, 0.003),
        ka2=_lognormal(rng, 0.06, 0.03),
        ka3=_lognormal(rng, 0.03, 0.015),
        sit=_lognormal(rng, 51.2e-4, 32.09e-4),
        sid=_lognormal(rng, 8.2e-4, 7.84e-4),
        sie=_lognormal(rng, 520e-4, 306.2e-4),
        ke=_positive_normal(rng, 0.14, 0.035, 0.05),
        vi=_positive_normal(rng, 0.12, 0.012, 0.06) * bw,
        vg=vg * bw,
        f01=_positive_normal(rng, 0.0097, 0.0022, 0.003) * bw,
        egp0=_positive_normal(rng, 0.0161, 0.0039, 0.006) * bw,
        tmax_i=1.0 / _positive_normal(rng, 0.018, 0.0045, 0.008),
        ag=min(1.0, float(rng.uniform(0.7, 1.2))),
        tmax_g=1.0 / float(np.exp(rng.normal(-3.689, 0.25))),
    )


def basal_need(p: Patient, glucose_mgdl: float = TARGET_MGDL) -> float:
    """Insulin infusion (U/h) that holds fasting plasma glucose at ``glucose_mgdl`` (steady state).

    At steady state I = u/(ke VI), x_k = S_k I, Q2 = x1 Q1/(k12 + x2); dQ1 = 0 is then one
    equation in I, decreasing in I, solved by bisection. Raises ValueError if no infusion works.
    """
    g = glucose_mgdl / MG_PER_MMOL
    q1 = g * p.vg
    f01c = p.f01 * min(1.0, g / 4.5)
    fr = 0.003 * (g - 9.0) * p.vg if g >= 9.0 else 0.0

    def net(i: float) -> float:
        x1, x2, x3 = p.sit * i, p.sid * i, p.sie * i
        return -f01c - x1 * q1 + p.k12 * x1 * q1 / (p.k12 + x2) - fr + p.egp0 * max(0.0, 1.0 - x3)

    hi = 1.0 / p.sie
    if net(0.0) <= 0.0 or net(hi) >= 0.0:
        raise ValueError("no basal infusion holds this patient at the target")
    i_ss = brentq(net, 0.0, hi, xtol=1e-10)
    return i_ss * p.ke * p.vi * 60.0 / 1000.0  # mU/min -> U/h


def therapy_settings(p: Patient) -> dict[str, float]:
    """Standard pump settings (Walsh & Roberts 2012): TDI, basal (U/h), CR (g/U), CF (mg/dL/U)."""
    basal = basal_need(p)
    tdi = 2.0 * 24.0 * basal  # basal is 50 % of TDI
    return {"tdi": tdi, "basal": 0.5 * tdi / 24.0, "cr": 500.0 / tdi, "cf": 1800.0 / tdi}


def sample_patient(seed: int) -> Patient:
    """A virtual patient drawn from the published distributions (rejection as Wilinska 2010)."""
    rng = np.random.default_rng([int(seed), 0x480F])
    for _ in range(1000):
        p = _draw(rng)
        try:
            s = therapy_settings(p)
        except ValueError:
            continue
        if 0.2 <= s["basal"] <= 2.5 and 3.0 <= s["cr"] <= 30.0:
            return p
    raise RuntimeError(f"could not draw a plausible patient from seed {seed}")  # pragma: no cover


def magni_risk(g_mgdl: float | np.ndarray) -> float | np.ndarray:
    """Magni et al. 2007 risk index of glucose in mg/dL (0 at ~139 mg/dL; capped at 100)."""
    g = np.maximum(np.asarray(g_mgdl, dtype=np.float64), 1.0)
    r = np.minimum(10.0 * (3.35506 * (np.log(g) ** 0.8353 - 3.7932)) ** 2, 100.0)
    return float(r) if np.ndim(r) == 0 else r


class CGMNoise:
    """Breton & Kovatchev 2008 sensor error: Johnson S_U-transformed AR(1) noise, mg/dL."""

    PACF, XI, LAMBDA, DELTA, GAMMA = 0.7, -5.471, 15.9574, 1.6898, -0.5444

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.e = float(rng.standard_normal())

    def __call__(self) -> float:
        self.e = self.PACF * (self.e + float(self.rng.standard_normal()))
        return self.XI + self.LAMBDA * math.sinh((self.e - self.GAMMA) / self.DELTA)


def _rhs(p: Patient, s: tuple[float, ...], u: float, tau_ig: float) -> tuple[float, ...]:
    s1, s2, i, x1, x2, x3, q1, q2, d1, d2, c = s
    g = q1 / p.vg
    f01c = p.f01 if g >= 4.5 else p.f01 * g / 4.5
    fr = 0.003 * (g - 9.0) * p.vg if g >= 9.0 else 0.0
    ug = d2 / p.tmax_g
    egp = p.egp0 * (1.0 - x3) if x3 < 1.0 else 0.0
    return (
        u - s1 / p.tmax_i,
        (s1 - s2) / p.tmax_i,
        s2 / (p.tmax_i * p.vi) - p.ke * i,
        p.ka1 * (p.sit * i - x1),
        p.ka2 * (p.sid * i - x2),
        p.ka3 * (p.sie * i - x3),
        -(f01c / (p.vg * g) if g > 0 else 0.0) * q1 - x1 * q1 + p.k12 * q2 - fr + ug + egp,
        x1 * q1 - (p.k12 + x2) * q2,
        -d1 / p.tmax_g,
        (d1 - d2) / p.tmax_g,
        (g - c) / tau_ig,
    )


def _rk4(p: Patient, s: tuple[float, ...], u: float, h: float, n: int, tau_ig: float) -> tuple[float, ...]:
    for _ in range(n):
        k1 = _rhs(p, s, u, tau_ig)
        k2 = _rhs(p, tuple(a + 0.5 * h * b for a, b in zip(s, k1)), u, tau_ig)
        k3 = _rhs(p, tuple(a + 0.5 * h * b for a, b in zip(s, k2)), u, tau_ig)
        k4 = _rhs(p, tuple(a + h * b for a, b in zip(s, k3)), u, tau_ig)
        s = tuple(max(0.0, a + h / 6.0 * (b1 + 2 * b2 + 2 * b3 + b4))
                  for a, b1, b2, b3, b4 in zip(s, k1, k2, k3, k4))
    return s


def steady_state(p: Patient, basal_u_per_h: float, glucose_mgdl: float) -> tuple[float, ...]:
    """State at constant basal infusion with glucose ``glucose_mgdl`` (Q2 and insulin at equilibrium)."""
    u = basal_u_per_h * 1000.0 / 60.0
    s1 = s2 = u * p.tmax_i
    i = u / (p.ke * p.vi)
    x1, x2, x3 = p.sit * i, p.sid * i, p.sie * i
    g = glucose_mgdl / MG_PER_MMOL
    q1 = g * p.vg
    q2 = x1 * q1 / (p.k12 + x2)
    return (s1, s2, i, x1, x2, x3, q1, q2, 0.0, 0.0, g)


class HovorkaEnv(gym.Env):
    """One T1D patient's pump: 5-minute steps, episodes of `episode_days` days (see module doc).

    Numeric attributes a site may override: `patient_seed` (< 0: the nominal Hovorka 2004
    patient; else drawn from the published distributions by this seed), `episode_days`,
    `correction_basals`,
    `action_mode`, `hypo_penalty`, `termination_penalty`, `carb_error` (SD of the relative
    carb-counting error of announced meals), `cgm_noise` (0 turns the sensor error off),
    `reward_scale` (multiplies every reward: a critic fitting day-long returns of -400 would
    otherwise dominate PPO's shared gradient-norm clip and starve the actor), `tir_bonus` (added
    per step with glucose in 70-180 mg/dL: the risk index alone does not rank time in range
    above fewer lows, docs/pilots.md).
    """

    metadata = {"render_modes": []}
    DOMAIN_METRICS = {"time_in_range": True, "time_below_70": False, "time_below_54": False,
                      "time_above_180": False, "mean_risk": False}
    """Per-episode metrics this env reports, and whether higher is better."""

    def __init__(self, patient_seed: float = -1.0, episode_days: float = 1.0, action_mode: float = 0.0) -> None:
        self.patient_seed = float(patient_seed)
        self.episode_days = float(episode_days)
        self.action_mode = float(action_mode)
        self.hypo_penalty = 3.0
        self.correction_basals = 2.0
        self.termination_penalty = 50.0
        self.carb_error = 0.1
        self.cgm_noise = 1.0
        self.tau_ig = 10.0
        self.reward_scale = 1.0
        self.tir_bonus = 0.0
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(HISTORY + 4,), dtype=np.float32)
        self._patient_key: float | None = None
        self.patient: Patient = nominal_patient()
        self.therapy: dict[str, float] = {}
        self.completed_metrics: list[dict[str, float]] = []
        self._ensure_patient()

    # -- patient ---------------------------------------------------------------------------
    def _ensure_patient(self) -> None:
        if self._patient_key == self.patient_seed:
            return
        seed = self.patient_seed
        self.patient = nominal_patient() if seed < 0 else sample_patient(int(seed))
        self.therapy = therapy_settings(self.patient)
        self._patient_key = seed

    # -- episode ---------------------------------------------------------------------------
    def _meal_plan(self, days: int) -> dict[int, float]:
        """Seeded stochastic meals: step index -> grams of carbohydrate."""
        rng = self.np_random
        plan: dict[int, float] = {}
        # (mean time h, SD h, mean g, SD g, probability): breakfast, lunch, snack, dinner.
        for day in range(days):
            for hour, sd_h, grams, sd_g, prob in ((7.5, 0.5, 50, 10, 1.0), (12.5, 0.5, 70, 15, 1.0),
                                                  (16.0, 0.5, 20, 5, 0.5), (19.0, 0.75, 80, 15, 1.0)):
                if rng.random() >= prob:
                    continue
                t = float(np.clip(rng.normal(hour, sd_h), 0.0, 23.9))
                step = day * STEPS_PER_DAY + int(t * 60 // STEP_MIN)
                plan[step] = plan.get(step, 0.0) + float(max(5.0, rng.normal(grams, sd_g)))
        return plan

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._ensure_patient()
        days = max(1, int(round(self.episode_days)))
        self.max_steps = days * STEPS_PER_DAY
        self.meals = self._meal_plan(days)
        g0 = float(np.clip(self.np_random.normal(TARGET_MGDL + 20.0, 15.0), 80.0, 180.0))
        self.state = steady_state(self.patient, self.therapy["basal"], g0)
        self.noise = CGMNoise(self.np_random)
        self.t = 0
        self.deliveries: list[float] = []  # U per step, newest last (for insulin on board)
        cgm = self._read_cgm()
        self.cgm_hist = [cgm] * HISTORY
        self.bg_trace: list[float] = [self.glucose]
        return self._obs(), {"glucose": self.glucose, "cgm": cgm}

    @property
    def glucose(self) -> float:
        """True plasma glucose, mg/dL."""
        return self.state[6] / self.patient.vg * MG_PER_MMOL

    def _read_cgm(self) -> float:
        ig = self.state[10] * MG_PER_MMOL
        noise = self.noise() if self.cgm_noise else 0.0
        return float(np.clip(ig + self.cgm_noise * noise, 40.0, 400.0))

    def insulin_on_board(self) -> float:
        """Units still active, pump-style: each delivery decays linearly over DIA_MIN."""
        n = len(self.deliveries)
        return float(sum(d * max(0.0, 1.0 - (n - k) * STEP_MIN / DIA_MIN) for k, d in enumerate(self.deliveries)))

    def _announced(self) -> float:
        return self.meals.get(self.t, 0.0)

    def standard_bolus(self, carbs: float, cgm: float, iob: float) -> float:
        """Basal-bolus rule: carbs/CR + (CGM - 120)/CF - IOB at meals; 0 between meals."""
        if carbs <= 0:
            return 0.0
        th = self.therapy
        return max(0.0, carbs / th["cr"] + max(0.0, (cgm - CORRECTION_TARGET) / th["cf"]) - iob)

    def _obs(self) -> np.ndarray:
        unit = self.therapy["tdi"] / 10.0
        iob = self.insulin_on_board()
        bolus = self.standard_bolus(self._announced(), self.cgm_hist[-1], iob)
        minute = (self.t * STEP_MIN) % (24 * 60)
        angle = 2.0 * math.pi * minute / (24 * 60)
        obs = [(c - 140.0) / 70.0 for c in self.cgm_hist] + [iob / unit, bolus / unit, math.sin(angle), math.cos(angle)]
        return np.clip(np.asarray(obs, dtype=np.float32), -10.0, 10.0)

    def _dose(self, action: np.ndarray) -> tuple[float, float]:
        """(basal U/h, bolus U) delivered this step, within the pump's bounds."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        carbs = self._announced()
        if self.action_mode >= 0.5:  # absolute rates
            basal = MAX_BASAL * (a[0] + 1.0) / 2.0
            bolus = MAX_BOLUS * (a[1] + 1.0) / 2.0
        else:  # adjustments of the programmed therapy
            if carbs > 0 and self.carb_error:
                carbs = carbs * max(0.0, 1.0 + self.carb_error * float(self.np_random.standard_normal()))
            # a0 < 0 lowers the programmed basal (down to a suspension); a0 > 0 adds automatic
            # correction insulin up to `correction_basals` more basals (as hybrid closed loops do).
            scale = 1.0 + a[0] if a[0] < 0 else 1.0 + self.correction_basals * a[0]
            basal = self.therapy["basal"] * scale
            bolus = self.standard_bolus(carbs, self.cgm_hist[-1], self.insulin_on_board()) * (1.0 + 0.5 * a[1])
        return float(np.clip(basal, 0.0, MAX_BASAL)), float(np.clip(bolus, 0.0, MAX_BOLUS))

    def step(self, action):
        basal, bolus = self._dose(action)
        carbs = self._announced()
        s = list(self.state)
        if carbs > 0:
            s[8] += self.patient.ag * carbs * MMOL_PER_G
        delivered = basal * STEP_MIN / 60.0 + bolus
        u = delivered * 1000.0 / STEP_MIN  # mU/min over the step
        self.state = _rk4(self.patient, tuple(s), u, STEP_MIN / SUBSTEPS, SUBSTEPS, self.tau_ig)
        self.deliveries.append(delivered)
        if len(self.deliveries) > DIA_MIN // STEP_MIN:
            self.deliveries.pop(0)
        self.t += 1
        g = self.glucose
        self.bg_trace.append(g)
        cgm = self._read_cgm()
        self.cgm_hist = self.cgm_hist[1:] + [cgm]
        reward = -magni_risk(g) / 100.0
        if g < 70.0:
            reward -= self.hypo_penalty * (3.0 if g < 54.0 else 1.0)
        elif g <= 180.0:
            reward += self.tir_bonus
        terminated = g < 40.0 or g > 500.0
        if terminated:
            reward -= self.termination_penalty
        truncated = not terminated and self.t >= self.max_steps
        reward *= self.reward_scale
        info: dict[str, Any] = {"glucose": g, "cgm": cgm, "insulin": delivered, "carbs": carbs}
        if terminated or truncated:
            metrics = self.episode_metrics()
            self.completed_metrics.append(metrics)
            info["episode_metrics"] = metrics
        return self._obs(), float(reward), bool(terminated), bool(truncated), info

    def episode_metrics(self) -> dict[str, float]:
        """Time in range 70-180, below 70, below 54, above 180 (fractions) and mean Magni risk,
        over the true glucose of this episode's steps."""
        g = np.asarray(self.bg_trace[1:] or self.bg_trace, dtype=np.float64)
        return {"time_in_range": float(np.mean((g >= 70.0) & (g <= 180.0))),
                "time_below_70": float(np.mean(g < 70.0)), "time_below_54": float(np.mean(g < 54.0)),
                "time_above_180": float(np.mean(g > 180.0)), "mean_risk": float(np.mean(magni_risk(g)))}

    def pop_episode_metrics(self) -> list[dict[str, float]]:
        """Metrics of the episodes completed since the last call (the evaluation hook reads them)."""
        out, self.completed_metrics = self.completed_metrics, []
        return out


def patient_fields() -> list[str]:
    return [f.name for f in fields(Patient)]
