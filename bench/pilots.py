"""Pilot results: federated private policy vs each site alone vs non-private federation vs baseline.

    python bench/pilots.py --pilot healthcare [--sites 120 --rounds 10 --alone 20] [--draws 3]
    python bench/pilots.py --pilot finance    [--rounds 30] [--draws 6]
    python bench/pilots.py --pilot healthcare --arms basal_bolus,federated_plain --set local.init_log_std=-1.2 --tag x

`--draws N` trains the federated DP arm N times (same config and seed, fresh secret noise each
time) and judges every draw on its own: a goal is met only if it holds on every draw.

Healthcare (clients/healthcare/federation.toml): the basal-bolus rule (action 0), the federated
client-level DP policy (the shipped config, run by the real runtime: secure aggregation,
distributed noise, ledger), the same federation without privacy, and `--alone` patients each
trained alone for the same rounds and local steps (no privacy needed: nothing leaves the pump).
Every arm is evaluated on the same seeded days per patient (`--episodes`). Goals (issue 11):
TIR(federated DP) >= TIR(basal-bolus) on >= 80 % of patients, >= TIR(site alone) on average over
the patients trained alone, and time below 54 no worse than basal-bolus (mean over patients).

Personalised healthcare arm (`--arms basal_bolus,federated_dp,finetune --finetune ROUNDS`): every
DP draw's global policy is fine-tuned at every patient for ROUNDS local rounds of the config's
learner (`secure-fedrl personalise`; `--finetune-set` changes its config only), and the first
`--alone` patients are trained alone with the same learner for rounds + ROUNDS rounds, from the
federation's initial policy: the same local data as a fine-tuned patient. The same three goals
are judged for the fine-tuned policies against those patients alone.

Finance (clients/finance/federation.toml): buy-and-hold, equal weights rebalanced weekly, the
federated trajectory-DP policy, the non-private federation and each desk trained alone (same
rounds, episodes and DP settings as in the federation: the desk's data is as private alone; as
many noise draws as the federation, `--alone-draws`), all on the held-out window 2018-2022.
Goals: held-out Sharpe of the federated policy >= the desks alone on average (their mean over
draws), and >= buy-and-hold per desk.

Writes bench/results/pilots-<pilot>.json and plots under docs/img/; prints the tables
docs/pilots.md quotes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from secure_fedrl.config import config_from_dict  # noqa: E402
from secure_fedrl.errors import ConfigError  # noqa: E402
from secure_fedrl.rl.envs import make_site_env  # noqa: E402
from secure_fedrl.rl.evaluate import evaluate_with_metrics  # noqa: E402
from secure_fedrl.rl.pilots.portfolio import PortfolioEnv, sharpe_difference  # noqa: E402
from secure_fedrl.rl.policies import set_flat  # noqa: E402
from secure_fedrl.runtime.personalise import (  # noqa: E402
    ZeroAction, check_baseline, fine_tune, fine_tune_select, parse_selection, parse_weights)
from secure_fedrl.runtime.simulate import Simulation  # noqa: E402
from secure_fedrl.runtime.site import derive_seed, initial_policy  # noqa: E402
from secure_fedrl.runtime.sites import expand_sites  # noqa: E402

RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img"


def parse_setting(text: str) -> tuple[list[str], Any]:
    """'a.b.c=VALUE' -> (['a', 'b', 'c'], VALUE parsed as a TOML value)."""
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ValueError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. local.init_log_std=-1.2")
    try:
        return path, tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--set {text!r}: VALUE is not a TOML value ({exc}); quote strings: key='\"x\"'") from None


def apply_settings(raw: dict[str, Any], settings: list[tuple[list[str], Any]]) -> None:
    """Set each dotted key in the raw config (sites.K.FIELD addresses [[sites]] entry K)."""
    for path, value in settings:
        node: Any = raw
        for part in path[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[path[-1]] = value


def train(raw: dict[str, Any], out: Path) -> tuple[Any, dict[str, Any]]:
    """Run a federation with the real runtime; return its final global policy and last metrics row."""
    config = config_from_dict(raw)
    t0 = time.perf_counter()
    sim = Simulation(config, out, progress=False)
    summary = sim.run()
    set_flat(sim.federated_params, sim.global_params)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    info = {"rounds": summary.rounds_done, "epsilon": summary.epsilon, "seconds": time.perf_counter() - t0,
            "last_row": {k: v for k, v in rows[-1].items() if not isinstance(v, (dict, list)) or k.startswith("eval_domain")}}
    print(f"  trained {config.federation.name}: {summary.describe()} in {info['seconds']:.0f}s", flush=True)
    return sim.policy, info


def dp_draws(res: dict[str, Any], raw: dict[str, Any], out: Path, draws: int, evaluate: Callable[[Any], dict]) -> None:
    """Train the DP federation `draws` times (same config and seed, fresh secret noise each time);
    every draw's evaluation in res["federated_dp_draws"], the first also as res["federated_dp"]."""
    res["federated_dp_draws"], res["federated_dp_draws_info"] = [], []
    for k in range(draws):
        policy, info = train(raw, Path(f"{out}-{k}"))
        res["federated_dp_draws"].append(evaluate(policy))
        res["federated_dp_draws_info"].append(info)
    res["federated_dp"], res["federated_dp_info"] = res["federated_dp_draws"][0], res["federated_dp_draws_info"][0]


def met_on_every_draw(draws: list[dict[str, Any]]) -> dict[str, bool]:
    return {k: all(d["goals"][k] for d in draws) for k in draws[0]["goals"]}


