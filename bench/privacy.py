"""Privacy accountant benchmark: accuracy against the reference grid, and speed at 10,000 rounds.

    .venv/bin/python bench/privacy.py                 # both tables
    .venv/bin/python bench/privacy.py --skip-speed    # accuracy only
    .venv/bin/python bench/privacy.py --curves eps.png --sigma 1.0 --sample-rate 0.1

Accuracy criteria (issue 4): "rdp" is never above Opacus's RDP (orders <= 63) and never below
the PRV lower bound; "prv" is within max(2%, 0.02) of the PLD value and never below the PRV lower
bound. Reference: tests/privacy/data/dp_epsilons.json (Opacus 1.6.0, dp-accounting 0.6.0;
regenerate with bench/make_reference_epsilons.py).
Speed targets: epsilon for 10,000 rounds < 1 s (rdp) and < 5 s (prv); median of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from secure_fedrl.privacy import accountants as acc  # noqa: E402
from secure_fedrl.privacy import epsilon  # noqa: E402


def _reference() -> tuple[Path, list[dict]]:
    """The reference epsilons shipped in the repo (bench/make_reference_epsilons.py regenerates them)."""
    path = REPO / "tests" / "privacy" / "data" / "dp_epsilons.json"
    return path, json.loads(path.read_text())["rows"]


def _num(x) -> float:
    return math.inf if x is None else float(x)


def _fmt(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.5g}"


def accuracy() -> int:
    path, rows = _reference()
    print(f"## accuracy vs {path}")
    header = ("sigma", "q", "steps", "delta", "ours_rdp", "opacus_rdp63", "ours_prv", "prv_lower",
              "prv_upper", "pld", "prv/pld-1", "rdp_ok", "prv_ok")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    bad_rdp = bad_prv = 0
    for r in rows:
        s, q, n, d = r["sigma"], r["sample_rate"], r["steps"], r["delta"]
        ours_rdp = epsilon(s, q, n, d, "rdp")
        ours_prv = epsilon(s, q, n, d, "prv")
        o63 = _num(r["eps_opacus_rdp_orders_to_63"])
        lower = _num(r["eps_opacus_prv_lower"])
        upper = _num(r["eps_opacus_prv_upper"])
        pld = _num(r["eps_dp_accounting_pld"])
        lower_ok = lambda e: (not math.isfinite(lower)) or e >= lower  # noqa: E731
        rdp_ok = ours_rdp <= o63 * (1 + 1e-12) and lower_ok(ours_rdp)
        prv_ok = (math.isfinite(ours_prv) and abs(ours_prv - pld) <= max(0.02 * pld, 0.02)
                  and lower_ok(ours_prv))
        bad_rdp += not rdp_ok
        bad_prv += not prv_ok
        rel = ours_prv / pld - 1 if pld > 0 else math.nan
        print(f"| {s:g} | {q:g} | {n} | {d:g} | {_fmt(ours_rdp)} | {_fmt(o63)} | {_fmt(ours_prv)} "
              f"| {_fmt(lower)} | {_fmt(upper)} | {_fmt(pld)} | {rel:+.3%} "
              f"| {'pass' if rdp_ok else 'FAIL'} | {'pass' if prv_ok else 'FAIL'} |")
    print(f"\nrows: {len(rows)}; rdp violations: {bad_rdp}; prv violations: {bad_prv}")
    return bad_rdp + bad_prv


def _time_rounds(name: str, sigma: float, q: float, rounds: int) -> tuple[float, float]:
    """One cold run: fresh accountant, RDP cache cleared, ``rounds`` per-round steps, then eps."""
    acc._RDP_CACHE.clear()
    t0 = time.perf_counter()
    a = acc.make_accountant(name)
    for _ in range(rounds):
        a.step(noise_multiplier=sigma, sample_rate=q)
    eps = a.get_epsilon(1e-5)
    return time.perf_counter() - t0, eps


def _time_per_round_checks(sigma: float, q: float, rounds: int) -> float:
    """rdp: a budget check (preview + commit) every round, as the server does."""
    acc._RDP_CACHE.clear()
    t0 = time.perf_counter()
    a = acc.make_accountant("rdp")
    step = acc.GaussianStep(sigma, q)
    for _ in range(rounds):
        a.epsilon_after(step, 1e-5)
        a.apply(step)
        a.get_epsilon(1e-5)
    return time.perf_counter() - t0


def speed(rounds: int, repeats: int) -> int:
    print(f"\n## speed: epsilon for {rounds} rounds (delta 1e-5), median of {repeats}, cold caches")
    print("| accountant | sigma | q | what | median s | min s | epsilon | target s | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    fails = 0
    for sigma, q in [(1.0, 0.01), (1.0, 0.1)]:
        for name, target in [("rdp", 1.0), ("prv", 5.0)]:
            runs = [_time_rounds(name, sigma, q, rounds) for _ in range(repeats)]
            times = [t for t, _ in runs]
            med = statistics.median(times)
            ok = med < target
            fails += not ok
            print(f"| {name} | {sigma:g} | {q:g} | {rounds} x step + get_epsilon | {med:.3f} "
                  f"| {min(times):.3f} | {runs[0][1]:.4g} | {target:g} | {'pass' if ok else 'FAIL'} |")
        times = [_time_per_round_checks(sigma, q, rounds) for _ in range(repeats)]
        med = statistics.median(times)
        print(f"| rdp | {sigma:g} | {q:g} | {rounds} x (preview + step + get_epsilon) | {med:.3f} "
              f"| {min(times):.3f} | - | - | info |")
        a = acc.make_accountant("prv")
        a.step(noise_multiplier=sigma, sample_rate=q, num_steps=rounds - repeats - 1)
        a.get_epsilon(1e-5)  # warm: the mesh for this horizon is discretised once
        step = acc.GaussianStep(sigma, q)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a.epsilon_after(step, 1e-5)
            a.apply(step)
            eps = a.get_epsilon(1e-5)
            times.append(time.perf_counter() - t0)
        print(f"| prv | {sigma:g} | {q:g} | one round's preview + step + get_epsilon at round "
              f"{rounds} | {statistics.median(times):.3f} | {min(times):.3f} | {eps:.4g} | - | info |")
    return fails


def curves(path: str, sigma: float, q: float, rounds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from opacus.accountants import RDPAccountant as OpacusRDP

    xs = sorted({max(1, int(round(rounds * f / 40))) for f in range(1, 41)})
    ys: dict[str, list[float]] = {"ours rdp (orders<=512)": [], "ours prv": [],
                                  "opacus rdp (orders<=63)": []}
    for n in xs:
        ys["ours rdp (orders<=512)"].append(epsilon(sigma, q, n, 1e-5, "rdp"))
        ys["ours prv"].append(epsilon(sigma, q, n, 1e-5, "prv"))
        o = OpacusRDP()
        o.history = [(sigma, q, n)]
        ys["opacus rdp (orders<=63)"].append(o.get_epsilon(1e-5))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, y in ys.items():
        ax.plot(xs, y, label=label)
    ax.set_xlabel("rounds")
    ax.set_ylabel("epsilon (delta = 1e-5)")
    ax.set_title(f"sigma={sigma:g}, q={q:g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--rounds", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--curves", metavar="PNG", help="plot epsilon vs rounds to this file")
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--sample-rate", type=float, default=0.1)
    args = p.parse_args(argv)
    failures = 0
    if not args.skip_accuracy:
        failures += accuracy()
    if not args.skip_speed:
        failures += speed(args.rounds, args.repeats)
    if args.curves:
        curves(args.curves, args.sigma, args.sample_rate, args.rounds)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
