#!/usr/bin/env python3
"""Empirical lower bound on epsilon from one training run with canaries.

Method: Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023).
m canaries are each included independently with probability 1/2 (S_i = +1 in, -1 out). After the
run the auditor scores every canary, guesses "in" for the k+ highest scores, "out" for the k-
lowest and abstains on the rest. If the mechanism is (eps, delta)-DP, the number W of correct
guesses among the r = k+ + k- made satisfies, for every v (their main theorem, (eps, delta) form),

    P[W >= v] <= P[Binomial(r, p) >= v] + 2 m delta * max_{i=1..v} P[v - i <= Binomial(r, p) < v] / i,
    p = e^eps / (1 + e^eps)

(for delta = 0: W is dominated by Binomial(r, p)). The lower bound is the largest eps that this
test rejects at confidence 1 - beta for the observed v. Several (k+, k-) choices are tried with a
Bonferroni split of beta, so picking the best one after the fact keeps the confidence honest.

Client level (done): a canary is a site whose upload is a fixed random direction u_i of norm C
(white-box gradient canaries inserted at the upload, i.e. the strongest site the clipping allows);
score_i = <sum over rounds of the global model's change, u_i>. Two modes:
* fast: a synthetic federation of canary sites only, aggregated by the project's own aggregator
  (central Gaussian, distributed discrete Gaussian under secure aggregation, or plain) with the
  noise the project calibrates; seconds, no training;
* run: a real `simulate` run of the config with canary sites added beside the real ones.

Trajectory level (the unit is one episode of one site's DP-SGD): a canary is a trajectory in ONE
site's episode pool whose per-trajectory gradient is a fixed direction C u_i (a white-box gradient
canary: the strongest trajectory the per-trajectory clipping admits, and independent of the model,
so it pushes the same way at every step). It is inserted at the per-sample-gradient level of the
real DP-SGD path (`secure_fedrl.rl.dp_training.dp_sgd_steps`; `AUDIT_CANARY_HOOK` under `train_dp`):
the included canaries join the round's N episodes in the pool and are Poisson-sampled (the
project's secret episode sampling), clipped, summed and noised by Opacus' DPOptimizer exactly like
episodes, while q*N stays at the real N (a public constant, so add/remove of a canary is the
neighbouring relation the accountant assumes). An included canary sits in the pool of EVERY round:
then its privacy loss is exactly the composition over all the site's noisy steps that the site is
charged (`epsilon_server`, equal to `epsilon_release` at trajectory level), so the target is tight
for the accounting, not an over-count. The u_i are exactly orthogonal (m <= dim), so canaries do not
blur each other's scores; score_i = <the site's accumulated noised update, u_i>.
* fast: synthetic per-sample gradients (N background episodes per round with random gradients of
  norm 2C, clipped to C, plus the canaries) through `dp_sgd_steps` with the site's real sigma, q,
  steps and C from the config's PrivacyPlan and plain SGD (lr 1) on a `dim`-vector, so the model
  change is minus the sum of the noised steps; epsilon_theoretical is the site's epsilon from the
  project's accountant (SiteGuard, as `record_site_spend` charges it). DP off (`--level
  trajectory` on a `unit = "none"` config): the same path with sigma = 0 (clipping only).
* run: a real `simulate` of a trajectory-level config; one site (the first) trains with the
  canaries in its pool through `AUDIT_CANARY_HOOK` (u_i on the federated parameters only, zero on
  a local critic); score_i = -<the global model's total change, u_i> (descent moves it along
  -u_i), i.e. after secure aggregation, the local optimizer and the other sites' updates;
  epsilon_theoretical is that site's epsilon_server from the run's own accounting.
Limits: gradient canaries test the clipping, sampling, noise and accounting, not the per-trajectory
gradient computation (tests/rl/test_dp_training.py checks that one trajectory cannot move another's
gradient) nor input-space canaries (crafted episodes through the env, a weaker attack). With m
canaries the bound saturates (all r = m/2 guesses right: about 3.3 for m = 256 at 95%), so a claim
above that can only be falsified with more canaries (and dim >= m).

The statistics (scores, guesses, the bound) are this file's own and use only numpy/scipy; only
the training / aggregation being audited comes from secure_fedrl.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

CANARY_FILE = "canary_audit.json"
FORMAT = "secure-fedrl/canary-audit/v1"
TRAJECTORY_STATUS = ("trajectory-level canaries: gradient canaries (norm C) in one site's episode pool, "
                     "through the real DP-SGD step (fast and run modes)")


# -- the statistics (independent of secure_fedrl) ---------------------------------------------------
def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Probability of >= v correct guesses out of r under an (eps, delta)-DP mechanism (upper bound)."""
    from scipy.stats import binom

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v} r={r} m={m}")
    if v == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, p))
    if delta <= 0:
        return min(1.0, tail)
    # max over i of P[v - i <= B < v] / i: cumulative pmf from v-1 downwards.
    pmf = binom.pmf(np.arange(v - 1, -1, -1), r, p)
    ratio = np.cumsum(pmf) / np.arange(1, v + 1)
    return min(1.0, tail + 2.0 * m * delta * float(ratio.max()))


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, beta: float) -> float:
    """Largest eps whose p-value for (r guesses, v correct) is below beta; 0 if none is."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return math.inf
    for _ in range(40):  # to ~1e-12 of the bracket
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def guess(scores: np.ndarray, k_plus: int, k_minus: int) -> np.ndarray:
    """+1 for the k+ highest scores, -1 for the k- lowest, 0 (abstain) otherwise."""
    n = len(scores)
    if k_plus + k_minus > n:
        raise ValueError("k+ + k- exceeds the number of canaries")
    order = np.argsort(scores, kind="stable")
    out = np.zeros(n, dtype=np.int8)
    if k_minus:
        out[order[:k_minus]] = -1
    if k_plus:
        out[order[n - k_plus:]] = 1
    return out


@dataclass
class Bound:
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    epsilon_lower_bound: float


def audit(scores: np.ndarray, membership: np.ndarray, *, delta: float, confidence: float = 0.95,
          ks: Sequence[tuple[int, int]] | None = None) -> tuple[Bound, list[Bound]]:
    """The best bound over the (k+, k-) choices, each tested at beta / len(ks) (Bonferroni)."""
    m = len(scores)
    if ks is None:
        ks = sorted({(k, k) for k in (max(1, m // 50), max(1, m // 20), max(1, m // 10), max(1, m // 4))})
    beta = (1.0 - confidence) / len(ks)
    results = []
    for kp, km in ks:
        g = guess(scores, kp, km)
        r = int(np.count_nonzero(g))
        v = int(np.sum(g * membership > 0))
        results.append(Bound(kp, km, r, v, epsilon_lower_bound(m, r, v, delta=delta, beta=beta)))
    return max(results, key=lambda b: b.epsilon_lower_bound), results


def canary_directions(m: int, dim: int, rng: np.random.Generator, *, orthogonal: bool = False) -> np.ndarray:
    """m random unit vectors (rows): nearly orthogonal for dim >> 1, exactly so with `orthogonal`
    (a random orthonormal m-frame, m <= dim: no canary moves another's score)."""
    u = rng.standard_normal((m, dim))
    if orthogonal:
        if m > dim:
            raise ValueError(f"{m} orthogonal canary directions need dim >= {m}, got {dim}")
        q, r = np.linalg.qr(u.T)
        return (q * np.sign(np.diag(r))).T
    return u / np.linalg.norm(u, axis=1, keepdims=True)


# -- running the mechanism under audit (this part uses secure_fedrl) ----------------------------------
@dataclass
class CanaryResult:
    format: str
    level: str
    mode: str
    dp: bool
    mechanism: str
    canaries: int
    included: int
    dim: int
    rounds: int
    sample_rate: float
    clip: float
    noise_multiplier: float | None
    delta: float
    confidence: float
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    epsilon_lower_bound: float | None
    epsilon_theoretical: float | None
    all_choices: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    trajectory_level: str = TRAJECTORY_STATUS
    site: str | None = None
    noisy_steps: int | None = None
    episodes: int | None = None
    note: str = ""


def _raw_config(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _check_level(raw: dict[str, Any], level: str | None = None) -> str:
    """The config's privacy unit, checked against the audited level (client level by default)."""
    from secure_fedrl.errors import ConfigError

    unit = raw.get("privacy", {}).get("unit", "none")
    want = level or ("trajectory" if unit == "trajectory" else "client")
    if want not in ("client", "trajectory"):
        raise ConfigError(f"audit canary: level must be client or trajectory, got {want!r}")
    if unit not in ("none", want):
        raise ConfigError(f"audit canary: level {want} cannot audit a config with privacy.unit = {unit!r}")
    return unit


def run_fast(raw: dict[str, Any], *, canaries: int = 256, dim: int = 2048, rounds: int | None = None,
             seed: int = 0, confidence: float = 0.95) -> CanaryResult:
    """A federation of canary sites only, aggregated by the project's aggregator for `raw`'s config.

    Sites, sampling rate, rounds, clip, noise and secure aggregation come from the config; the
    canaries replace its sites (m of them; each included w.p. 1/2, then Poisson-sampled per round
    like any site). Epsilon_theoretical is what the project's accountant charges one site for
    these rounds, i.e. the claim being tested.
    """
    from secure_fedrl.config import config_from_dict
    from secure_fedrl.privacy.accountants import make_accountant
    from secure_fedrl.runtime.aggregation import SiteUpload, build_aggregator
    from secure_fedrl.runtime.privacy_plan import PrivacyPlan

    t0 = time.perf_counter()
    unit = _check_level(raw, "client")
    raw = json.loads(json.dumps(raw))  # deep copy
    if rounds is not None:
        raw.setdefault("federation", {})["rounds"] = rounds
    env = (raw.get("sites") or [{"env": "CartPole-v1"}])[0].get("env", "CartPole-v1")
    raw["sites"] = [{"name": "canary", "env": env, "count": canaries, "seed": 1}]
    config = config_from_dict(raw)
    names = [f"canary-{i}" for i in range(canaries)]
    rng = np.random.default_rng(seed)
    member = np.where(rng.random(canaries) < 0.5, 1, -1).astype(np.int8)
    u = canary_directions(canaries, dim, rng)
    plan = PrivacyPlan(config, names, ledger_path=Path("/nonexistent/unused.sqlite"))
    aggregator = build_aggregator(config, dim=dim, privacy=plan)
    plan.bind(aggregator)
    clip = float(config.privacy.clip) if unit == "client" else 1.0
    s = config.sampling
    q = plan.sample_rate if unit == "client" else (s.fraction if s.poisson else 1.0)
    acct = make_accountant(config.privacy.accountant) if unit == "client" else None
    total_change = np.zeros(dim)
    n_rounds = config.federation.rounds
    noise_rng = np.random.default_rng(seed + 1)
    for r in range(1, n_rounds + 1):
        sampled = [i for i in range(canaries) if member[i] > 0 and rng.random() < q]
        uploads = [SiteUpload(site=names[i], vector=(clip * u[i]).astype(np.float32), weight=1.0, nbytes=0)
                   for i in sampled]
        planned = max(len(sampled), 2) if unit == "client" else len(sampled)
        if unit == "client":
            agg = aggregator.aggregate(r, uploads, rng=rng, noise_rng=noise_rng, planned=planned, round_seed=r)
            acct.apply(agg.privacy.get("mechanism_step") or aggregator.mechanism(sampled=planned))
        else:
            agg = aggregator.aggregate(r, uploads, rng=rng, noise_rng=noise_rng, planned=len(uploads),
                                       round_seed=r) if uploads else None
        if agg is not None and agg.mean_update is not None:
            total_change += np.asarray(agg.mean_update, dtype=np.float64)
    scores = u @ total_change
    best, choices = audit(scores, member, delta=config.privacy.delta, confidence=confidence)
    eps_theory = acct.get_epsilon(config.privacy.delta) if acct is not None else None
    return CanaryResult(
        format=FORMAT, level="client", mode="fast", dp=unit == "client", mechanism=plan.mechanism,
        canaries=canaries, included=int(np.sum(member > 0)), dim=dim, rounds=n_rounds, sample_rate=q, clip=clip,
        noise_multiplier=plan.sigma if unit == "client" else None, delta=config.privacy.delta,
        confidence=confidence, guesses=best.guesses, correct=best.correct, k_plus=best.k_plus,
        k_minus=best.k_minus, epsilon_lower_bound=_finite(best.epsilon_lower_bound),
        epsilon_theoretical=_finite(eps_theory), all_choices=[asdict(c) for c in choices],
        seconds=time.perf_counter() - t0,
        note="synthetic federation of canary sites through the project's aggregator and accountant")


def _trajectory_dp(config: Any, plan: Any, site: str) -> Any:
    """The site's DP-SGD settings: the plan's (DP on) or the same with sigma = 0 (DP off)."""
    from secure_fedrl.rl.dp_training import TrajectoryDP

    if config.privacy.unit == "trajectory":
        return plan.trajectory_dp(site)
    p = config.privacy
    return TrajectoryDP(max_grad_norm=float(p.clip), noise_multiplier=0.0, sample_rate=float(p.sample_rate),
                        steps=int(p.noisy_steps), allow_zero_noise=True, secret_sampling=not p.reproducible_noise)


def run_fast_trajectory(raw: dict[str, Any], *, canaries: int = 256, dim: int = 2048, rounds: int | None = None,
                        seed: int = 0, confidence: float = 0.95, episodes: int | None = None) -> CanaryResult:
    """Gradient canaries in one site's episode pool, through the real DP-SGD step, no env.

    sigma, q, noisy steps and C are the config's (its PrivacyPlan's calibration); N background
    episodes per round (`local.episodes`, or `episodes`) have fresh random gradients of norm 2C.
    """
    import secrets

    import torch

    from secure_fedrl.config import config_from_dict, expand_site_names
    from secure_fedrl.privacy.accountants import GaussianStep
    from secure_fedrl.rl.dp_training import dp_sgd_steps
    from secure_fedrl.rl.rollout import Corrections
    from secure_fedrl.runtime.privacy_plan import PrivacyPlan

    t0 = time.perf_counter()
    unit = _check_level(raw, "trajectory")
    raw = json.loads(json.dumps(raw))
    if rounds is not None:
        raw.setdefault("federation", {})["rounds"] = rounds
    config = config_from_dict(raw)
    site = expand_site_names(config.sites[0])[0]
    plan = PrivacyPlan(config, [site], ledger_path=Path("/nonexistent/unused.sqlite"))
    dp = _trajectory_dp(config, plan, site)
    n_bg = int(episodes if episodes is not None else (config.local.episodes or 32))
    rng = np.random.default_rng(seed)
    member = np.where(rng.random(canaries) < 0.5, 1, -1).astype(np.int8)
    u = canary_directions(canaries, dim, rng, orthogonal=canaries <= dim)
    clip = float(dp.max_grad_norm)
    pool = [torch.from_numpy((clip * u[member > 0]).astype(np.float32))]
    noise_seed = seed + 1 if config.privacy.reproducible_noise else secrets.randbits(63)
    generator = torch.Generator().manual_seed(noise_seed)
    x = torch.nn.Parameter(torch.zeros(dim))
    corrections = Corrections([x], prox_mu=0.0, anchor=None, grad_correction=None)
    guard = plan.guards.get(site)
    n_rounds = config.federation.rounds
    for _ in range(n_rounds):
        bg = torch.randn(n_bg, dim, generator=generator)
        bg *= 2 * clip / bg.norm(dim=1, keepdim=True)
        base = torch.optim.SGD([x], lr=1.0)  # the model change is minus the sum of the noised steps
        dp_sgd_steps([x], base, dp, n_bg, lambda idx: [bg[idx]], generator=generator, corrections=corrections,
                     canaries=pool)
        if guard is not None:  # what record_site_spend charges the site for the round
            guard.charge(GaussianStep(float(dp.noise_multiplier), float(dp.sample_rate), int(dp.noisy_steps)))
    scores = u @ (-x.detach().double().numpy())
    best, choices = audit(scores, member, delta=config.privacy.delta, confidence=confidence)
    eps_theory = guard.epsilon if guard is not None else None
    return CanaryResult(
        format=FORMAT, level="trajectory", mode="fast", dp=unit == "trajectory", mechanism="dp-sgd",
        canaries=canaries, included=int(np.sum(member > 0)), dim=dim, rounds=n_rounds,
        sample_rate=float(dp.sample_rate), clip=clip,
        noise_multiplier=float(dp.noise_multiplier) if unit == "trajectory" else None, delta=config.privacy.delta,
        confidence=confidence, guesses=best.guesses, correct=best.correct, k_plus=best.k_plus,
        k_minus=best.k_minus, epsilon_lower_bound=_finite(best.epsilon_lower_bound),
        epsilon_theoretical=_finite(eps_theory), all_choices=[asdict(c) for c in choices],
        seconds=time.perf_counter() - t0, site=site, noisy_steps=int(dp.noisy_steps), episodes=n_bg,
        note=(f"gradient canaries in the episode pool of one site ({n_bg} synthetic episodes per round) through "
              f"secure_fedrl.rl.dp_training.dp_sgd_steps" + ("" if unit == "trajectory" else "; DP off: sigma = 0")))


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def write_result(result: CanaryResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / CANARY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def summary(result: CanaryResult) -> str:
    lb = "inf" if result.epsilon_lower_bound is None else f"{result.epsilon_lower_bound:.3f}"
    th = "none (DP off)" if result.epsilon_theoretical is None else f"{result.epsilon_theoretical:.3f}"
    return (f"canary audit ({result.level}, {result.mode}, {result.mechanism}): {result.correct}/{result.guesses} "
            f"guesses correct of {result.canaries} canaries; epsilon lower bound {lb} at {result.confidence:.0%} "
            f"confidence; theoretical epsilon {th}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Empirical epsilon lower bound with canaries (one run).")
    ap.add_argument("config", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mode", choices=("fast", "run"), default="fast")
    ap.add_argument("--level", choices=("client", "trajectory"),
                    help="default: the config's privacy.unit (client for unit = none)")
    ap.add_argument("--canaries", type=int, default=256)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--confidence", type=float, default=0.95)
    args = ap.parse_args(argv)
    from secure_fedrl.errors import SecureFedRLError

    try:
        return run_cli(args)
    except SecureFedRLError as exc:  # one line, exit 2, as `secure-fedrl audit canary`
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_cli(args: argparse.Namespace) -> int:
    """Shared by this script and `secure-fedrl audit canary`: SecureFedRLError propagates."""
    from secure_fedrl.errors import ConfigError

    if not args.config.is_file():
        raise ConfigError(f"audit canary: config {args.config} does not exist")
    if args.canaries < 4 or args.dim < 1 or not 0.5 <= args.confidence < 1:
        raise ConfigError("audit canary: need --canaries >= 4, --dim >= 1 and --confidence in [0.5, 1)")
    try:
        raw = _raw_config(args.config)
    except Exception as exc:  # noqa: BLE001 - any unreadable TOML is the same user error
        raise ConfigError(f"audit canary: {args.config}: {exc}") from None
    level = getattr(args, "level", None)
    unit = _check_level(raw, level)
    trajectory = level == "trajectory" or unit == "trajectory"
    if args.mode == "fast":
        fast = run_fast_trajectory if trajectory else run_fast
        result = fast(raw, canaries=args.canaries, dim=args.dim, rounds=args.rounds, seed=args.seed,
                      confidence=args.confidence)
        write_result(result, args.out)
    else:
        real = run_real_trajectory if trajectory else run_real
        result = real(raw, args.out, canaries=args.canaries, rounds=args.rounds, seed=args.seed,
                      confidence=args.confidence)  # writes its own files
    print(summary(result))
    return 0


def run_real(raw: dict[str, Any], out: Path, *, canaries: int = 128, rounds: int | None = None,
             seed: int = 0, confidence: float = 0.95, progress: bool = False) -> CanaryResult:
    """A real `simulate` run of `raw` with canary sites added beside its real sites.

    Each canary is included w.p. 1/2; an included canary is an ordinary site of the federation
    (sampled like the others, counted in every denominator) whose upload is replaced, at the
    upload, by C u_i: no local training, the strongest update the clipping admits. Scores are
    inner products of the global policy's total change with each u_i. The run directory is
    OUT/run (its privacy report shows the result); the theoretical epsilon is the epsilon the
    run's own ledger charged (client level).
    """
    from secure_fedrl.config import config_from_dict
    from secure_fedrl.report import write_run_reports
    from secure_fedrl.rl.rollout import LocalResult
    from secure_fedrl.runtime.aggregation import SiteUpload
    from secure_fedrl.runtime.simulate import Simulation

    t0 = time.perf_counter()
    unit = _check_level(raw)
    raw = json.loads(json.dumps(raw))
    if rounds is not None:
        raw.setdefault("federation", {})["rounds"] = rounds
    rng = np.random.default_rng(seed)
    member = np.where(rng.random(canaries) < 0.5, 1, -1).astype(np.int8)
    first = (raw.get("sites") or [{}])[0]
    names = [f"canary-{i:04d}" for i in range(canaries)]
    raw["sites"] = list(raw.get("sites", [])) + [
        {"name": names[i], "env": first.get("env", "CartPole-v1"), "num_envs": 1, "seed": 900_000 + i,
         "overrides": dict(first.get("overrides", {}))} for i in range(canaries) if member[i] > 0]
    config = config_from_dict(raw)
    clip = float(config.privacy.clip) if unit == "client" else 1.0
    run_dir = out / "run"

    class _NoCommit:
        def commit(self) -> None:  # a canary keeps no state between rounds
            pass

    class CanarySimulation(Simulation):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.canary_u = canary_directions(canaries, self.dim, rng)
            index = {n: i for i, n in enumerate(names)}
            self.canary_index = {s.spec.name: index[s.spec.name] for s in self.sites if s.spec.name in index}
            self.eval_sites = [s for s in self.eval_sites if s.spec.name not in self.canary_index]

        def _site_round(self, site: Any, r: int):  # noqa: ANN202 - as the base class
            i = self.canary_index.get(site.spec.name)
            if i is None:
                return super()._site_round(site, r)
            vec = np.zeros(self.upload_dim, dtype=np.float32)
            vec[: self.dim] = clip * self.canary_u[i]
            self._pending[site.spec.name] = _NoCommit()
            return (SiteUpload(site=site.spec.name, vector=vec, weight=1.0, nbytes=vec.nbytes),
                    LocalResult(steps=0, episodes=0, optimizer_steps=0, episode_returns=[]))

    sim = CanarySimulation(config, run_dir, progress=progress)
    start = np.asarray(sim.global_params, dtype=np.float64).copy()
    summary = sim.run()
    change = np.asarray(sim.global_params, dtype=np.float64) - start
    scores = sim.canary_u @ change
    best, choices = audit(scores, member, delta=config.privacy.delta, confidence=confidence)
    result = CanaryResult(
        format=FORMAT, level="client", mode="run", dp=unit == "client", mechanism=sim.privacy.mechanism,
        canaries=canaries, included=int(np.sum(member > 0)), dim=sim.dim, rounds=summary.rounds_done,
        sample_rate=float(sim.privacy.sample_rate if unit == "client" else config.sampling.fraction), clip=clip,
        noise_multiplier=float(sim.privacy.sigma) if unit == "client" else None, delta=config.privacy.delta,
        confidence=confidence, guesses=best.guesses, correct=best.correct, k_plus=best.k_plus,
        k_minus=best.k_minus, epsilon_lower_bound=_finite(best.epsilon_lower_bound),
        epsilon_theoretical=_finite(summary.epsilon) if unit == "client" else None,
        all_choices=[asdict(c) for c in choices], seconds=time.perf_counter() - t0,
        note=f"real simulate run in {run_dir} with {int(np.sum(member > 0))} canary sites beside "
             f"{config.num_sites - int(np.sum(member > 0))} real ones")
    write_result(result, out)
    write_result(result, run_dir)
    write_run_reports(run_dir, key_dir=getattr(sim, "ledger_key_dir", None))  # now with the canary
    return result


def run_real_trajectory(raw: dict[str, Any], out: Path, *, canaries: int = 128, rounds: int | None = None,
                        seed: int = 0, confidence: float = 0.95, progress: bool = False) -> CanaryResult:
    """A real `simulate` run of a trajectory-level config with gradient canaries in one site's pool.

    The first site trains as usual, with the included canaries (C u_i, u_i orthonormal over the
    federated parameters) appended to its episode pool in every round it trains, through
    `dp_training.AUDIT_CANARY_HOOK` (set only around that site's local training, always reset).
    score_i = -<the global model's total change, u_i> (descent moves the model along -u_i): what
    anyone who sees the released models can compute. The theoretical epsilon is that site's
    epsilon_server from the run's own accounting (the ledger's number).
    """
    import torch

    from secure_fedrl.config import config_from_dict, expand_site_names
    from secure_fedrl.errors import ConfigError
    from secure_fedrl.report import write_run_reports
    from secure_fedrl.rl import dp_training
    from secure_fedrl.runtime.simulate import Simulation

    t0 = time.perf_counter()
    unit = _check_level(raw, "trajectory")
    if unit != "trajectory":
        raise ConfigError("audit canary --mode run at trajectory level needs privacy.unit = \"trajectory\" "
                          "(the canaries ride in the site's DP-SGD); use --mode fast for the DP-off baseline")
    raw = json.loads(json.dumps(raw))
    if rounds is not None:
        raw.setdefault("federation", {})["rounds"] = rounds
    config = config_from_dict(raw)
    site_name = expand_site_names(config.sites[0])[0]
    rng = np.random.default_rng(seed)
    member = np.where(rng.random(canaries) < 0.5, 1, -1).astype(np.int8)
    clip = float(config.privacy.clip)
    run_dir = out / "run"

    class CanarySimulation(Simulation):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            if canaries > self.dim:
                raise ConfigError(f"audit canary: {canaries} canaries need at least as many federated "
                                  f"parameters, the policy has {self.dim}; use a larger local.hidden_sizes")
            self.canary_u = canary_directions(canaries, self.dim, rng, orthogonal=True)
            rows = torch.from_numpy((clip * self.canary_u[member > 0]).astype(np.float32))
            self.canary_rows: dict[int, torch.Tensor] = {}
            off = 0
            for p in self.federated_params:
                n = p.numel()
                self.canary_rows[id(p)] = rows[:, off:off + n].reshape(rows.shape[0], *p.shape)
                off += n
            self.canary_rounds = 0

        def _hook(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
            k = int(np.sum(member > 0))
            return [self.canary_rows.get(id(p), torch.zeros((k, *p.shape))) for p in params]

        def _site_round(self, site: Any, r: int):  # noqa: ANN202 - as the base class
            if site.spec.name != site_name:
                return super()._site_round(site, r)
            dp_training.AUDIT_CANARY_HOOK = self._hook
            try:
                self.canary_rounds += 1
                return super()._site_round(site, r)
            finally:
                dp_training.AUDIT_CANARY_HOOK = None

    sim = CanarySimulation(config, run_dir, progress=progress)
    start = np.asarray(sim.global_params, dtype=np.float64).copy()
    summary = sim.run()
    change = np.asarray(sim.global_params, dtype=np.float64) - start
    scores = -(sim.canary_u @ change)  # a canary gradient C u_i moves the model along -u_i (descent)
    best, choices = audit(scores, member, delta=config.privacy.delta, confidence=confidence)
    guard = sim.privacy.guards[site_name]
    result = CanaryResult(
        format=FORMAT, level="trajectory", mode="run", dp=True, mechanism="dp-sgd", canaries=canaries,
        included=int(np.sum(member > 0)), dim=sim.dim, rounds=summary.rounds_done,
        sample_rate=float(sim.privacy.sample_rate), clip=clip, noise_multiplier=float(sim.privacy.sigma),
        delta=config.privacy.delta, confidence=confidence, guesses=best.guesses, correct=best.correct,
        k_plus=best.k_plus, k_minus=best.k_minus, epsilon_lower_bound=_finite(best.epsilon_lower_bound),
        epsilon_theoretical=_finite(guard.epsilon), all_choices=[asdict(c) for c in choices],
        seconds=time.perf_counter() - t0, site=site_name, noisy_steps=int(config.privacy.noisy_steps),
        episodes=int(config.local.episodes),
        note=f"real simulate run in {run_dir}: {int(np.sum(member > 0))} gradient canaries in the episode pool of "
             f"site {site_name} ({sim.canary_rounds} of {summary.rounds_done} rounds trained there); scores on "
             f"the global model's change")
    write_result(result, out)
    write_result(result, run_dir)
    write_run_reports(run_dir, key_dir=getattr(sim, "ledger_key_dir", None))
    return result


if __name__ == "__main__":
    sys.exit(main())
