"""Server aggregation speed: N site updates of D float32 parameters → new global parameters.

Issue 2's goal: 100 updates of 1M parameters in < 1 s for FedAvg and FedAdam. Every row is timed
in the same run (median of --repeats after one warm-up), so the ratios compare like with like.

    .venv/bin/python bench/aggregation.py                      # 100 × 1M, 5 repeats
    .venv/bin/python bench/aggregation.py --sites 10 --dim 100000 --repeats 3   # quick

Rows:
  weighted_mean          in-place accumulation (what secure_fedrl.fl uses)
  stack + BLAS           np.stack the updates, then weights @ matrix (the alternative)
  BLAS on preallocated   weights @ matrix when updates were received into one (N, D) buffer
  <strategy> aggregate   weighted_mean + strategy.apply (the full synchronous server step)
  <strategy> apply       the strategy step alone (what runs under secure aggregation, where the
                         unmasked sum arrives already summed)
  scaffold aggregate     two weighted means (Δy, Δc) + apply_scaffold
  fedasync 100 arrivals  N sequential apply_async calls (one per arriving update)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from secure_fedrl.fl import make_strategy, weighted_mean


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: first-touch page faults, lazy state allocation
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.repeats < 1 or args.sites < 1 or args.dim < 1:
        ap.error("--sites, --dim and --repeats must be >= 1")

    rng = np.random.default_rng(args.seed)
    n, d = args.sites, args.dim
    matrix = rng.standard_normal((n, d), dtype=np.float32) * np.float32(1e-2)
    updates = [matrix[i].copy() for i in range(n)]  # separate arrays, as they arrive
    weights = rng.uniform(100, 1000, size=n)  # e.g. env steps per site
    w32 = (weights / weights.sum()).astype(np.float32)
    params = rng.standard_normal(d, dtype=np.float32)
    mean = weighted_mean(updates, weights)

    rows: list[tuple[str, list[float]]] = []
    rows.append(
        ("weighted_mean (in place)", _time(lambda: weighted_mean(updates, weights), args.repeats))
    )
    rows.append(("stack + BLAS", _time(lambda: w32 @ np.stack(updates), args.repeats)))
    rows.append(("BLAS on preallocated (N, D)", _time(lambda: w32 @ matrix, args.repeats)))

    for name, params_kw in [
        ("fedavg", {}),
        ("fedprox", {"mu": 0.01}),
        ("fedadam", {}),
        ("fedyogi", {}),
        ("fedadagrad", {}),
    ]:
        strat = make_strategy(name, **params_kw)
        rows.append(
            (
                f"{name} aggregate",
                _time(lambda s=strat: s.aggregate(params, updates, weights), args.repeats),
            )
        )
        rows.append((f"{name} apply", _time(lambda s=strat: s.apply(params, mean), args.repeats)))

    scaffold = make_strategy("scaffold", server_lr=1.0)
    delta_c = [u * np.float32(0.5) for u in updates]

    def scaffold_step() -> np.ndarray:
        dy = weighted_mean(updates)
        dc = weighted_mean(delta_c)
        return scaffold.apply_scaffold(params, dy, dc, num_sampled=n, num_total=2 * n)

    rows.append(("scaffold aggregate", _time(scaffold_step, args.repeats)))

    fedasync = make_strategy("fedasync", alpha=0.6, staleness="polynomial", a=0.5)

    def async_arrivals() -> np.ndarray:
        x = params
        for i, u in enumerate(updates):
            x = fedasync.apply_async(x, u, i % 5, is_update=True)
        return x

    rows.append((f"fedasync {n} arrivals", _time(async_arrivals, args.repeats)))

    print(
        f"server aggregation: {n} updates x {d:,} float32 params, median of {args.repeats} "
        f"(after 1 warm-up)"
    )
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"python {platform.python_version()} numpy {np.__version__}"
    )
    ref = statistics.median(rows[0][1])
    print(f"{'operation':<30} {'median s':>9} {'min s':>8} {'max s':>8} {'vs mean':>8}")
    for label, ts in rows:
        med = statistics.median(ts)
        print(f"{label:<30} {med:>9.4f} {min(ts):>8.4f} {max(ts):>8.4f} {med / ref:>7.2f}x")
    goal = {lbl: statistics.median(ts) for lbl, ts in rows}
    for name in ("fedavg", "fedadam"):
        t = goal[f"{name} aggregate"]
        print(f"goal < 1 s: {name} aggregate {t:.3f} s -> {'met' if t < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
