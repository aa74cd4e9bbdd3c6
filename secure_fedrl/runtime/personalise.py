"""Personalisation at one site after the federation (`secure-fedrl personalise`): train the
federated global policy further on the site's own environment, at the site.

Why: one policy shared by every site does not fit sites that differ much (the healthcare pilot's
patients, docs/pilots.md); a short local fine-tune from the federated start fits each one, and
the federated start is what makes the fine-tune better than training alone on the same data.

Privacy. Nothing leaves the site: the fine-tune spends no privacy budget and the server learns
nothing from it. The fine-tuned policy is computed from the site's own data WITHOUT noise, so it
carries NO differential-privacy guarantee for that data and must stay at the site; only its input,
the federated global policy, is covered by the federation's guarantee.

Selection. A fine-tune optimises the env's reward, which need not be the site's goal (a pump's
reward can prefer no lows over time in range). With a `Selection` the site checks the policy every
few rounds on its own validation episodes (seeds apart from the evaluation's) and keeps the best
checkpoint, the federated start included, by a metric and bounds it chooses: early stopping with a
clinical (or business) criterion, all at the site. A bound can be relative to a baseline measured on
the same validation episodes: `zero`, the policy that always takes action 0 (in the healthcare env's
therapy mode, the pump's programmed basal-bolus therapy: "no more lows than my current therapy"),
or `start`, the federated start itself.

Interpolated starts. A federated policy can be too far from what suits one site (a pump whose
patient needs less of the federation's adjustment). With `weights`, the site also validates the
starts `initial + w * (global - initial)` between the federation's round-0 policy and the global
one ("model interpolation", Mansour et al. 2020, arXiv:2002.10619), and fine-tunes from the best:
every candidate is still built from the federated policy, only scaled per site.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from secure_fedrl.config import Config
from secure_fedrl.errors import ConfigError, SecureFedRLError
from secure_fedrl.fsutil import atomic_write, check_private_dir
from secure_fedrl.rl.envs import SiteVectorEnv, make_site_env
from secure_fedrl.rl.evaluate import evaluate_with_metrics
from secure_fedrl.rl.local import train_local
from secure_fedrl.rl.policies import ActorCritic, set_flat
from secure_fedrl.runtime.rundir import CHECKPOINT_DIR
from secure_fedrl.runtime.site import derive_seed, initial_policy
from secure_fedrl.runtime.sites import SiteSpec, expand_sites

__all__ = ["BASELINES", "FineTuned", "GlobalModel", "Requirement", "Selection", "ZeroAction", "check_baseline", "choose",
           "fine_tune", "fine_tune_select", "interpolate", "load_global_params", "parse_selection", "parse_weights",
           "personalise_site", "read_global_model"]


def _checkpoint_globals() -> list[Any]:
    """What a run checkpoint holds besides tensors (a strategy's numpy state): the only classes
    `torch.load(weights_only=True)` may build, so a checkpoint cannot run code when read."""
    dtypes = [getattr(np.dtypes, n) for n in ("Float32DType", "Float64DType", "Int64DType") if hasattr(np.dtypes, n)]
    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


class GlobalModel(NamedTuple):
    params: np.ndarray
    round: int
    federation: str | None  # None in checkpoints written before they recorded it
    ledger_head: dict[str, Any] | None = None  # {"seq", "row_hash"}: which run (None: not recorded)


def load_global_params(source: Path) -> tuple[np.ndarray, int]:
    """The federated parameters of one run checkpoint, or of a run directory's last one; with its round."""
    model = read_global_model(source)
    return model.params, model.round


def read_global_model(source: Path) -> GlobalModel:
    """One run checkpoint (or a run directory's last one), read without running code."""
    source = Path(source)
    if source.is_dir():
        found = [f for f in (source / CHECKPOINT_DIR).glob("round-*.pt")
                 if f.is_file() and f.stem[len("round-"):].isdigit()]
        if not found:
            raise ConfigError(f"--model {source}: a run directory without checkpoints ({CHECKPOINT_DIR}/round-*.pt)")
        source = max(found, key=lambda f: int(f.stem[len("round-"):]))  # by round, not by name
    elif not source.is_file():
        raise ConfigError(f"--model {source}: no such checkpoint file or run directory")
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            blob = torch.load(source, map_location="cpu", weights_only=True)
        round_id, federation, head = int(blob["round"]), blob.get("federation"), blob.get("ledger_head")
        params = np.asarray(blob["global_params"], dtype=np.float32).reshape(-1)
        if federation is not None and not isinstance(federation, str):
            raise TypeError("federation")
        if head is not None:
            head = {"seq": head["seq"], "row_hash": head["row_hash"]}
            seq, row_hash = head["seq"], head["row_hash"]
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63 or \
                    not isinstance(row_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", row_hash):
                raise TypeError("ledger_head")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input, said in one line
        raise ConfigError(f"--model {source}: not a secure-fedrl run checkpoint ({type(exc).__name__})") from None
    if not np.isfinite(params).all():
        raise ConfigError(f"--model {source}: holds non-finite parameters (NaN or inf): not a model to start from")
    return GlobalModel(params, round_id, federation, head)


def fine_tune(policy: ActorCritic, env: SiteVectorEnv, config: Config, rounds: int, generator: torch.Generator) -> int:
    """`rounds` rounds of the config's local learner on `env`, in place (one site, no server);
    returns the env steps taken."""
    steps = 0
    for _ in range(rounds):
        result = train_local(policy, env, config.algorithm, steps=config.local.steps or None,
                             episodes=None if config.local.steps else config.local.episodes, generator=generator)
        steps += result.steps
    return steps


class Requirement(NamedTuple):
    """`metric <= bound` (or `>=` when not `at_most`); with `relative`, the bound is an offset from
    the baseline's value of the metric on the same validation episodes."""

    metric: str
    bound: float
    at_most: bool = True
    relative: bool = False

    def limit(self, baseline: dict[str, float] | None) -> float:
        if not self.relative:
            return self.bound
        if baseline is None:
            raise ValueError(f"requirement on {self.metric!r} is relative to a baseline, and none was measured")
        return baseline[self.metric] + self.bound

    def excess(self, value: float, baseline: dict[str, float] | None) -> float:
        """How far `value` is on the wrong side of the bound (0 when met; infinite when the value
        or the baseline's is NaN: a metric that was not measured never meets a bound)."""
        over = value - self.limit(baseline) if self.at_most else self.limit(baseline) - value
        return max(0.0, over) if math.isfinite(over) or over == -math.inf else math.inf

    def __str__(self) -> str:
        offset = f"{self.bound:+g}" if self.bound else ""
        return f"{self.metric}{'<=' if self.at_most else '>='}" + (f"baseline{offset}" if self.relative else f"{self.bound:g}")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which checkpoint a site keeps: the best by `metric` (maximised, or minimised when not
    `maximise`) among those meeting every requirement. The requirements are in priority order: when
    no checkpoint meets them all, the one least past the first is kept, then the second, and so on."""

    metric: str = "return"
    maximise: bool = True
    requirements: tuple[Requirement, ...] = ()

    def metrics(self) -> list[str]:
        return [self.metric, *(r.metric for r in self.requirements)]

    @property
    def relative(self) -> bool:
        return any(r.relative for r in self.requirements)


BASELINES = ("zero", "start")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_REQUIREMENT = re.compile(rf"^\s*({_NAME})\s*(<=|>=)\s*(?:(baseline)\s*(?:([+-])\s*(\S+))?|(\S+))\s*$")


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else float("nan")
    except ValueError:
        return float("nan")


def parse_selection(keep_best: str, requirements: list[str] | tuple[str, ...] = ()) -> Selection:
    """`--keep-best [max:|min:]METRIC` and `--require METRIC<=BOUND` or `METRIC>=BOUND` (repeatable, in
    priority order); BOUND is a number, `baseline`, or `baseline+NUMBER` / `baseline-NUMBER`."""
    direction, _, metric = keep_best.rpartition(":")
    if direction not in ("", "max", "min") or not re.fullmatch(_NAME, metric):
        raise ConfigError(f"--keep-best {keep_best!r}: expected METRIC, max:METRIC or min:METRIC")
    bounds = []
    for text in requirements:
        match = _REQUIREMENT.match(text)
        if match and match.group(3):
            sign, offset = match.group(4), match.group(5)
            bound = 0.0 if sign is None else _number(offset) * (-1.0 if sign == "-" else 1.0)
        else:
            bound = _number(match.group(6)) if match else float("nan")
        if not match or not np.isfinite(bound):
            raise ConfigError(f"--require {text!r}: expected METRIC<=BOUND or METRIC>=BOUND, BOUND a number or "
                              "baseline[+-NUMBER], e.g. time_below_54<=0.01 or time_in_range>=baseline")
        bounds.append(Requirement(match.group(1), bound, match.group(2) == "<=", bool(match.group(3))))
    return Selection(metric, direction != "min", tuple(bounds))


def choose(candidates: list[dict[str, float]], selection: Selection, baseline: dict[str, float] | None = None) -> int:
    """The index of the checkpoint to keep (the earliest among equals: fewer local rounds); `baseline`
    holds the metrics that relative requirements are measured from."""
    if not candidates:
        raise ValueError("choose: no checkpoints to choose from")

    def key(index: int) -> tuple:
        m = candidates[index]
        excess = tuple(r.excess(m[r.metric], baseline) for r in selection.requirements)
        value = m[selection.metric]
        return (*excess, math.isnan(value), 0.0 if math.isnan(value) else -value if selection.maximise else value, index)

    return min(range(len(candidates)), key=key)


def check_baseline(selection: Selection, baseline: str | None) -> None:
    """A relative bound needs a baseline, and a baseline is one of BASELINES: refused before any
    model is read or any round trained (the CLI, the bench and `fine_tune_select` all ask here)."""
    if baseline is not None and baseline not in BASELINES:
        raise ConfigError(f"--baseline {baseline!r}: expected one of {', '.join(BASELINES)}")
    if selection.relative and baseline is None:
        raise ConfigError(f"--require {next(str(r) for r in selection.requirements if r.relative)}: a bound relative "
                          f"to the baseline needs --baseline ({' or '.join(BASELINES)})")


class ZeroAction:
    """The policy that always takes action 0: the `zero` baseline (in the healthcare env's therapy
    mode, the pump's programmed basal-bolus therapy itself)."""

    def __init__(self, action_space: Any) -> None:
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.shape = () if self.discrete else tuple(action_space.shape)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros((obs.shape[0], *self.shape))


MAX_STARTS = 16


def parse_weights(text: str) -> tuple[float, ...]:
    """`--interpolate W[,W...]`: the global model's weights in the extra starts, at most
    MAX_STARTS of them (each is one more validation), distinct, in [0.001, 1)."""
    parts = text.split(",")
    try:  # ASCII decimals only (float() would also take "nan", "inf" and other scripts' digits)
        weights = tuple(float(w) for w in parts) if all(re.fullmatch(r" *[0-9.eE+-]+ *", w) for w in parts) else ()
    except ValueError:
        weights = ()
    if not 0 < len(weights) <= MAX_STARTS or not all(1e-3 <= w < 1.0 for w in weights) or len(set(weights)) != len(weights):
        raise ConfigError(f"--interpolate {text!r}: expected up to {MAX_STARTS} distinct weights in [0.001, 1), "
                          "e.g. 0.25,0.5,0.75")
    return weights


def interpolate(origin: dict[str, torch.Tensor], target: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """The state `origin + weight * (target - origin)`, tensor by tensor (same keys and shapes)."""
    if origin.keys() != target.keys() or any(origin[k].shape != target[k].shape for k in origin):
        raise ValueError("interpolate: the two policies have different parameters")
    return {k: torch.lerp(origin[k], target[k], weight) if target[k].is_floating_point() else target[k].clone()
            for k in target}


class FineTuned(NamedTuple):
    """What `fine_tune_select` did: env steps, the kept checkpoint's round and its start's weight of
    the global policy (1.0 unless interpolated), every check, and the baseline's metrics or None."""

    steps: int
    kept_round: int
    kept_weight: float
    checks: list[dict[str, Any]]
    baseline: dict[str, float] | None


def fine_tune_select(policy: ActorCritic, env: SiteVectorEnv, config: Config, rounds: int,
                     generator: torch.Generator, *, selection: Selection, check_every: int,
                     validate: Callable[[Any], dict[str, float]], baseline: str | None = None,
                     origin: dict[str, torch.Tensor] | None = None, weights: tuple[float, ...] = ()) -> FineTuned:
    """fine_tune, validating the start and every `check_every` rounds (and the last); leaves the
    chosen checkpoint in `policy`. `baseline` (one of BASELINES) is what relative requirements are
    measured from, on the same validation episodes. With `weights`, the starts interpolated from
    `origin` (the federation's round-0 policy) towards the policy are validated too, and the
    fine-tune runs from the best start."""
    check_baseline(selection, baseline)
    if weights and origin is None:
        raise ValueError("fine_tune_select: interpolated starts need the origin policy")
    checks: list[dict[str, Any]] = []
    states: list[dict[str, torch.Tensor]] = []

    def measured(metrics: dict[str, float]) -> dict[str, float]:
        missing = [name for name in selection.metrics() if name not in metrics]
        if missing:
            raise ConfigError(f"--keep-best/--require: the site's env reports no metric {missing[0]!r} "
                              f"(it reports: {', '.join(sorted(metrics))})")
        return metrics

    def check(done: int, weight: float) -> None:
        checks.append({"round": done, "weight": weight, **measured(validate(policy))})
        states.append(copy.deepcopy(policy.state_dict()))

    def metrics_of(c: dict[str, Any]) -> dict[str, float]:
        return {k: v for k, v in c.items() if k not in ("round", "weight")}

    check(0, 1.0)
    reference = None
    if baseline == "zero":
        reference = measured(validate(ZeroAction(env.single_action_space)))
    elif baseline == "start":
        reference = metrics_of(checks[0])

    def best() -> int:
        return choose([metrics_of(c) for c in checks], selection, reference)

    target = states[0]
    for weight in weights:
        policy.load_state_dict(interpolate(origin, target, weight))
        check(0, weight)
    start = best()
    policy.load_state_dict(states[start])
    steps = done = 0
    while done < rounds:
        todo = min(check_every, rounds - done)
        steps += fine_tune(policy, env, config, todo, generator)
        done += todo
        check(done, checks[start]["weight"])
    kept = best()
    policy.load_state_dict(states[kept])
    return FineTuned(steps, checks[kept]["round"], checks[kept]["weight"], checks, reference)


def _site(config: Config, name: str) -> tuple[int, SiteSpec]:
    specs = expand_sites(config.sites)
    for index, spec in enumerate(specs):
        if spec.name == name:
            return index, spec
    shown = ", ".join(s.name for s in specs[:5]) + (", ..." if len(specs) > 5 else "")
    raise ConfigError(f"--site {name!r}: not a site of this config (its sites: {shown})")


def _evaluate(policy: ActorCritic, spec: SiteSpec, episodes: int, seed: int) -> dict[str, float]:
    res = evaluate_with_metrics(policy, spec.env_id, spec.overrides, episodes=episodes, seed=seed,
                                num_envs=min(episodes, 4), site=spec.name)
    return {"return": float(np.mean(res.returns)), **res.metrics}


def _check_out(out: Path) -> None:
    """`--out` holds the site's policy trained without noise, which the site will run: whoever may
    replace the directory, or write it, may swap that policy. So: no symbolic link, a directory
    only this user can access, and no ancestor that other users may write (unless sticky, as /tmp)."""
    if out.is_symlink():
        raise ConfigError(f"--out {out}: is a symbolic link; give the directory itself")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        check_private_dir(out, "--out")
    for parent in out.absolute().parents:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            continue  # made by mkdir below, 0700
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise ConfigError(f"--out {out}: its parent {parent} may be written by other users, who could replace "
                              f"{out.name}; use a directory under one only you can write")


def personalise_site(config: Config, site: str, model: Path, out: Path, *, rounds: int,
                     learning_rate: float | None = None, eval_episodes: int = 4,
                     selection: Selection | None = None, check_every: int | None = None,
                     validation_episodes: int = 4, baseline: str | None = None,
                     weights: tuple[float, ...] = ()) -> dict[str, Any]:
    """Fine-tune the global policy of `model` at `site` for `rounds` local rounds; write
    OUT/policy.pt (the site's own policy) and OUT/personalise.json (the evaluation before and after
    on the same seeded episodes of the site's env). With `selection`, keep the best checkpoint on
    separate validation episodes (every `check_every` rounds, default a quarter of `rounds`), its
    relative requirements measured from `baseline` on the same episodes, and the starts interpolated
    by `weights` towards the federation's round-0 policy among the candidates. Refuses to overwrite
    an earlier result."""
    if weights and selection is None:
        raise ConfigError("--interpolate needs --keep-best METRIC (the site chooses among the starts on validation)")
    for flag, value in (("--rounds", rounds), ("--check-every", 1 if check_every is None else check_every),
                        ("--validation-episodes", validation_episodes), ("--eval-episodes", eval_episodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag}: must be a positive integer, got {value!r}")
    if learning_rate is not None:
        if not (learning_rate > 0 and math.isfinite(learning_rate)):
            raise ConfigError(f"--learning-rate: must be > 0 and finite, got {learning_rate}")
        config = dataclasses.replace(config, algorithm=dataclasses.replace(config.algorithm, learning_rate=learning_rate))
    out = Path(out)
    _check_out(out)
    if os.path.lexists(out / "policy.pt"):
        raise ConfigError(f"--out {out}: already holds a personalised policy (policy.pt); choose another directory")
    index, spec = _site(config, site)
    params, from_round, federation, ledger_head = read_global_model(model)
    if federation is not None and federation != config.federation.name:
        raise ConfigError(f"--model {model}: the global model of federation {federation!r}, not of this config's "
                          f"{config.federation.name!r}")
    env = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=spec.num_envs, seed=spec.seed, site=spec.name)
    try:
        policy = initial_policy(config, env.single_observation_space, env.single_action_space)
        origin = copy.deepcopy(policy.state_dict())
        federated = list(policy.shared_parameters(config.local.federate_critic))
        if sum(p.numel() for p in federated) != params.size:
            raise ConfigError(f"--model {model}: holds {params.size} federated parameters; this config's policy has "
                              f"{sum(p.numel() for p in federated)} (another federation's model?)")
        set_flat(federated, params)
        eval_seed = derive_seed(config.federation.seed, index, 0xE7A1)
        before = _evaluate(policy, spec, eval_episodes, eval_seed)
        generator = torch.Generator().manual_seed(derive_seed(config.federation.seed, index, 0xF17E))
        if selection is None:
            tuned = FineTuned(fine_tune(policy, env, config, rounds, generator), rounds, 1.0, [], None)
        else:
            validation_seed = derive_seed(config.federation.seed, index, 0x7A11D)
            tuned = fine_tune_select(
                policy, env, config, rounds, generator, selection=selection,
                check_every=check_every or max(1, rounds // 4), baseline=baseline, origin=origin, weights=weights,
                validate=lambda p: _evaluate(p, spec, validation_episodes, validation_seed))
    finally:
        env.close()
    if not all(torch.isfinite(t).all() for t in policy.state_dict().values()):
        raise SecureFedRLError(f"site {spec.name}: the fine-tune diverged (non-finite parameters); nothing written: "
                               "try a smaller --learning-rate")
    after = _evaluate(policy, spec, eval_episodes, eval_seed)
    report = {"site": spec.name, "federation": config.federation.name, "model": str(model), "from_round": from_round,
              "model_ledger_head": ledger_head,
              "rounds": rounds, "env_steps": tuned.steps, "algorithm": config.local.algorithm,
              "learning_rate": getattr(config.algorithm, "learning_rate", None), "eval_episodes": eval_episodes,
              "before": before, "after": after, "kept_round": tuned.kept_round, "kept_weight": tuned.kept_weight,
              "selection": None if selection is None else {
                  "metric": selection.metric, "maximise": selection.maximise,
                  "requirements": [str(r) for r in selection.requirements], "interpolate": list(weights),
                  "validation_episodes": validation_episodes, "checks": tuned.checks,
                  "baseline": None if tuned.baseline is None else {"name": baseline, **tuned.baseline}},
              "privacy": "local only: no budget spent, nothing sent; this policy has no DP guarantee for the "
                         "site's data and must stay at the site"}
    _check_out(out)  # again: it may have changed during the fine-tune
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_out(out)  # (it may have been made meanwhile by someone else)
    buffer = io.BytesIO()
    torch.save({"policy_state_dict": policy.state_dict(), "site": spec.name, "from_round": from_round,
                "rounds": rounds, "kept_round": tuned.kept_round, "kept_weight": tuned.kept_weight}, buffer)
    try:  # the site's data, without noise; exclusive: a run beside this one may have written it meanwhile
        atomic_write(out / "policy.pt", buffer.getvalue(), mode=0o600, exclusive=True)
    except FileExistsError:
        raise ConfigError(f"--out {out}: another run wrote a personalised policy there meanwhile; nothing written, "
                          "choose another directory") from None
    except OSError as exc:  # e.g. a filesystem without hard links
        raise ConfigError(f"--out {out}: cannot write policy.pt exclusively there ({exc.strerror}); "
                          "choose a directory on a local filesystem") from None
    atomic_write(out / "personalise.json", (json.dumps(report, indent=1, sort_keys=True) + "\n").encode(), mode=0o600)
    return report
