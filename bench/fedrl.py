"""Federated RL benchmark (issue 2): steps to a 475 return on every heterogeneous CartPole site.

Side by side in one run, same machine, same evaluation protocol (deterministic actions, E
episodes per site, every `--eval-every` env steps):

1. federated: `clients/cartpole/baseline.toml` (8 sites, FedAvg + PPO), one run per seed;
2. centralized: the same PPO, one agent over every site's env copies pooled (the data a
   federation is not allowed to have), same number of env steps between evaluations;
3. Stable-Baselines3 PPO (rl-zoo CartPole hyperparameters) on one site, and our PPO alone on the
   same site (bench extra: `pip install -e '.[bench]'`);
4. throughput: env steps/s of local PPO collection vs raw vector stepping with random actions.

    python bench/fedrl.py                 # 5 seeds, 400k-step cap (tens of minutes on 2 cores)
    python bench/fedrl.py --seeds 1 --max-steps 100000   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from secure_fedrl.config import load_config  # noqa: E402
from secure_fedrl.rl.envs import SiteVectorEnv, _factory, make_site_env  # noqa: E402
from secure_fedrl.rl.evaluate import evaluate  # noqa: E402
from secure_fedrl.rl.local import train_local  # noqa: E402
from secure_fedrl.rl.policies import ActorCritic  # noqa: E402
from secure_fedrl.rl.rollout import collect_rollout  # noqa: E402
from secure_fedrl.runtime.simulate import Simulation  # noqa: E402
from secure_fedrl.runtime.sites import expand_sites  # noqa: E402

TARGET = 475.0


def eval_sites(policy, specs, episodes: int, seed: int) -> list[float]:
    return [float(np.mean(evaluate(policy, s.env_id, s.overrides, episodes=episodes, seed=seed + i)))
            for i, s in enumerate(specs)]


def federated_steps(config_path: Path, seed: int, max_steps: int, eval_every_rounds: int) -> tuple[int | None, float]:
    cfg = load_config(config_path, overrides={"federation.seed": seed, "federation.rounds": 10_000,
                                              "evaluation.every": eval_every_rounds})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(cfg, Path(tmp) / "run", progress=False)
        try:
            r = 0
            while sim.env_steps < max_steps:
                r += 1
                row = sim.run_round(r)
                if row.get("eval_return_worst", -1) >= TARGET:
                    return sim.env_steps, time.perf_counter() - t0
        finally:
            sim.privacy.close()
    return None, time.perf_counter() - t0


def centralized_steps(config_path: Path, seed: int, max_steps: int, chunk: int, episodes: int) -> tuple[int | None, float]:
    cfg = load_config(config_path)
    specs = expand_sites(cfg.sites)
    torch.manual_seed(seed)
    vec = gym.vector.SyncVectorEnv(  # every site's env copies, pooled
        [_factory(s.env_id, dict(s.overrides), s.name) for s in specs for _ in range(s.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    env = SiteVectorEnv(vec, env_id=specs[0].env_id, site="central", seed=seed)
    env.reset(seed=seed)
    policy = ActorCritic(env.single_observation_space, env.single_action_space, hidden_sizes=cfg.local.hidden_sizes)
    gen = torch.Generator().manual_seed(seed)
    steps, t0 = 0, time.perf_counter()
    while steps < max_steps:
        res = train_local(policy, env, cfg.algorithm, steps=chunk, generator=gen)
        steps += res.steps
        if min(eval_sites(policy, specs, episodes, seed=steps)) >= TARGET:
            return steps, time.perf_counter() - t0
    return None, time.perf_counter() - t0


def single_site_ours(config_path: Path, seed: int, max_steps: int, chunk: int, episodes: int) -> int | None:
    cfg = load_config(config_path)
    spec = expand_sites(cfg.sites)[0]
    torch.manual_seed(seed)
    env = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=8, seed=seed, site=spec.name)
    policy = ActorCritic(env.single_observation_space, env.single_action_space, hidden_sizes=cfg.local.hidden_sizes)
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    while steps < max_steps:
        steps += train_local(policy, env, cfg.algorithm, steps=chunk, generator=gen).steps
        if min(eval_sites(policy, [spec], episodes, seed=steps)) >= TARGET:
            return steps
    return None


def single_site_sb3(config_path: Path, seed: int, max_steps: int, chunk: int, episodes: int) -> int | None:
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
    except ImportError:
        return None
    cfg = load_config(config_path)
    spec = expand_sites(cfg.sites)[0]
    env = make_vec_env(_factory(spec.env_id, dict(spec.overrides), spec.name), n_envs=8, seed=seed)
    lin = lambda v: (lambda progress: progress * v)  # noqa: E731 - rl-zoo's linear schedule
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                ent_coef=0.0, learning_rate=lin(1e-3), clip_range=lin(0.2), seed=seed, verbose=0, device="cpu")
    steps = 0
    while steps < max_steps:
        model.learn(total_timesteps=chunk, reset_num_timesteps=False)
        steps = model.num_timesteps
        returns = []
        for ep in range(episodes):
            e = _factory(spec.env_id, dict(spec.overrides), spec.name)()
            obs, _ = e.reset(seed=steps + ep)
            done, total = False, 0.0
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = e.step(int(action))
                total += r
                done = term or trunc
            returns.append(total)
        if np.mean(returns) >= TARGET:
            return steps
    return None


def throughput(config_path: Path, steps: int = 20_000) -> tuple[float, float]:
    cfg = load_config(config_path)
    spec = expand_sites(cfg.sites)[0]
    env = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=8, seed=0, site=spec.name)
    policy = ActorCritic(env.single_observation_space, env.single_action_space, hidden_sizes=cfg.local.hidden_sizes)
    gen = torch.Generator().manual_seed(0)
    per = steps // env.num_envs
    t0 = time.perf_counter()
    collect_rollout(policy, env, num_steps=per, gamma=0.98, generator=gen)
    ours = per * env.num_envs / (time.perf_counter() - t0)
    raw = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=8, seed=0, site=spec.name).env
    raw.reset(seed=0)
    raw.action_space.seed(0)
    t0 = time.perf_counter()
    for _ in range(per):
        raw.step(raw.action_space.sample())
    rand = per * env.num_envs / (time.perf_counter() - t0)
    return ours, rand


def _echo(arm: str, seed: int, result: tuple[int | None, float]) -> tuple[int | None, float]:
    print(f"  {arm} seed {seed}: {result[0] if result[0] is not None else 'not reached'} steps, "
          f"{result[1]:.0f} s", flush=True)
    return result


def fmt(values: list[int | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"not reached ({len(values)} runs)"
    miss = len(values) - len(got)
    text = f"median {statistics.median(got) / 1000:.0f}k  min {min(got) / 1000:.0f}k  max {max(got) / 1000:.0f}k"
    return text + (f"  ({miss} of {len(values)} not reached)" if miss else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "clients/cartpole/baseline.toml")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=400_000)
    ap.add_argument("--eval-episodes", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], choices=["fed", "central", "single", "throughput"])
    args = ap.parse_args()
    torch.set_num_threads(1)

    cfg = load_config(args.config)
    round_steps = cfg.local.steps * cfg.num_sites
    eval_rounds = cfg.evaluation.every
    chunk = round_steps * eval_rounds  # same env steps between evaluations in every arm
    print(f"# config {args.config.relative_to(REPO)}: {cfg.num_sites} sites, {round_steps} env steps per round, "
          f"evaluation every {chunk} steps ({args.eval_episodes} deterministic episodes per site), "
          f"target {TARGET:g} on every site, cap {args.max_steps} steps, seeds 0..{args.seeds - 1}")
    seeds = list(range(args.seeds))
    rows = []
    fed = central = None
    if "fed" not in args.skip:
        res = [_echo("federated", s, federated_steps(args.config, s, args.max_steps, eval_rounds)) for s in seeds]
        fed = [r[0] for r in res]
        rows.append(("federated FedAvg+PPO (8 sites)", fed, statistics.median(r[1] for r in res)))
    if "central" not in args.skip:
        res = [_echo("centralized", s, centralized_steps(args.config, s, args.max_steps, chunk, args.eval_episodes))
               for s in seeds]
        central = [r[0] for r in res]
        rows.append(("centralized PPO (pooled sites)", central, statistics.median(r[1] for r in res)))
    print(f"\n{'arm':34s} {'env steps to 475 on every site':52s} {'median wall s':>13s}")
    for name, values, wall in rows:
        print(f"{name:34s} {fmt(values):52s} {wall:13.0f}")
    if fed and central:
        f = [v for v in fed if v is not None]
        c = [v for v in central if v is not None]
        if f and c:
            print(f"ratio federated / centralized (medians): {statistics.median(f) / statistics.median(c):.2f}")
    if "single" not in args.skip:
        ours = [single_site_ours(args.config, s, args.max_steps, 8192, args.eval_episodes) for s in seeds]
        sb3 = [single_site_sb3(args.config, s, args.max_steps, 8192, args.eval_episodes) for s in seeds]
        print(f"\none site ({expand_sites(cfg.sites)[0].name}), 8 envs, evaluation every 8192 steps")
        print(f"{'ours PPO':34s} {fmt(ours)}")
        print(f"{'Stable-Baselines3 PPO (rl-zoo)':34s} {fmt(sb3)}")
    if "throughput" not in args.skip:
        ours, rand = throughput(args.config)
        print(f"\nthroughput, 8 envs: PPO collection {ours:,.0f} steps/s, random-action stepping {rand:,.0f} "
              f"steps/s, ratio {ours / rand:.0%}")


if __name__ == "__main__":
    main()
