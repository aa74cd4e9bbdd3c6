"""Hand-written CGM-feedback adjustments of the basal-bolus rule on the Hovorka env (no learning).

    python bench/hovorka_feedback.py KP,KD,KI,BIAS,KB,BIASB [...]

Each argument is one controller: a0 = clip(KP e + KD (e - e_30min) - KI iob + BIAS), a1 = clip(KB e +
BIASB), with e = (CGM - 140)/70 and iob the observation's insulin on board; the first row is the rule
itself (all zero). 40 patients drawn from seed 1, 2 seeded days each, the same days for every row.
It answers whether a feedback policy that beats the rule exists in the action space (docs/pilots.md).
"""
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from secure_fedrl.rl.pilots.hovorka import HovorkaEnv  # noqa: E402


def run(args):
    """Mean metrics and return of one controller on one patient's two seeded days."""
    patient_seed, w, days_seed = args
    env = HovorkaEnv(patient_seed=patient_seed, episode_days=1)
    out = []
    for day in range(2):
        obs, _ = env.reset(seed=days_seed + day)
        ret, done = 0.0, False
        while not done:
            e, slope, iob = obs[11], obs[11] - obs[5], obs[12]
            a0 = np.clip(w[0] * e + w[1] * slope - w[2] * iob + w[3], -1, 1)
            a1 = np.clip(w[4] * e + w[5], -1, 1)
            obs, r, terminated, truncated, _ = env.step(np.array([a0, a1]))
            ret += r
            done = terminated or truncated
        m = env.pop_episode_metrics()[-1]
        m["ret"] = ret
        out.append(m)
    return {k: np.mean([o[k] for o in out]) for k in out[0]}


if __name__ == "__main__":
    patients = [int(s) for s in np.random.default_rng(1).integers(0, 10**9, 40)]
    controllers = [(0.0,) * 6] + [tuple(map(float, a.split(","))) for a in sys.argv[1:]]
    with Pool(2) as pool:
        base = None
        for w in controllers:
            res = pool.map(run, [(p, w, 777) for p in patients])
            tir = np.array([r["time_in_range"] for r in res])
            base = tir if base is None else base
            print(w, f"TIR {tir.mean():.3f}  >= rule on {np.mean(tir >= base - 1e-12):.2f}  "
                     f"below 70 {np.mean([r['time_below_70'] for r in res]):.4f}  "
                     f"below 54 {np.mean([r['time_below_54'] for r in res]):.4f}  "
                     f"return {np.mean([r['ret'] for r in res]):.1f}", flush=True)
