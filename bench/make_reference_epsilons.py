"""Regenerate tests/privacy/data/dp_epsilons.json: reference epsilons of the Poisson-subsampled
Gaussian from two independent libraries (Opacus 1.6.0 and Google dp-accounting 0.6.0).

    .venv/bin/python bench/make_reference_epsilons.py --out tests/privacy/data/dp_epsilons.json
    .venv/bin/python bench/make_reference_epsilons.py --check      # recompute, compare, write nothing

Not run in CI (dp-accounting is not a dependency of the project): install it beside the venv,
e.g. `pip install --target /tmp/dpacc dp-accounting absl-py attrs` and run with
PYTHONPATH=/tmp/dpacc. The tests read only the shipped JSON, never these libraries' network.

Grid: sigma in {0.5, 0.8, 1.0, 1.1, 2.0, 5.0} x q in {0.01, 0.1, 0.5, 1.0} x steps in
{1, 10, 100, 1000}, delta = 1e-5. Columns (as the shipped file's notes say):
eps_opacus_rdp_orders_to_63 (Opacus RDPAccountant, default orders), eps_opacus_prv_upper / lower
(Opacus PRVAccountant, eps_error 0.01), eps_dp_accounting_pld (PLDAccountant, value
discretization 1e-4, pessimistic).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "privacy" / "data" / "dp_epsilons.json"
SIGMAS = (0.5, 0.8, 1.0, 1.1, 2.0, 5.0)
RATES = (0.01, 0.1, 0.5, 1.0)
STEPS = (1, 10, 100, 1000)
DELTA = 1e-5


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def opacus_rdp(sigma: float, q: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acct = RDPAccountant()
    acct.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acct.get_epsilon(delta)


def opacus_prv(sigma: float, q: float, steps: int, delta: float) -> tuple[float | None, float | None]:
    from opacus.accountants import PRVAccountant

    acct = PRVAccountant()
    acct.history = [(sigma, q, steps)]
    try:
        dprv = acct._get_dprv(eps_error=0.01, delta_error=delta / 1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            low, _, up = dprv.compute_epsilon(delta, delta / 1000, 0.01)
    except (ValueError, OverflowError, FloatingPointError, RuntimeError):
        return None, None
    return _finite(up), _finite(low)


def pld(sigma: float, q: float, steps: int, delta: float) -> float | None:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    acct = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acct.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return _finite(acct.get_epsilon(delta))


def compute() -> dict:
    import numpy
    import opacus
    import scipy

    try:
        from importlib.metadata import version

        dpa = version("dp-accounting")
    except Exception:  # noqa: BLE001 - only informational
        dpa = "unknown"
    rows = []
    for sigma in SIGMAS:
        for q in RATES:
            for steps in STEPS:
                up, low = opacus_prv(sigma, q, steps, DELTA)
                rows.append({"sigma": sigma, "sample_rate": q, "steps": steps, "delta": DELTA,
                             "eps_opacus_rdp_orders_to_63": _finite(opacus_rdp(sigma, q, steps, DELTA)),
                             "eps_opacus_prv_upper": up, "eps_opacus_prv_lower": low,
                             "eps_dp_accounting_pld": pld(sigma, q, steps, DELTA)})
    meta = {"mechanism": "Poisson-subsampled Gaussian (add/remove-one neighbours), composed over `steps` rounds",
            "computed_with": {"python": platform.python_version(), "platform": platform.platform(),
                              "opacus": opacus.__version__, "dp-accounting": dpa, "numpy": numpy.__version__,
                              "scipy": scipy.__version__},
            "generated_by": "bench/make_reference_epsilons.py"}
    return {"meta": meta, "rows": rows}


def compare(new: dict, old: dict, rel: float) -> list[str]:
    """Rows/columns where the recomputed value differs from the shipped one by more than `rel`."""
    key = lambda r: (r["sigma"], r["sample_rate"], r["steps"], r["delta"])  # noqa: E731
    shipped = {key(r): r for r in old["rows"]}
    bad = []
    for r in new["rows"]:
        o = shipped.get(key(r))
        if o is None:
            bad.append(f"{key(r)}: not in the shipped file")
            continue
        for col, v in r.items():
            if not col.startswith("eps_"):
                continue
            w = o.get(col)
            if (v is None) != (w is None) or (v is not None and abs(v - w) > rel * max(abs(w), 1e-12)):
                bad.append(f"{key(r)} {col}: recomputed {v}, shipped {w}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    ap.add_argument("--rel", type=float, default=1e-6, help="--check tolerance (relative)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    new = compute()
    print(f"computed {len(new['rows'])} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.check:
        bad = compare(new, json.loads(args.out.read_text()), args.rel)
        for line in bad:
            print(line)
        print(f"{len(bad)} difference(s) above {args.rel:g} relative")
        return 1 if bad else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(new, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
