"""Privacy/utility benchmark (issue 4, "Measured: Utility"): private runs against their non-private twins.

    .venv/bin/python bench/privacy_utility.py                          # both experiments, full length
    .venv/bin/python bench/privacy_utility.py --which trajectory       # A only
    .venv/bin/python bench/privacy_utility.py --which client200 --rounds 10 --no-plots   # quick look
    .venv/bin/python bench/privacy_utility.py --which client2000 --seed 1 --jobs 2       # issue 9 (seeds 1, 2, 3)
    .venv/bin/python bench/privacy_utility.py --jobs 2 --json out.json   # 2 runs at a time

Experiments (each run twice: as configured, and with ``privacy.unit = "none"``; secure aggregation
stays on in both, so the twin differs only by the privacy mechanism):

- trajectory: clients/cartpole/federation.toml (the product's main job): heterogeneous CartPole,
  8 sites, trajectory-level DP-SGD, epsilon <= 8 per site. Goal: mean eval return >= 400.
- client200: clients/cartpole/client-level-200.toml: 200 sites, Poisson q = 0.1, client-level DP
  with the distributed discrete Gaussian under secure aggregation, epsilon <= 8. Goal: final eval
  return >= 80% of the non-private twin's.

Prints one table row per run (rounds, env steps, final mean / worst-site eval return, epsilon
spent, wall time) and saves curves (eval return vs round, private and non-private; eval return vs
epsilon spent) as PNG. ``--rounds`` shortens runs; a shorter private run is calibrated to spend
the same epsilon over fewer rounds (less noise per round), so it is a different run, not a prefix
of the full one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from secure_fedrl.config import load_config  # noqa: E402
from secure_fedrl.runtime.simulate import run_simulation  # noqa: E402


@dataclass(frozen=True)
class Experiment:
    key: str
    config: Path
    image: str
    title: str
    goal: str


EXPERIMENTS = {
    "trajectory": Experiment("trajectory", REPO / "clients" / "cartpole" / "federation.toml", "utility_trajectory.png",
                             "CartPole, 8 heterogeneous sites, trajectory-level DP",
                             "mean eval return >= 400"),
    "client200": Experiment("client200", REPO / "clients" / "cartpole" / "client-level-200.toml",
                            "utility_client200.png",
                            "CartPole, 200 sites (q = 0.1), client-level DDG under SecAgg",
                            "final return >= 80% of non-private"),
    "client2000": Experiment("client2000", REPO / "clients" / "cartpole" / "client-level-2000.toml",
                             "utility_client2000.png",
                             "CartPole, 2000 sites (q = 0.05), client-level DDG under SecAgg+, against the server",
                             "final return >= 80% of non-private (issue 9: mean of >= 3 seeds)"),
    "fedbuff": Experiment("fedbuff", REPO / "clients" / "cartpole" / "fedbuff.toml", "utility_fedbuff.png",
                          "CartPole, 200 sites at two paces, FedBuff (K = 40) with client-level DDG under SecAgg+",
                          "final return >= 80% of non-private (no goal set by an issue: a reference number)"),
}


@dataclass
class RunResult:
    label: str
    config: str
    private: bool
    rounds: int
    env_steps: int
    final_mean: float | None
    final_worst: float | None
    last3_mean: float | None  # mean of the last 3 evaluations' mean return: less luck than one
    epsilon: float | None
    epsilon_server: float | None  # worst site, against the server (docs/privacy-model.md)
    epsilon_release: float | None  # against release-only observers
    threat_model: str | None
    target_epsilon: float | None
    wall_s: float
    curve: list[dict[str, Any]]  # eval rows: round, env_steps, epsilon, mean, worst


def run_one(exp: Experiment, *, private: bool, rounds: int | None, seed: int | None, out: Path) -> RunResult:
    overrides: dict[str, Any] = {}
    if rounds is not None:
        overrides["federation.rounds"] = rounds
    if seed is not None:
        overrides["federation.seed"] = seed
    if not private:
        overrides["privacy.unit"] = "none"
    config = load_config(exp.config, overrides=overrides)
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    summary = run_simulation(config, out, progress=False)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [{"round": r["round"], "env_steps": r.get("env_steps"), "epsilon": r.get("epsilon"),
              "epsilon_server": r.get("epsilon_server"), "epsilon_release": r.get("epsilon_release"),
              "mean": r["eval_return_mean"], "worst": r["eval_return_worst"]}
             for r in rows if r.get("eval_return_mean") is not None]
    last = curve[-1] if curve else {}
    return RunResult(
        label=f"{exp.key} {'DP' if private else 'non-private'}",
        config=str(exp.config.relative_to(REPO)),
        private=private,
        rounds=summary.rounds_done,
        env_steps=summary.env_steps,
        final_mean=last.get("mean"),
        final_worst=last.get("worst"),
        last3_mean=sum(c["mean"] for c in curve[-3:]) / len(curve[-3:]) if curve else None,
        epsilon=summary.epsilon if private else None,
        epsilon_server=summary.epsilon_server if private else None,
        epsilon_release=summary.epsilon_release if private else None,
        threat_model=summary.threat_model if private else None,
        target_epsilon=config.privacy.target_epsilon if private else None,
        wall_s=wall,
        curve=curve,
    )


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: list[RunResult]) -> None:
    header = (f"{'run':<24} {'config':<38} {'rounds':>6} {'env steps':>10} {'final mean':>10} "
              f"{'final worst':>11} {'last-3 mean':>11} {'eps srv':>8} {'eps rel':>8} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        srv = "-" if r.epsilon_server is None else f"{r.epsilon_server:.3f}"
        rel = "-" if r.epsilon_release is None else f"{r.epsilon_release:.3f}"
        print(f"{r.label:<24} {r.config:<38} {r.rounds:>6} {r.env_steps:>10} {_fmt(r.final_mean):>10} "
              f"{_fmt(r.final_worst):>11} {_fmt(r.last3_mean):>11} {srv:>8} {rel:>8} {r.wall_s:>7.0f}")


def verdict(exp: Experiment, private: RunResult | None, public: RunResult | None) -> str:
    if private is None or private.final_mean is None:
        return f"{exp.key}: no private result"
    eps_ok = private.epsilon is not None and private.epsilon <= (private.target_epsilon or 0) + 1e-9
    both = (f" (budget on {private.threat_model}; against the server {private.epsilon_server:.3f}, against "
            f"release-only observers {private.epsilon_release:.3f})" if private.epsilon_server is not None else "")
    if exp.key == "trajectory":
        ok = private.final_mean >= 400
        return (f"{exp.key}: final mean eval return {private.final_mean:.1f} (goal >= 400: "
                f"{'met' if ok else 'NOT met'}), epsilon {private.epsilon:.3f} <= {private.target_epsilon:g}: {eps_ok}{both}")
    if public is None or not public.final_mean:
        return f"{exp.key}: final mean eval return {private.final_mean:.1f} (no non-private twin to compare)"
    ratio = private.final_mean / public.final_mean
    last3 = ""
    if private.last3_mean is not None and public.last3_mean:
        last3 = (f"; mean of the last 3 evaluations {private.last3_mean:.1f}/{public.last3_mean:.1f} = "
                 f"{100 * private.last3_mean / public.last3_mean:.0f}%")
    return (f"{exp.key}: DP/non-private final return {private.final_mean:.1f}/{public.final_mean:.1f} = "
            f"{100 * ratio:.0f}% (goal >= 80%: {'met' if ratio >= 0.8 else 'NOT met'}){last3}, "
            f"epsilon {private.epsilon:.3f} <= {private.target_epsilon:g}: {eps_ok}{both}")


def plot(exp: Experiment, private: RunResult | None, public: RunResult | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for res, color in ((public, "tab:gray"), (private, "tab:blue")):
        if res is None or not res.curve:
            continue
        rounds = [c["round"] for c in res.curve]
        ax1.plot(rounds, [c["mean"] for c in res.curve], "-o", ms=3, color=color, label=f"{res.label} (mean)")
        ax1.plot(rounds, [c["worst"] for c in res.curve], ":", color=color, label=f"{res.label} (worst site)")
    ax1.set_xlabel("round")
    ax1.set_ylabel("evaluation return (greedy)")
    ax1.set_title("return vs round")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    if private is not None and private.curve:
        eps = [c["epsilon"] for c in private.curve]
        ax2.plot(eps, [c["mean"] for c in private.curve], "-o", ms=3, color="tab:blue", label="DP (mean)")
        ax2.plot(eps, [c["worst"] for c in private.curve], ":", color="tab:blue", label="DP (worst site)")
        if public is not None and public.final_mean is not None:
            ax2.axhline(public.final_mean, color="tab:gray", ls="--", label="non-private final (mean)")
        if private.target_epsilon:
            ax2.axvline(private.target_epsilon, color="tab:red", lw=0.8, label=f"budget eps={private.target_epsilon:g}")
    ax2.set_xlabel("epsilon spent (delta = 1e-5" + (", per site)" if exp.key == "trajectory" else ")"))
    ax2.set_ylabel("evaluation return (greedy)")
    ax2.set_title("return vs epsilon")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"{exp.title} ({exp.config.relative_to(REPO)})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--which", choices=["all", *EXPERIMENTS], default="all")
    ap.add_argument("--rounds", type=int, default=None, help="override federation.rounds (shorter runs)")
    ap.add_argument("--seed", type=int, default=None, help="override federation.seed")
    ap.add_argument("--private-only", action="store_true", help="skip the non-private twins")
    ap.add_argument("--runs-dir", type=Path, default=None, help="keep run directories here (default: temporary)")
    ap.add_argument("--img-dir", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs in parallel (processes); wall times then include the contention")
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")

    keys = list(EXPERIMENTS) if args.which == "all" else [args.which]
    tmp = None
    runs_dir = args.runs_dir
    if runs_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="privacy-utility-")
        runs_dir = Path(tmp.name)
    jobs = [(key, private) for key in keys for private in ((True,) if args.private_only else (True, False))]
    done: dict[tuple[str, bool], RunResult] = {}
    try:
        def submit(pool, key: str, private: bool):
            out = runs_dir / f"{key}-{'dp' if private else 'nonprivate'}"
            kwargs = dict(private=private, rounds=args.rounds, seed=args.seed, out=out)
            if pool is None:
                return run_one(EXPERIMENTS[key], **kwargs)
            return pool.submit(run_one, EXPERIMENTS[key], **kwargs)

        if args.jobs <= 1:
            for key, private in jobs:
                done[(key, private)] = res = submit(None, key, private)
                print(f"done: {res.label}  final {_fmt(res.final_mean)}  {res.wall_s:.0f} s", flush=True)
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                futures = {submit(pool, key, private): (key, private) for key, private in jobs}
                for fut in as_completed(futures):
                    done[futures[fut]] = res = fut.result()
                    print(f"done: {res.label}  final {_fmt(res.final_mean)}  {res.wall_s:.0f} s", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    results = [done[j] for j in jobs]
    verdicts = []
    for key in keys:
        exp, private, public = EXPERIMENTS[key], done.get((key, True)), done.get((key, False))
        verdicts.append(verdict(exp, private, public))
        if not args.no_plots:
            plot(exp, private, public, args.img_dir / exp.image)
    print()
    print_table(results)
    print()
    for v in verdicts:
        print(v)
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
