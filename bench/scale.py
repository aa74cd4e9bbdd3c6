"""Scale-out on Ray (issue 9): `simulate --backend ray` against `--backend local`, one run.

Tables (every number measured in this run, each case in a fresh process with its own local Ray):

1. throughput: env steps/s of a round of 8 CartPole sites (SecAgg, 4096 local PPO steps each),
   local vs Ray, rounds 2-4 (round 1 warms up), the two backends' rounds alternating in one
   process so that both see the same machine load;
2. overhead: per-round time of Ray minus local with almost no training (median of 20 rounds,
   alternating likewise): 1 site (plaintext: SecAgg needs 2 sites) and 2 sites (SecAgg through
   the hub actor);
3. scale: federations of 100, 1,000 and 2,000 sites built like clients/cartpole/client-level-2000.toml
   (client-level DDG under SecAgg+, ~100 sites sampled per round, 512 local steps each):
   round time (round 2), RSS of the driver (the server runtime), of the hub actor and of each
   site host actor, and the memory of one more idle site (slope of host RSS over sites held);
4. largest: bigger federations (one round each) until one fails, takes longer than
   --max-init-s to start, or would leave less than --min-free-gib of memory free.

    python bench/scale.py                        # ~10-15 minutes on 2 cores
    python bench/scale.py --out bench/results/scale.txt
    python bench/scale.py --largest 5000 10000   # the sizes tried in table 4

Run with `nice -n 10` on a shared machine; the load average at the start is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 2**20

SITES = textwrap.dedent("""
    [[sites]]
    name = "device"
    env = "CartPole-v1"
    num_envs = 8
    seed = 1000
    count = {n}
    randomize = {{ force_mag = [5.0, 15.0], length = [0.25, 0.75], masspole = [0.05, 0.5] }}