def evaluate_site(policy: Any, spec: Any, index: int, episodes: int) -> dict[str, float]:
    """Site `index`'s metrics on its seeded evaluation days (the same days for every arm)."""
    res = evaluate_with_metrics(policy, spec.env_id, spec.overrides, episodes=episodes,
                                seed=900_000 + 1000 * index, num_envs=min(episodes, 4))
    return {**res.metrics, "return": float(np.mean(res.returns))}


def evaluate_sites(policy: Any, specs: list, episodes: int) -> dict[str, dict[str, float]]:
    return {spec.name: evaluate_site(policy, spec, i, episodes) for i, spec in enumerate(specs)}


def train_at_site(job: tuple) -> dict[str, float]:
    """One patient's own training from `policy`, nothing leaving the pump: `rounds` rounds of the
    config's local learner on its env (the site's seed), then its evaluation. With a selection, the
    pump keeps its best checkpoint on validation days (seeds apart from the evaluation's)."""
    start, spec, index, config, rounds, seed, episodes, keep = job
    torch.set_num_threads(1)
    # The pool pickles tensors into shared memory (torch's reductions), so `start` is one storage
    # for every job and for the caller: train a private copy, or the patients would train one
    # policy in turn and the caller's policy with them.
    policy = copy.deepcopy(start)
    env = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=spec.num_envs, seed=spec.seed, site=spec.name)
    generator = torch.Generator().manual_seed(seed)
    kept, weight = rounds, 1.0
    if keep is None:
        fine_tune(policy, env, config, rounds, generator)
    else:
        selection, check_every, val_episodes, baseline, weights = keep

        def validate(p: Any) -> dict[str, float]:
            res = evaluate_with_metrics(p, spec.env_id, spec.overrides, episodes=val_episodes,
                                        seed=700_000 + 1000 * index, num_envs=min(val_episodes, 4))
            return {**res.metrics, "return": float(np.mean(res.returns))}

        origin = (initial_policy(config, env.single_observation_space, env.single_action_space).state_dict()
                  if weights else None)
        tuned = fine_tune_select(policy, env, config, rounds, generator, selection=selection, check_every=check_every,
                                 validate=validate, baseline=baseline, origin=origin, weights=weights)
        kept, weight = tuned.kept_round, tuned.kept_weight
    env.close()
    return {**evaluate_site(policy, spec, index, episodes), "kept_round": kept, "kept_weight": weight}


def train_at_sites(starts: list[Any], specs: list, config: Any, rounds: int, episodes: int, tag: int,
                   keep: tuple | None = None) -> dict[str, dict[str, float]]:
    """train_at_site for every (start policy, site), on all cores."""
    import multiprocessing

    jobs = [(start, spec, i, config, rounds, derive_seed(config.federation.seed, tag, i, 0xF17E), episodes, keep)
            for i, (start, spec) in enumerate(zip(starts, specs))]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        return dict(zip([s.name for s in specs], pool.map(train_at_site, jobs)))