""")


def plain_config(*, name: str, n: int, steps: int, secagg: bool, rounds: int, epochs: int = 4) -> str:
    """No privacy: every draw derives from the seed (the two backends run the same federation)."""
    return textwrap.dedent(f"""
        [federation]
        name = "{name}"
        rounds = {rounds}
        seed = 0

        [local]
        algorithm = "ppo"
        steps = {steps}
        hidden_sizes = [64, 64]

        [local.ppo]
        num_steps = {min(steps // 8, 128)}
        update_epochs = {epochs}
        num_minibatches = {4 if epochs > 1 else 1}

        [strategy]
        name = "fedavg"
        weighting = "uniform"

        [secure_aggregation]
        enabled = {str(secagg).lower()}

        [evaluation]
        every = 1000
        episodes = 1
        max_sites = 1
    """) + SITES.format(n=n)


def scale_config(*, n: int, steps: int, rounds: int = 3) -> str:
    """clients/cartpole/client-level-2000.toml with n sites, ~100 a round, fewer local steps."""
    text = (REPO / "clients/cartpole/client-level-2000.toml").read_text()
    text = text.replace("count = 2000", f"count = {n}")
    text = text.replace("fraction = 0.05 ", f"fraction = {min(1.0, 100 / n):.6g} ")
    text = text.replace("\nsteps = 0\n", f"\nsteps = {steps}\n")  # a fixed env-step budget per site and round
    text = text.replace("rounds = 40", f"rounds = {rounds}")
    text = text.replace("every = 10", "every = 1000").replace("max_sites = 32", "max_sites = 1")
    text = text.replace('name = "cartpole-2000-client-dp"', f'name = "scale-{n}"')
    assert f"count = {n}" in text and f"steps = {steps}" in text
    return text


# ============================================================================= one case (subprocess)
def _rss() -> int:
    from secure_fedrl.runtime.ray_hub import _rss as rss

    return rss()


def run_paired(spec: dict) -> dict:
    """Local and Ray in this one process, their rounds alternating: both see the same machine load."""
    from secure_fedrl.config import load_config
    from secure_fedrl.runtime.ray_backend import RaySimulation
    from secure_fedrl.runtime.simulate import Simulation

    work = Path(spec["work"])
    path = work / "config.toml"
    path.write_text(spec["config"])
    config = load_config(path)
    sims = {"local": Simulation(config, work / "local", progress=False, ledger_key=work / "keys"),
            "ray": RaySimulation(config, work / "ray", progress=False, ledger_key=work / "keys")}
    out: dict = {name: {"rounds": []} for name in sims}
    try:
        for r in range(1, spec["rounds"] + 1):
            for name, sim in sims.items():
                steps = sim.env_steps
                t = time.perf_counter()
                row = sim.run_round(r)
                out[name]["rounds"].append({"s": time.perf_counter() - t, "steps": sim.env_steps - steps,
                                            "aggregated": row["sites_aggregated"],
                                            "status": sorted({v.get("round_status", "done")
                                                              for v in sim.site_rows.values()})})
        return out
    finally:
        for sim in sims.values():
            sim.privacy.close()
        sims["ray"].close()


def run_case(spec: dict) -> dict:
    from secure_fedrl.config import load_config

    if spec["backend"] == "paired":
        return run_paired(spec)
    work = Path(spec["work"])
    path = work / "config.toml"
    path.write_text(spec["config"])
    config = load_config(path)
    t0 = time.perf_counter()
    if spec["backend"] == "ray":
        from secure_fedrl.runtime.ray_backend import RaySimulation

        sim = RaySimulation(config, work / "run", progress=False, ledger_key=work / "keys",
                            cpus_per_site=spec.get("cpus_per_site", 1.0))
    else:
        from secure_fedrl.runtime.simulate import Simulation

        sim = Simulation(config, work / "run", progress=False, ledger_key=work / "keys")
    init_s = time.perf_counter() - t0
    rounds = []
    try:
        for r in range(1, spec["rounds"] + 1):
            steps = sim.env_steps
            t = time.perf_counter()
            row = sim.run_round(r)
            rounds.append({"s": time.perf_counter() - t, "steps": sim.env_steps - steps,
                           "sampled": row["sites_sampled"], "aggregated": row["sites_aggregated"]})
        out = {"init_s": init_s, "rounds": rounds, "driver_rss": _rss(), "sites": len(sim.site_names)}
        if spec["backend"] == "ray":
            out.update(sim.memory())
        return out
    finally:
        sim.privacy.close()
        if spec["backend"] == "ray":
            sim.close()


def case(spec: dict, *, timeout: float) -> dict:
    """Run one case in a fresh process (its own Ray, its own RSS); its result or the error."""
    with tempfile.TemporaryDirectory(prefix="scale-") as work:
        spec = {**spec, "work": work}
        env = {**os.environ, "XDG_CONFIG_HOME": work}
        proc = subprocess.Popen([sys.executable, __file__, "--case", json.dumps(spec)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            out, err = "", f"timed out after {timeout:.0f} s"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the case's local Ray, whatever state it is in
            except ProcessLookupError:
                pass
        for line in out.splitlines()[::-1]:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        tail = (err or "").strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}


# ============================================================================= tables
def fmt_table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells[1:]]
    return "\n".join(lines)


def mean_sps(res: dict, skip: int = 1) -> float:
    rs = res["rounds"][skip:]
    steps = sum(r["steps"] for r in rs)
    if not steps:
        raise SystemExit(f"bench/scale.py: no env steps in the measured rounds: {rs}")
    return steps / sum(r["s"] for r in rs)


def median_round(res: dict, skip: int = 2) -> float:
    return statistics.median(r["s"] for r in res["rounds"][skip:])


def free_gib() -> float:
    with open("/proc/meminfo") as fh:
        info = {line.split(":")[0]: int(line.split()[1]) for line in fh}
    return info["MemAvailable"] / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help="also write the tables here")
    ap.add_argument("--largest", type=int, nargs="*", default=[5000, 10000, 20000],
                    help="federation sizes tried for table 4 (default 5000 10000 20000)")
    ap.add_argument("--max-init-s", type=float, default=300.0, help="stop table 4 once start-up takes longer")
    ap.add_argument("--min-free-gib", type=float, default=6.0, help="stop table 4 before memory gets this low")
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "overhead", "scale", "largest"])
    args = ap.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0

    import ray

    out: list[str] = []

    def emit(text: str) -> None:
        print(text + "\n", flush=True)
        out.append(text)

    emit(f"bench/scale.py: {os.cpu_count()} CPUs, {free_gib():.1f} GiB available, load average "
         f"{os.getloadavg()[0]:.2f} at start, ray {ray.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if "throughput" not in args.skip:
        cfg = plain_config(name="tp8", n=8, steps=4096, secagg=True, rounds=100)
        res = case({"backend": "paired", "config": cfg, "rounds": 4}, timeout=900)
        if "error" in res:
            emit("1. throughput: error: " + res["error"])
        else:
            rows = [[name, f"{mean_sps(res[name]):,.0f}",
                     f"{statistics.mean(r['s'] for r in res[name]['rounds'][1:]):.2f}"] for name in ("local", "ray")]
            emit(fmt_table(f"1. throughput, one round of 8 sites x 4096 PPO steps (SecAgg, [64, 64]), rounds 2-4, "
                           f"local and Ray alternating in one process; Ray/local = "
                           f"{mean_sps(res['ray']) / mean_sps(res['local']):.2f}x (goal >= 1.7x)",
                           ["backend", "env steps/s", "round s"], rows))
    if "overhead" not in args.skip:
        rows = []
        for n, secagg in ((1, False), (2, True)):
            cfg = plain_config(name=f"oh{n}", n=n, steps=16, secagg=secagg, rounds=100, epochs=1)
            res = case({"backend": "paired", "config": cfg, "rounds": 23}, timeout=600)
            if "error" in res:
                rows.append([n, "secagg" if secagg else "plaintext", "error: " + res["error"][:80], "", ""])
                continue
            a, b = median_round(res["local"], 3), median_round(res["ray"], 3)
            rows.append([n, "secagg" if secagg else "plaintext", f"{a * 1e3:.1f}", f"{b * 1e3:.1f}",
                         f"{(b - a) * 1e3:.1f}"])
        emit(fmt_table("2. per-round overhead of Ray: 16 PPO steps per site, local and Ray rounds alternating in "
                       "one process, median of rounds 4-23 (goal < 50 ms at 1 site)",
                       ["sites", "aggregation", "local ms", "ray ms", "overhead ms"], rows))
    scale: dict[int, dict] = {}
    if "scale" not in args.skip:
        rows = []
        for n in (100, 1000, 2000):
            cfg = scale_config(n=n, steps=512)
            for backend in ("ray", "local"):
                res = case({"backend": backend, "config": cfg, "rounds": 2}, timeout=1200)
                if "error" in res:
                    rows.append([n, backend, "error: " + res["error"][:80]] + [""] * 7)
                    continue
                r2 = res["rounds"][-1]
                if backend == "ray":
                    scale[n] = res
                    hosts = f"{len(res['hosts'])} x {statistics.mean(res['hosts']) / MiB:.0f}"
                    per_host = f"{statistics.mean(res['sites_per_host']):.0f}"
                    hub = f"{res['hub'] / MiB:.0f}"
                else:
                    hosts = per_host = hub = "-"
                rows.append([n, backend, f"{res['init_s']:.1f}", f"{r2['s']:.1f}", f"{r2['sampled']}",
                             f"{r2['steps'] / r2['s']:,.0f}", f"{res['driver_rss'] / MiB:.0f}", hub, hosts, per_host])
        table = fmt_table("3. scale: client-level DDG under SecAgg+, ~100 sites sampled per round, 512 local "
                          "steps per site (client-level-2000.toml's [local]); round 2",
                          ["sites", "backend", "start-up s", "round s", "sampled", "env steps/s", "driver RSS MiB",
                           "hub RSS MiB", "hosts x RSS MiB", "sites/host"], rows)
        ok = sorted(n for n in scale)
        if len(ok) >= 2:
            lo, hi = scale[ok[0]], scale[ok[-1]]
            dh = statistics.mean(hi["hosts"]) - statistics.mean(lo["hosts"])
            ds = statistics.mean(hi["sites_per_host"]) - statistics.mean(lo["sites_per_host"])
            dd = hi["driver_rss"] - lo["driver_rss"]
            table += (f"\n   one more idle site: {dh / ds / 1024:.0f} KiB in its host actor (slope {ok[0]} -> {ok[-1]} "
                      f"sites), {dd / (ok[-1] - ok[0]) / 1024:.0f} KiB in the driver (its state in the server's "
                      f"checkpoint, its budget); a host actor with torch loaded: "
                      f"{statistics.mean(lo['hosts']) / MiB - statistics.mean(lo['sites_per_host']) * dh / ds / MiB:.0f}"
                      f" MiB before any site")
        emit(table)
    if "largest" not in args.skip:
        rows, held, stop = [], None, None
        for n in args.largest:
            if free_gib() < args.min_free_gib:
                stop = f"stopped before {n}: {free_gib():.1f} GiB available < {args.min_free_gib}"
                break
            res = case({"backend": "ray", "config": scale_config(n=n, steps=512, rounds=3), "rounds": 1},
                       timeout=args.max_init_s + 600)
            if "error" in res:
                rows.append([n, "failed: " + res["error"][:90], "", "", "", ""])
                stop = f"stopped at {n}: it failed"
                break
            r1 = res["rounds"][0]
            rows.append([n, f"{res['init_s']:.1f}", f"{r1['s']:.1f}", f"{res['driver_rss'] / MiB:.0f}",
                         f"{len(res['hosts'])} x {statistics.mean(res['hosts']) / MiB:.0f}", f"{free_gib():.1f}"])
            held = n
            if res["init_s"] > args.max_init_s:
                stop = f"stopped after {n}: start-up took {res['init_s']:.0f} s > {args.max_init_s:.0f} s"
                break
        note = f"   largest federation run here: {held or 'none'} sites" + (f" ({stop})" if stop else
                                                                            " (every size tried ran)")
        emit(fmt_table("4. largest federation (Ray, 1 round, ~100 sampled, 512 steps each)",
                       ["sites", "start-up s", "round s", "driver RSS MiB", "hosts x RSS MiB", "GiB free after"],
                       rows) + "\n" + note)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