def private_to_plain(raw: dict[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(raw))
    plain["privacy"] = {"unit": "none"}
    plain["federation"]["name"] += "-nonprivate"
    return plain


def alone(raw: dict[str, Any], site: dict[str, Any], name: str, *, private: bool) -> dict[str, Any]:
    """The same training, on one site only (no server to hide from: no secure aggregation)."""
    solo = json.loads(json.dumps(raw))
    solo["federation"]["name"] += f"-alone-{name}"
    solo["sites"] = [{**site, "count": 1}]
    solo["secure_aggregation"] = {"enabled": False}
    solo.pop("sampling", None)
    if not private:
        solo["privacy"] = {"unit": "none"}
    else:
        solo["privacy"].pop("threat_model", None)
    solo["evaluation"] = {"every": 10_000, "episodes": 1}
    return solo


# ---------------------------------------------------------------------------------------------
# Healthcare
# ---------------------------------------------------------------------------------------------


def healthcare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    raw = tomllib.loads((args.config or ROOT / "clients/healthcare/federation.toml").read_text())
    if args.rounds:
        raw["federation"]["rounds"] = args.rounds
    if args.sites:
        raw["sites"][0]["count"] = args.sites
    if args.steps:
        raw["local"]["steps"] = args.steps
    if args.fraction:
        raw["sampling"]["fraction"] = args.fraction
    if args.hypo_penalty is not None:
        raw["sites"][0].setdefault("overrides", {})["hypo_penalty"] = args.hypo_penalty
    apply_settings(raw, args.settings)
    raw["evaluation"] = {"every": 10_000, "episodes": 1, "max_sites": 1}  # the bench evaluates itself
    specs = expand_sites(config_from_dict(raw).sites)
    print(f"healthcare: {len(specs)} patients, {raw['federation']['rounds']} rounds", flush=True)
    results: dict[str, Any] = {"config": {"sites": len(specs), "rounds": raw["federation"]["rounds"],
                                          "steps": raw["local"].get("steps", 0), "episodes": args.episodes,
                                          "fraction": raw["sampling"]["fraction"],
                                          "settings": {".".join(k): v for k, v in args.settings}}}
    arms = args.arms.split(",")
    t = time.perf_counter()
    if "basal_bolus" in arms:
        results["basal_bolus"] = evaluate_sites(ZeroAction(gym.spaces.Box(-1.0, 1.0, (2,))), specs, args.episodes)
        print(f"  basal-bolus evaluated in {time.perf_counter() - t:.0f}s", flush=True)
    personalise = "finetune" in arms
    if personalise and (args.finetune < 1 or "federated_dp" not in arms or "basal_bolus" not in arms):
        raise SystemExit("pilots.py: --arms finetune needs --finetune ROUNDS >= 1 and the basal_bolus and "
                         "federated_dp arms in the same run")
    tuned_raw = json.loads(json.dumps(raw))
    apply_settings(tuned_raw, args.finetune_settings)
    tuned = config_from_dict(tuned_raw)
    tuned_draws: list[dict[str, Any]] = []
    keep = None
    if args.finetune_keep_best:
        keep = (parse_selection(args.finetune_keep_best, args.finetune_require),
                args.finetune_check_every or max(1, args.finetune // 4), args.finetune_validation_episodes,
                args.finetune_baseline, args.finetune_interpolate)

    def judge(policy: Any) -> dict[str, Any]:
        """Evaluate a DP draw's global policy; with `finetune`, also every patient's fine-tune of it."""
        if personalise:
            t0 = time.perf_counter()
            tuned_draws.append(train_at_sites([policy] * len(specs), specs, tuned, args.finetune, args.episodes,
                                              tag=len(tuned_draws), keep=keep))
            print(f"  {len(specs)} patients fine-tuned for {args.finetune} rounds in {time.perf_counter() - t0:.0f}s", flush=True)
        return evaluate_sites(policy, specs, args.episodes)

    if "federated_dp" in arms:
        dp_draws(results, raw, work / "hc-dp", args.draws, judge)
    if personalise:
        # Each patient alone with the fine-tune's learner for as many rounds as a fine-tuned patient
        # trained in all (federated + fine-tune): the same local data, no federation.
        n, total = min(args.alone, len(specs)), raw["federation"]["rounds"] + args.finetune
        env = make_site_env(specs[0].env_id, overrides=specs[0].overrides, num_envs=1, seed=0, site=specs[0].name)
        start = initial_policy(tuned, env.single_observation_space, env.single_action_space)
        env.close()
        t0 = time.perf_counter()
        # (Their start is the initial policy itself: interpolating towards it would add no candidate.)
        results["alone_same_data"] = train_at_sites([start] * n, specs[:n], tuned, total, args.episodes, tag=10_000,
                                                 keep=None if keep is None else (*keep[:4], ()))
        print(f"  {n} patients trained alone for {total} rounds in {time.perf_counter() - t0:.0f}s", flush=True)
        results["federated_dp_finetuned_draws"] = tuned_draws
        results["finetune"] = {"rounds": args.finetune, "alone_rounds": total,
                               "settings": {".".join(k): v for k, v in args.finetune_settings},
                               "keep_best": args.finetune_keep_best, "require": args.finetune_require,
                               "check_every": None if keep is None else keep[1],
                               "validation_episodes": None if keep is None else keep[2],
                               "baseline": None if keep is None else keep[3],
                               "interpolate": list(args.finetune_interpolate)}
        results["finetune_summary"] = finetune_summary(results)
    if "federated_plain" in arms:
        policy, results["federated_plain_info"] = train(private_to_plain(raw), work / "hc-plain")
        results["federated_plain"] = evaluate_sites(policy, specs, args.episodes)
    if "alone" in arms:
        results["alone"] = {}
        for spec in specs[: args.alone]:
            site = {"name": spec.name, "env": spec.env_id, "num_envs": spec.num_envs, "seed": spec.seed,
                    "overrides": dict(spec.overrides)}
            policy, _ = train(alone(raw, site, spec.name, private=False), work / f"hc-alone-{spec.name}")
            results["alone"].update(evaluate_sites(policy, [spec], args.episodes))
    if all(a in results for a in ("basal_bolus", "federated_dp", "federated_plain", "alone")):
        results["summary"] = healthcare_summary(results)
        plot_healthcare(results)
    return results


def healthcare_summary(r: dict[str, Any]) -> dict[str, Any]:
    names = list(r["basal_bolus"])
    alone_names = list(r["alone"])

    def col(arm: str, key: str, subset: list[str] = names) -> np.ndarray:
        return np.array([r[arm][n][key] for n in subset])

    s: dict[str, Any] = {}
    for arm in ("basal_bolus", "federated_dp", "federated_plain"):
        s[arm] = {k: float(col(arm, k).mean()) for k in ("time_in_range", "time_below_70", "time_below_54",
                                                         "time_above_180", "mean_risk")}
        s[arm]["worst_time_in_range"] = float(col(arm, "time_in_range").min())
    dp, base = col("federated_dp", "time_in_range"), col("basal_bolus", "time_in_range")
    s["dp_ge_baseline_fraction"] = float(np.mean(dp >= base - 1e-12))
    s["plain_ge_baseline_fraction"] = float(np.mean(col("federated_plain", "time_in_range") >= base - 1e-12))
    if alone_names:
        s["alone_subset"] = {
            "sites": len(alone_names),
            "alone_tir": float(col("alone", "time_in_range", alone_names).mean()),
            "federated_dp_tir": float(col("federated_dp", "time_in_range", alone_names).mean()),
            "federated_plain_tir": float(col("federated_plain", "time_in_range", alone_names).mean()),
            "basal_bolus_tir": float(col("basal_bolus", "time_in_range", alone_names).mean()),
            "alone_below_54": float(col("alone", "time_below_54", alone_names).mean()),
        }
    s["draws"] = []  # every noise draw of the DP arm, each judged on its own
    for draw in r.get("federated_dp_draws") or [r["federated_dp"]]:
        tir = np.array([draw[n]["time_in_range"] for n in names])
        d = {"time_in_range": float(tir.mean()), "ge_baseline_fraction": float(np.mean(tir >= base - 1e-12)),
             "time_below_54": float(np.mean([draw[n]["time_below_54"] for n in names]))}
        if alone_names:
            d["alone_subset_tir"] = float(np.mean([draw[n]["time_in_range"] for n in alone_names]))
        d["goals"] = {
            "tir_dp_ge_baseline_on_80pct": d["ge_baseline_fraction"] >= 0.8,
            "tir_dp_ge_alone_on_average": bool(alone_names) and d["alone_subset_tir"] >= s["alone_subset"]["alone_tir"],
            "below54_dp_no_worse_than_baseline": d["time_below_54"] <= s["basal_bolus"]["time_below_54"] + 1e-12,
        }
        s["draws"].append(d)
    s["goals"] = met_on_every_draw(s["draws"])
    return s


def finetune_summary(r: dict[str, Any]) -> dict[str, Any]:
    """Personalised arm: each DP draw's global policy fine-tuned at every pump, judged on the goals
    against the rule and against patients alone given the same local data (`alone_same_data`)."""
    base, alone = r["basal_bolus"], r["alone_same_data"]
    names, alone_names = list(base), list(alone)
    base_tir = np.array([base[n]["time_in_range"] for n in names])
    alone_tir = float(np.mean([alone[n]["time_in_range"] for n in alone_names]))
    base_b54 = float(np.mean([base[n]["time_below_54"] for n in names]))
    s: dict[str, Any] = {"alone_same_data": {
        "sites": len(alone_names), "rounds": r["finetune"]["alone_rounds"], "time_in_range": alone_tir,
        "time_below_54": float(np.mean([alone[n]["time_below_54"] for n in alone_names])),
        "basal_bolus_tir": float(np.mean([base[n]["time_in_range"] for n in alone_names]))},
        "basal_bolus_below_54": base_b54, "draws": []}
    for global_eval, draw in zip(r["federated_dp_draws"], r["federated_dp_finetuned_draws"]):
        tir = np.array([draw[n]["time_in_range"] for n in names])
        d = {"global_time_in_range": float(np.mean([global_eval[n]["time_in_range"] for n in names])),
             "time_in_range": float(tir.mean()), "worst_time_in_range": float(tir.min()),
             "ge_baseline_fraction": float(np.mean(tir >= base_tir - 1e-12)),
             **{k: float(np.mean([draw[n][k] for n in names])) for k in ("time_below_70", "time_below_54", "mean_risk")},
             "alone_subset_tir": float(np.mean([draw[n]["time_in_range"] for n in alone_names])),
             "kept_start_fraction": float(np.mean([draw[n].get("kept_round", -1) == 0 for n in names])),
             "mean_kept_round": float(np.mean([draw[n].get("kept_round", r["finetune"]["rounds"]) for n in names])),
             "mean_kept_weight": float(np.mean([draw[n].get("kept_weight", 1.0) for n in names])),
             "global_ge_baseline_fraction": float(np.mean(
                 np.array([global_eval[n]["time_in_range"] for n in names]) >= base_tir - 1e-12))}
        d["goals"] = {"tir_ge_baseline_on_80pct": d["ge_baseline_fraction"] >= 0.8,
                      "tir_ge_alone_on_average": d["alone_subset_tir"] >= alone_tir,
                      "below54_no_worse_than_baseline": d["time_below_54"] <= base_b54 + 1e-12}
        s["draws"].append(d)
    s["goals"] = met_on_every_draw(s["draws"])
    return s


def markdown_finetune(r: dict[str, Any]) -> str:
    s, f = r["finetune_summary"], r["finetune"]
    a = s["alone_same_data"]
    lines = [f"Each DP draw's global policy fine-tuned at every pump for {f['rounds']} rounds"
             f"{' (' + ', '.join(f'{k} = {v}' for k, v in f['settings'].items()) + ')' if f['settings'] else ''}; "
             f"{a['sites']} patients alone with the same learner for {a['rounds']} rounds: TIR {100 * a['time_in_range']:.1f} % "
             f"(basal-bolus on them {100 * a['basal_bolus_tir']:.1f} %), below 54 {100 * a['time_below_54']:.2f} %.", "",
             "| DP draw | TIR, global policy | TIR, fine-tuned | >= basal-bolus on | worst patient | below 70 | below 54 "
             f"(rule: {100 * s['basal_bolus_below_54']:.2f} %) | mean risk | TIR on the patients alone |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {k + 1} | {100 * d['global_time_in_range']:.1f} % | {100 * d['time_in_range']:.1f} % | "
              f"{100 * d['ge_baseline_fraction']:.0f} % | {100 * d['worst_time_in_range']:.1f} % | {100 * d['time_below_70']:.2f} % | "
              f"{100 * d['time_below_54']:.2f} % | {d['mean_risk']:.2f} | {100 * d['alone_subset_tir']:.1f} % |"
              for k, d in enumerate(s["draws"])]
    if f.get("keep_best"):
        lines += ["", f"Each pump kept its best checkpoint (every {f['check_every']} rounds, the federated start "
                  f"included) by {f['keep_best']}" + (f" subject to {', '.join(f['require'])}" if f["require"] else "")
                  + " on its own validation days: " + "; ".join(
                      f"draw {k + 1}: start kept at {100 * d['kept_start_fraction']:.0f} % of pumps, mean kept round "
                      f"{d['mean_kept_round']:.1f}" + (f", mean weight of the federated policy in the kept start "
                                                         f"{d['mean_kept_weight']:.2f}" if f.get("interpolate") else "")
                      for k, d in enumerate(s["draws"])) + "."]
    lines += ["", "Goals, fine-tuned (on every draw): " + ", ".join(f"{k} {'MET' if v else 'NOT met'}" for k, v in s["goals"].items())]
    return "\n".join(lines)


def plot_finetune(r: dict[str, Any], name: str = "pilot_healthcare_tir_personalised.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, tuned, alone = r["basal_bolus"], r["federated_dp_finetuned_draws"][0], r["alone_same_data"]
    names = sorted(base, key=lambda n: base[n]["time_in_range"])
    idx = {n: i for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(range(len(names)), [100 * base[n]["time_in_range"] for n in names], "k-", lw=1.5, label="basal-bolus rule")
    ax.plot(range(len(names)), [100 * r["federated_dp"][n]["time_in_range"] for n in names], "o", color="tab:blue", ms=3,
            label="federated DP (eps 8), global policy")
    ax.plot(range(len(names)), [100 * tuned[n]["time_in_range"] for n in names], "^", color="tab:purple", ms=4,
            label=f"federated DP + {r['finetune']['rounds']} rounds fine-tuned at the pump"
                  + (" (best checkpoint on validation days)" if r["finetune"].get("keep_best") else ""))
    ax.plot([idx[n] for n in alone], [100 * alone[n]["time_in_range"] for n in alone], "x", color="tab:red", ms=6,
            label=f"patient alone, {r['finetune']['alone_rounds']} rounds (same local data)")
    save_tir_plot(fig, ax, name)


def plot_healthcare(r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(r["basal_bolus"], key=lambda n: r["basal_bolus"][n]["time_in_range"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(x, [100 * r["basal_bolus"][n]["time_in_range"] for n in names], "k-", lw=1.5, label="basal-bolus rule")
    ax.plot(x, [100 * r["federated_plain"][n]["time_in_range"] for n in names], ".", color="tab:green", ms=5,
            label="federated, no privacy")
    ax.plot(x, [100 * r["federated_dp"][n]["time_in_range"] for n in names], "o", color="tab:blue", ms=3,
            label="federated, client-level DP (eps 8)")
    idx = {n: i for i, n in enumerate(names)}
    alone_names = list(r["alone"])
    ax.plot([idx[n] for n in alone_names], [100 * r["alone"][n]["time_in_range"] for n in alone_names], "x",
            color="tab:red", ms=6, label="patient trained alone")
    save_tir_plot(fig, ax, "pilot_healthcare_tir.png")


def save_tir_plot(fig: Any, ax: Any, name: str) -> None:
    """The TIR-per-patient plots' axes, legend and file under docs/img/."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("patient (sorted by time in range under the basal-bolus rule)")
    ax.set_ylabel("time in range 70-180 mg/dL (%)")
    ax.set_ylim(0, 101)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Finance
# ---------------------------------------------------------------------------------------------


def held_out_path(overrides: dict[str, float], act: Callable[[PortfolioEnv, np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Run one policy over a desk's held-out window; its metrics and daily equity curve."""
    env = PortfolioEnv(**{k: float(v) for k, v in overrides.items() if k in ("desk",)}, split=1.0)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, _, term, trunc, info = env.step(act(env, obs))
        done = term or trunc
    return {**info["episode_metrics"], "equity": env.values, "dates": [str(d) for d in env.dates[env.start:env.end + 1]]}


def policy_actor(policy: Any) -> Callable[[PortfolioEnv, np.ndarray], np.ndarray]:
    def act(env: PortfolioEnv, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            a = policy.deterministic_action(torch.from_numpy(obs.reshape(1, -1))).cpu().numpy()[0]
        return np.clip(a, -1.0, 1.0)

    return act


def finance(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    raw = tomllib.loads((args.config or ROOT / "clients/finance/federation.toml").read_text())
    if args.rounds:
        raw["federation"]["rounds"] = args.rounds
    apply_settings(raw, args.settings)
    raw["evaluation"] = {"every": 10_000, "episodes": 1}
    specs = expand_sites(config_from_dict(raw).sites)
    print(f"finance: {len(specs)} desks, {raw['federation']['rounds']} rounds", flush=True)
    res: dict[str, Any] = {"config": {"desks": len(specs), "rounds": raw["federation"]["rounds"],
                                      "settings": {".".join(k): v for k, v in args.settings}}}
    res["buy_and_hold"] = {s.name: held_out_path(s.overrides, lambda e, o: e.buy_and_hold_action()) for s in specs}
    res["equal_weight"] = {s.name: held_out_path(s.overrides, lambda e, o: e.equal_weight_action()) for s in specs}
    dp_draws(res, raw, work / "fi-dp", args.draws,
             lambda policy: {s.name: held_out_path(s.overrides, policy_actor(policy)) for s in specs})
    policy, res["federated_plain_info"] = train(private_to_plain(raw), work / "fi-plain")
    res["federated_plain"] = {s.name: held_out_path(s.overrides, policy_actor(policy)) for s in specs}
    # Each desk alone is as noisy as the federation (fresh secret noise per run): as many draws,
    # so "federated >= alone" compares two averages, not a federated draw with one alone draw.
    res["alone_draws"] = []
    for k in range(args.alone_draws or args.draws):
        draw = {}
        for s, site in zip(specs, raw["sites"]):
            policy, _ = train(alone(raw, site, s.name, private=True), work / f"fi-alone-{s.name}-{k}")
            draw[s.name] = held_out_path(s.overrides, policy_actor(policy))
        res["alone_draws"].append(draw)
    res["alone"] = res["alone_draws"][0]
    for arm in [res["equal_weight"], res["federated_plain"]] + res["federated_dp_draws"] + res["alone_draws"]:
        for name, desk in arm.items():  # is a desk's deficit against buy-and-hold more than noise?
            desk["vs_buy_and_hold"] = sharpe_difference(desk["equity"], res["buy_and_hold"][name]["equity"])
    res["summary"] = finance_summary(res)
    plot_finance(res)
    for arm in [res[a] for a in ("buy_and_hold", "equal_weight", "federated_plain")] + res["federated_dp_draws"] + res["alone_draws"]:
        for desk in arm.values():  # the curves are in the plot; keep the results file small
            desk.pop("equity", None)
            desk.pop("dates", None)
    return res


def finance_summary(r: dict[str, Any]) -> dict[str, Any]:
    names = list(r["buy_and_hold"])
    arms = ("buy_and_hold", "equal_weight", "federated_dp", "federated_plain", "alone")
    s: dict[str, Any] = {arm: {k: float(np.mean([r[arm][n][k] for n in names]))
                               for k in ("annual_return", "sharpe", "max_drawdown", "turnover")} for arm in arms}
    dp = np.array([r["federated_dp"][n]["sharpe"] for n in names])
    bh = np.array([r["buy_and_hold"][n]["sharpe"] for n in names])
    s["dp_ge_buy_and_hold_desks"] = int(np.sum(dp >= bh))
    alone_draws = r.get("alone_draws") or [r["alone"]]
    s["alone_draws"] = [float(np.mean([d[n]["sharpe"] for n in names])) for d in alone_draws]
    alone_sharpe = float(np.mean(s["alone_draws"]))  # the desks alone, mean over their noise draws
    s["draws"] = []  # every noise draw of the DP arm, each judged on its own
    for draw in r.get("federated_dp_draws") or [r["federated_dp"]]:
        sh = np.array([draw[n]["sharpe"] for n in names])
        below = [n for n in names if "vs_buy_and_hold" in draw[n] and draw[n]["vs_buy_and_hold"]["high"] < 0.0]
        s["draws"].append({"sharpe": float(sh.mean()), "ge_buy_and_hold_desks": int(np.sum(sh >= bh)),
                           "below_buy_and_hold_beyond_noise": below,
                           "goals": {"sharpe_dp_ge_alone_on_average": float(sh.mean()) >= alone_sharpe,
                                     "sharpe_dp_ge_buy_and_hold_every_desk": bool(np.all(sh >= bh))}})
    s["goals"] = met_on_every_draw(s["draws"])
    s["over_draws"] = {"federated_dp_sharpe": float(np.mean([d["sharpe"] for d in s["draws"]])),
                       "alone_sharpe": alone_sharpe}
    return s


def plot_finance(r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    names = list(r["buy_and_hold"])
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.3 * rows), sharex=True)
    styles = {"buy_and_hold": ("buy-and-hold", "k", "-"), "equal_weight": ("equal weight, weekly", "gray", "--"),
              "alone": ("desk alone (DP)", "tab:red", "-"), "federated_plain": ("federated, no privacy", "tab:green", "-"),
              "federated_dp": ("federated, trajectory DP", "tab:blue", "-")}
    for ax, name in zip(np.ravel(axes), names):
        dates = np.array(r["buy_and_hold"][name]["dates"], dtype="datetime64[D]")
        for arm, (label, color, ls) in styles.items():
            eq = r[arm][name]["equity"]
            ax.plot(dates[: len(eq)], eq, color=color, ls=ls, lw=1.2,
                    label=f"{label} (Sharpe {r[arm][name]['sharpe']:.2f})")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left")
        ax.xaxis.set_major_locator(mdates.YearLocator())
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y"))
    for ax in np.ravel(axes)[len(names):]:
        ax.axis("off")
    fig.suptitle("held-out equity curves 2018-2022 (start = 1)", fontsize=11)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "pilot_finance_equity.png", dpi=110)
    plt.close(fig)


def markdown_healthcare(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = ["| arm | TIR 70-180 (mean) | worst patient TIR | below 70 | below 54 | above 180 | mean risk |",
             "|---|---|---|---|---|---|---|"]
    for arm, label in (("basal_bolus", "basal-bolus rule"), ("federated_plain", "federated, no privacy"),
                       ("federated_dp", "federated, client-level DP")):
        a = s[arm]
        lines.append(f"| {label} | {100 * a['time_in_range']:.1f} % | {100 * a['worst_time_in_range']:.1f} % | "
                     f"{100 * a['time_below_70']:.2f} % | {100 * a['time_below_54']:.2f} % | "
                     f"{100 * a['time_above_180']:.1f} % | {a['mean_risk']:.2f} |")
    if "alone_subset" in s:
        a = s["alone_subset"]
        lines += ["", f"On the {a['sites']} patients also trained alone: TIR alone {100 * a['alone_tir']:.1f} %, "
                      f"federated DP {100 * a['federated_dp_tir']:.1f} %, federated no privacy "
                      f"{100 * a['federated_plain_tir']:.1f} %, basal-bolus {100 * a['basal_bolus_tir']:.1f} %."]
    lines += ["", f"Federated DP TIR >= basal-bolus on {100 * s['dp_ge_baseline_fraction']:.0f} % of patients "
                  f"(non-private federation: {100 * s['plain_ge_baseline_fraction']:.0f} %)."]
    if len(s["draws"]) > 1:
        lines += ["", "| DP noise draw | TIR | >= basal-bolus on | below 54 | TIR on the patients alone |", "|---|---|---|---|---|"]
        lines += [f"| {k + 1} | {100 * d['time_in_range']:.1f} % | {100 * d['ge_baseline_fraction']:.0f} % | "
                  f"{100 * d['time_below_54']:.2f} % | {100 * d.get('alone_subset_tir', float('nan')):.1f} % |"
                  for k, d in enumerate(s["draws"])]
    lines += ["", "Goals (on every draw): " + ", ".join(f"{k} {'MET' if v else 'NOT met'}" for k, v in s["goals"].items())]
    return "\n".join(lines)


def markdown_healthcare_arms(r: dict[str, Any]) -> str:
    """The arms a partial run evaluated (mean over its patients), against the rule where it ran."""
    base = r.get("basal_bolus")
    arms = [("basal_bolus", "basal-bolus rule", r.get("basal_bolus")),
            ("federated_plain", "federated, no privacy", r.get("federated_plain"))]
    arms += [("federated_dp", f"federated DP, draw {k + 1}", d) for k, d in enumerate(r.get("federated_dp_draws") or [])]
    lines = ["| arm | TIR 70-180 | >= basal-bolus on | below 70 | below 54 | mean risk | return (env reward) |",
             "|---|---|---|---|---|---|---|"]
    for _, label, res in arms:
        if not res:
            continue
        names = list(res)
        mean = {k: float(np.mean([res[n][k] for n in names]))
                for k in ("time_in_range", "time_below_70", "time_below_54", "mean_risk", "return")}
        ge = (f"{100 * np.mean([res[n]['time_in_range'] >= base[n]['time_in_range'] - 1e-12 for n in names]):.0f} %"
              if base and res is not base else "-")
        lines.append(f"| {label} | {100 * mean['time_in_range']:.1f} % | {ge} | {100 * mean['time_below_70']:.2f} % | "
                     f"{100 * mean['time_below_54']:.2f} % | {mean['mean_risk']:.2f} | {mean['return']:.1f} |")
    return "\n".join(lines)


def markdown_finance(r: dict[str, Any]) -> str:
    names = list(r["buy_and_hold"])
    arms = (("buy_and_hold", "buy-and-hold"), ("equal_weight", "equal weight"), ("alone", "desk alone (DP)"),
            ("federated_plain", "federated, no privacy"), ("federated_dp", "federated, trajectory DP"))
    lines = ["| desk | " + " | ".join(label for _, label in arms) + " |", "|---|" + "---|" * len(arms)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{r[a][n]['sharpe']:.2f}" for a, _ in arms) + " |")
    s = r["summary"]
    lines.append("| **mean** | " + " | ".join(f"**{s[a]['sharpe']:.2f}**" for a, _ in arms) + " |")
    lines += ["", "| arm (mean over desks) | annual return | Sharpe | max drawdown | turnover / year |", "|---|---|---|---|---|"]
    for a, label in arms:
        m = s[a]
        lines.append(f"| {label} | {100 * m['annual_return']:.1f} % | {m['sharpe']:.2f} | "
                     f"{100 * m['max_drawdown']:.1f} % | {m['turnover']:.2f} |")
    lines += ["", f"Federated DP Sharpe >= buy-and-hold on {s['dp_ge_buy_and_hold_desks']} of {len(names)} desks."]
    if len(s["draws"]) > 1:
        alone = s.get("alone_draws", [])
        dp = r.get("federated_dp_draws") or [r["federated_dp"]]

        def worst(draw: dict[str, Any]) -> str:
            name = min(names, key=lambda n: draw[n]["sharpe"] - r["buy_and_hold"][n]["sharpe"])
            v = draw[name].get("vs_buy_and_hold")
            return f"{name} {v['difference']:+.3f} ({v['low']:+.2f} .. {v['high']:+.2f})" if v else name

        lines += ["", "| noise draw | federated DP: mean Sharpe | desks >= buy-and-hold | its worst desk against "
                      "buy-and-hold (95 % paired block bootstrap) | desks alone (DP): mean Sharpe |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k + 1} | {d['sharpe']:.3f} | {d['ge_buy_and_hold_desks']} of {len(names)} | {worst(dp[k])} | "
                  f"{f'{alone[k]:.3f}' if k < len(alone) else '-'} |" for k, d in enumerate(s["draws"])]
        if "over_draws" in s:
            o = s["over_draws"]
            lines += ["", f"Mean over draws: federated DP {o['federated_dp_sharpe']:.3f}, desks alone {o['alone_sharpe']:.3f}."]
        beyond = sorted({n for d in s["draws"] for n in d.get("below_buy_and_hold_beyond_noise", [])})
        lines += ["", "Desks whose federated DP Sharpe is below buy-and-hold's beyond the 95 % interval, on any draw: "
                  + (", ".join(beyond) or "none") + "."]
    lines += ["", "Goals (on every draw): " + ", ".join(f"{k} {'MET' if v else 'NOT met'}" for k, v in s["goals"].items())]
    return "\n".join(lines)


def env_speed(seconds: float = 3.0) -> dict[str, float]:
    """Raw env steps per second (one env, fixed action, episodes reset as they end)."""
    from secure_fedrl.rl.pilots.hovorka import HovorkaEnv

    out = {}
    for name, env, action in (("hovorka", HovorkaEnv(patient_seed=1.0), np.zeros(2, dtype=np.float32)),
                              ("portfolio", PortfolioEnv(desk=0.0), np.zeros(6, dtype=np.float32))):
        env.reset(seed=0)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            *_, term, trunc, _ = env.step(action)
            n += 1
            if term or trunc:
                env.reset()
        out[name] = n / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pilot", choices=("healthcare", "finance", "speed"), required=True)
    p.add_argument("--config", type=Path, default=None,
                   help="federation config to run (default: clients/<pilot>/federation.toml)")
    p.add_argument("--rounds", type=int, default=0, help="override federation.rounds")
    p.add_argument("--sites", type=int, default=0, help="healthcare: number of patients (default: the config's)")
    p.add_argument("--steps", type=int, default=0, help="healthcare: local env steps per round")
    p.add_argument("--alone", type=int, default=20, help="healthcare: patients also trained alone")
    p.add_argument("--episodes", type=int, default=4, help="healthcare: evaluation days per patient")
    p.add_argument("--draws", type=int, default=1, help="federated DP arm: independent runs (fresh secret noise each)")
    p.add_argument("--alone-draws", type=int, default=0,
                   help="finance: independent runs of each desk alone (default: as many as --draws)")
    p.add_argument("--fraction", type=float, default=0.0, help="healthcare: override sampling.fraction")
    p.add_argument("--hypo-penalty", type=float, default=None, help="healthcare: override the env's hypo_penalty")
    p.add_argument("--arms", default="basal_bolus,federated_dp,federated_plain,alone",
                   help="healthcare: which arms to run (run arms in parallel processes, then --merge)")
    p.add_argument("--merge", type=Path, nargs="*", default=None,
                   help="healthcare: combine the JSON files of separately run arms, then summarize and plot")
    p.add_argument("--work", type=Path, default=None, help="run directories (default: a temp dir)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key by its dotted path, VALUE in TOML syntax (repeatable), "
                        "e.g. --set local.init_log_std=-1.2 --set local.ppo.learning_rate=3e-3")
    p.add_argument("--tag", default="", help="appended to the results file name (experiments)")
    p.add_argument("--finetune", type=int, default=0, metavar="ROUNDS",
                   help="healthcare, arm `finetune`: local rounds each patient trains the DP global policy further")
    p.add_argument("--finetune-set", dest="finetune_settings", action="append", default=[], metavar="KEY=VALUE",
                   help="like --set, for the fine-tune's (and its alone comparison's) config only")
    p.add_argument("--finetune-keep-best", metavar="[max:|min:]METRIC", default=None,
                   help="the fine-tune (and the alone comparison) keeps its best checkpoint by METRIC on "
                        "separate validation days (`secure-fedrl personalise --keep-best`)")
    p.add_argument("--finetune-require", action="append", default=[], metavar="METRIC<=BOUND",
                   help="with --finetune-keep-best: bounds a kept checkpoint must meet (repeatable, priority order)")
    p.add_argument("--finetune-baseline", choices=("zero", "start"), default=None,
                   help="with --finetune-keep-best: what baseline[+-X] bounds are measured from (zero: the "
                        "pump's programmed therapy, on the same validation days)")
    p.add_argument("--finetune-check-every", type=int, default=0, metavar="K",
                   help="with --finetune-keep-best: validate every K rounds (default: a quarter of --finetune)")
    p.add_argument("--finetune-interpolate", type=str, default="", metavar="W[,W...]",
                   help="with --finetune-keep-best: also validate the starts interpolated towards the initial "
                        "policy (`secure-fedrl personalise --interpolate`)")
    p.add_argument("--finetune-validation-episodes", type=int, default=4, metavar="N",
                   help="with --finetune-keep-best: validation days per check (seeds apart from the evaluation's)")
    args = p.parse_args(argv)
    if args.draws < 1 or args.alone_draws < 0:
        p.error(f"--draws must be >= 1 and --alone-draws >= 0 (got {args.draws} and {args.alone_draws})")
    try:
        args.settings = [parse_setting(text) for text in args.settings]
        args.finetune_settings = [parse_setting(text) for text in args.finetune_settings]
        args.finetune_interpolate = parse_weights(args.finetune_interpolate) if args.finetune_interpolate else ()
        if args.finetune_interpolate and not args.finetune_keep_best:
            raise ConfigError("--finetune-interpolate needs --finetune-keep-best")
        if args.finetune_keep_best:
            check_baseline(parse_selection(args.finetune_keep_best, args.finetune_require), args.finetune_baseline)
    except (ValueError, ConfigError) as exc:
        p.error(str(exc))
    if args.pilot == "speed":
        print(json.dumps({k: round(v) for k, v in env_speed().items()}), "env steps/s")
        return 0
    if args.merge:
        merged: dict[str, Any] = {}
        for path in args.merge:
            part = json.loads(path.read_text())
            merged.update({k: v for k, v in part.items() if k not in ("config", "wall_seconds", "summary")})
            merged.setdefault("config", part["config"])
            merged.setdefault("wall_seconds_per_part", []).append(part.get("wall_seconds"))
        merged["summary"] = healthcare_summary(merged)
        plot_healthcare(merged)
        (RESULTS / "pilots-healthcare.json").write_text(json.dumps(merged, indent=1, default=float))
        print(json.dumps(merged["summary"], indent=1))
        print(markdown_healthcare(merged))
        return 0
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="pilots-"))
    os.environ.setdefault("XDG_CONFIG_HOME", str(work / "keys"))  # bench ledger keys, apart from the runs
    t = time.perf_counter()
    res = healthcare(args, work) if args.pilot == "healthcare" else finance(args, work)
    res["wall_seconds"] = time.perf_counter() - t
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.pilot == "finance" or "summary" in res else "-" + args.arms.replace(",", "+")
    if args.hypo_penalty is not None:
        suffix += f"-hypo{args.hypo_penalty:g}"
    if args.tag:
        suffix += "-" + args.tag
    (RESULTS / f"pilots-{args.pilot}{suffix}.json").write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps(res.get("summary", {}), indent=1))
    if "summary" in res:
        print(markdown_healthcare(res) if args.pilot == "healthcare" else markdown_finance(res))
    elif args.pilot == "healthcare":
        print(markdown_healthcare_arms(res))
    if "finetune_summary" in res:
        plot_finetune(res, f"pilot_healthcare_tir_personalised{'-' + args.tag if args.tag else ''}.png")  # one per run
        print(json.dumps(res["finetune_summary"], indent=1))
        print(markdown_finetune(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
