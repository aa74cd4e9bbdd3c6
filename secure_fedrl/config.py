"""Typed federation config, read from TOML.

A config is a handful of frozen dataclasses. Every table is checked against its dataclass: an
unknown key, a value of the wrong type or out of range is a `ConfigError` whose one-line message
names the key (``strategy.server_lr: expected a number, got 'fast'``). Algorithm hyperparameters
(`[local.ppo]`, `[local.reinforce]`) are validated against the algorithms' own dataclasses, so the
config schema and the code can never drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import tomli_w

from secure_fedrl.errors import ConfigError


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FederationSection:
    name: str = "federation"
    """Human-readable name, copied into metrics and the ledger."""
    rounds: int = 20
    """Number of federated rounds."""
    seed: int = 0
    """Master seed: client sampling, per-round env seeds, torch generators all derive from it."""
    device: str = "cpu"
    """torch device for local training ("cpu" or "cuda[:i]")."""
    torch_threads: int = 1
    """torch intra-op threads; 1 is fastest and bit-reproducible for the small policies used here."""


@dataclass(frozen=True)
class LocalSection:
    algorithm: Literal["ppo", "reinforce", "es"] = "ppo"
    """Local RL algorithm run by every site ("es": antithetic evolution strategies, rl/es.py)."""
    steps: int = 0
    """Env steps per site per round (all vector copies together); 0 = use `episodes`."""
    episodes: int = 0
    """Completed episodes per site per round (used when `steps` is 0)."""
    federate_critic: bool = True
    """Federate the critic with the actor; False keeps each site's critic local and private."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of actor and critic."""
    linear_actor: bool = False
    """The actor is one linear layer on the observation (the critic keeps `hidden_sizes`): few
    federated parameters, and DP noise on the mean update grows with the square root of their number."""
    init_log_std: float = 0.0
    """Initial log standard deviation of a Gaussian (Box) actor's exploration, in action units (0: std 1).
    A smaller one suits actions that adjust a safe default (the healthcare pilot's therapy mode)."""


@dataclass(frozen=True)
class StrategySection:
    name: Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fedasync", "fedbuff"] = "fedavg"
    """Server strategy; "fedbuff" runs buffered asynchronous rounds (docs/deployment.md, "FedBuff")."""
    weighting: Literal["steps", "uniform"] = "steps"
    """Weight of each site's update in the mean: its env steps this round, or uniform."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Strategy hyperparameters (server_lr, beta1, beta2, tau, mu, alpha, staleness, a, b, ...)."""


@dataclass(frozen=True)
class SamplingSection:
    clients_per_round: int = 0
    """Sites sampled per round (0 = use `fraction`)."""
    fraction: float = 1.0
    """Fraction of sites sampled per round (used when `clients_per_round` is 0)."""
    poisson: bool = False
    """Include each site independently with probability `fraction` (what client-level DP assumes)."""


@dataclass(frozen=True)
class CompressionSection:
    method: Literal["none", "topk", "quantize", "shared_mask"] = "none"
    """Update compression applied by every site before upload."""
    ratio: float = 0.1
    """Kept fraction of coordinates (topk, shared_mask)."""
    levels: int = 16
    """Quantisation levels (quantize)."""
    error_feedback: bool = True
    """Carry what compression dropped into the next round (topk, quantize)."""


@dataclass(frozen=True)
class EvaluationSection:
    every: int = 5
    """Evaluate the global policy on every site's environment every `every` rounds (and at the end)."""
    episodes: int = 5
    """Deterministic-action episodes per site per evaluation."""
    max_sites: int = 0
    """Evaluate on at most this many sites (a fixed, seeded subset; 0 = every site)."""


@dataclass(frozen=True)
class SecureAggregationSection:
    enabled: bool = False
    """Sum the updates with SecAgg/SecAgg+ (the server never sees an individual update)."""
    threshold: float = 0.5
    """Shamir threshold t: an int >= 2 is absolute, a float in (0, 1) is a fraction of the sampled sites."""
    neighbors: int = 0
    """SecAgg+ graph degree k; 0 = automatic (complete graph up to 16 sites, else k from
    secagg.graph.secagg_plus_parameters, SPEC.md section 2); -1 = complete graph."""
    bits: int = 32
    """Ring Z_{2^bits} of the masked vectors."""
    clip: float = 0.0
    """Per-coordinate clip range of the fixed-point encoding (0 = derived from the privacy clip norm)."""
    dropout_rate: float = 0.0
    """Simulated probability that a sampled site drops out during the protocol."""
    max_colluding_sites: int = 0
    """Sites that may collude with the server (SPEC 8): DDG noise is sized, and rounds charged
    against the server, with only the honest shares a sum must hold despite them."""
    colluding_fraction: float = 0.0
    """gamma mode (instead of max_colluding_sites): at most floor(gamma * N) of the federation's N
    sites collude with the server, a set fixed before the round. A round of n sites may hold all
    C = min(floor(gamma N), n) of them (the server picks who is in it); each holder set then holds
    at most c_max of them except with probability 2^-40 per round attempt (hypergeometric tail,
    SPEC 2 and 8), a probability added to delta. In [0, 0.5)."""


@dataclass(frozen=True)
class PrivacySection:
    unit: Literal["none", "client", "trajectory"] = "none"
    """What one guarantee protects: a site's whole update, or one trajectory of a site."""
    mechanism: Literal["auto", "gaussian", "ddg"] = "auto"
    """Client level: central Gaussian (no secure aggregation) or distributed discrete Gaussian."""
    clip: float = 1.0
    """L2 clip norm C (of the whole update for client level, of each trajectory's gradient otherwise)."""
    noise_multiplier: float = 0.0
    """sigma; 0 = calibrate from `target_epsilon` over the planned rounds."""
    target_epsilon: float = 8.0
    """Privacy budget epsilon per federation (client level) or per site (trajectory level)."""
    delta: float = 1e-5
    """delta of the (epsilon, delta) guarantee."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Privacy accountant."""
    sample_rate: float = 0.25
    """Trajectory level: Poisson rate at which each collected trajectory joins a noisy step."""
    noisy_steps: int = 1
    """Trajectory level: noisy DP-SGD steps per site per round."""
    adaptive_clipping: bool = False
    """Client level: track a quantile of update norms (Andrew et al. 2021), its privacy cost included."""
    target_quantile: float = 0.5
    """Adaptive clipping: quantile of update norms to track."""
    clip_learning_rate: float = 0.2
    """Adaptive clipping: geometric step size of the clip norm."""
    clipped_count_stddev: float = 0.0
    """Adaptive clipping: noise on the clipped count (0 = expected clients / 20, as the paper)."""
    reproducible_noise: bool = False
    """Derive every privacy draw (client and episode sampling, rounding, noise) from the
    federation seed (experiments only: anyone holding the config knows the sample and could
    subtract the noise; no guarantee then). Default: drawn from the OS CSPRNG."""
    threat_model: Literal["auto", "server", "release"] = "auto"
    """Whom the budget and the noise calibration protect against (docs/privacy-model.md):
    "server" (it sees who took part; no amplification by sampling; each site accounted and
    capped on its own participations) or "release" (observers of the released models only).
    "auto": "server", except central Gaussian noise, which has no guarantee against the server."""
    max_participations: int = 0
    """Client level under the server threat model: participations per site the noise is
    calibrated for (a site refuses rounds beyond its budget); 0 = min(rounds,
    ceil(q*rounds + 3*sqrt(q*rounds*(1-q))))."""


@dataclass(frozen=True)
class SiteSection:
    name: str
    """Site id; with `count` > 1 the sites are named NAME-0 .. NAME-(count-1)."""
    env: str
    """Registered gymnasium id."""
    num_envs: int = 4
    """Vectorised copies of the environment."""
    seed: int = 0
    """Site seed (environment resets and perturbations)."""
    count: int = 1
    """Replicate this site `count` times with seeds seed, seed+1, ..."""
    overrides: Mapping[str, float] = field(default_factory=dict)
    """Environment attributes set on every copy (e.g. CartPole length, gravity, force_mag)."""
    randomize: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Attribute -> [low, high]: drawn once per site from the site seed (Packer et al. 2018)."""
    pace: float = 1.0
    """`simulate` with strategy "fedbuff" only: mean time a local round takes at this site, in
    simulated time units (a site with pace 2 trains half as often); a deployed site trains at
    its real speed."""


@dataclass(frozen=True)
class Config:
    federation: FederationSection
    local: LocalSection
    algorithm: Any  # PPOConfig | ReinforceConfig | ESConfig
    strategy: StrategySection
    sampling: SamplingSection
    compression: CompressionSection
    evaluation: EvaluationSection
    secure_aggregation: SecureAggregationSection
    privacy: PrivacySection
    sites: tuple[SiteSection, ...]

    @property
    def num_sites(self) -> int:
        """Sites after expanding every entry's `count`."""
        return sum(s.count for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain TOML-able data (every default made explicit)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "sites":
                out["sites"] = [_plain(dataclasses.asdict(s)) for s in value]
            elif f.name == "algorithm":
                out.setdefault("local", {})[self.local.algorithm] = _plain(dataclasses.asdict(value))
            else:
                out.setdefault(f.name, {}).update(_plain(dataclasses.asdict(value)))
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def fingerprint(self, *, ignore_rounds: bool = True) -> str:
        """SHA-256 of the resolved config; `--resume` compares it (rounds may be extended)."""
        data = self.to_dict()
        if ignore_rounds:
            data["federation"] = {k: v for k, v in data["federation"].items() if k != "rounds"}
        return hashlib.sha256(tomli_w.dumps(data).encode()).hexdigest()


SECTIONS: dict[str, type] = {
    "federation": FederationSection,
    "local": LocalSection,
    "strategy": StrategySection,
    "sampling": SamplingSection,
    "compression": CompressionSection,
    "evaluation": EvaluationSection,
    "secure_aggregation": SecureAggregationSection,
    "privacy": PrivacySection,
}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate a federation config file. `overrides` maps "section.key" to a value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate plain data (as parsed from TOML) into a `Config`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config: expected a table at the top level")
    known = set(SECTIONS) | {"sites"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown section (allowed: {', '.join(sorted(known))})")

    sections: dict[str, Any] = {}
    local_raw = dict(_table(raw, "local"))
    algo_tables = {name: local_raw.pop(name) for name in ("ppo", "reinforce", "es") if name in local_raw}
    for name, cls in SECTIONS.items():
        table = local_raw if name == "local" else _table(raw, name)
        sections[name] = build_dataclass(cls, table, name)

    algo_name = sections["local"].algorithm
    for other in algo_tables:
        if other != algo_name:
            raise ConfigError(f"local.{other}: given, but local.algorithm is {algo_name!r}")
    algo_cls = _algorithm_class(algo_name)
    algorithm = build_dataclass(algo_cls, _as_table(algo_tables.get(algo_name, {}), f"local.{algo_name}"),
                                f"local.{algo_name}")

    sites_raw = raw.get("sites")
    if not sites_raw:
        raise ConfigError("sites: at least one [[sites]] entry is required")
    if not isinstance(sites_raw, list):
        raise ConfigError("sites: expected an array of tables ([[sites]])")
    sites = tuple(build_dataclass(SiteSection, _as_table(s, f"sites[{i}]"), f"sites[{i}]")
                  for i, s in enumerate(sites_raw))

    config = Config(algorithm=algorithm, sites=sites, **sections)
    _check_ranges(config)
    return config


def _algorithm_class(name: str) -> type:
    if name == "ppo":
        from secure_fedrl.rl.ppo import PPOConfig

        return PPOConfig
    if name == "es":
        from secure_fedrl.rl.es import ESConfig

        return ESConfig
    from secure_fedrl.rl.reinforce import ReinforceConfig

    return ReinforceConfig


def _table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return _as_table(raw.get(name, {}), name)


def _as_table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# Generic dataclass validation
# --------------------------------------------------------------------------------------------


def build_dataclass(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from `table`, checking keys and types; errors name the key."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key (allowed: {', '.join(fields)})")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required key is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__ checks
        raise ConfigError(f"{where}: {exc}") from None


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected an array, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected an array of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected an array, got {value!r}")
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        if not args:
            return dict(value)
        return {coerce(k, args[0], where): coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def _plain(value: Any) -> Any:
    """Dataclass-asdict output -> TOML-able (tuples become lists, None entries dropped)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Cross-field checks
# --------------------------------------------------------------------------------------------


def _check_ranges(c: Config) -> None:
    def need(cond: bool, where: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {msg}")

    f = c.federation
    need(f.rounds >= 1, "federation.rounds", f"must be >= 1, got {f.rounds}")
    need(f.torch_threads >= 1, "federation.torch_threads", f"must be >= 1, got {f.torch_threads}")
    need(re.fullmatch(r"cpu|cuda(:\d+)?", f.device) is not None, "federation.device",
         f"expected 'cpu', 'cuda' or 'cuda:i', got {f.device!r}")
    lo = c.local
    need(lo.steps >= 0 and lo.episodes >= 0, "local.steps", "steps and episodes must be >= 0")
    need(lo.steps > 0 or lo.episodes > 0, "local.steps", "set local.steps or local.episodes to a positive number")
    need(all(h >= 1 for h in lo.hidden_sizes) and lo.hidden_sizes, "local.hidden_sizes", "must be positive widths")
    need(-5.0 <= lo.init_log_std <= 2.0, "local.init_log_std",
         f"must be in [-5, 2] (std exp(-5) = 0.0067 to exp(2) = 7.4), got {lo.init_log_std}")
    if lo.algorithm == "es":
        need(lo.steps == 0 and lo.episodes >= 2 and lo.episodes % 2 == 0, "local.episodes",
             "algorithm 'es' runs antithetic pairs of whole episodes: set local.episodes to an even number "
             ">= 2 and local.steps = 0")
        need(c.privacy.unit != "trajectory", "local.algorithm",
             "'es' takes no per-trajectory gradient steps, so trajectory-level DP cannot apply: "
             "use privacy.unit = 'client' (or 'none')")
        need(c.strategy.name not in ("fedprox", "scaffold"), "local.algorithm",
             f"'es' takes one step per round, not local gradient steps: strategy {c.strategy.name!r} "
             "(a correction of those steps) does not apply")
    s = c.sampling
    need(s.clients_per_round >= 0, "sampling.clients_per_round", "must be >= 0")
    need(0.0 < s.fraction <= 1.0, "sampling.fraction", f"must be in (0, 1], got {s.fraction}")
    need(not (s.poisson and s.clients_per_round), "sampling.poisson",
         "Poisson sampling uses sampling.fraction; set clients_per_round = 0")
    cm = c.compression
    need(0.0 < cm.ratio <= 1.0, "compression.ratio", f"must be in (0, 1], got {cm.ratio}")
    need(cm.levels >= 1, "compression.levels", f"must be >= 1, got {cm.levels}")
    ev = c.evaluation
    need(ev.every >= 1, "evaluation.every", f"must be >= 1, got {ev.every}")
    need(ev.episodes >= 1, "evaluation.episodes", f"must be >= 1, got {ev.episodes}")
    need(ev.max_sites >= 0, "evaluation.max_sites", f"must be >= 0, got {ev.max_sites}")
    sa = c.secure_aggregation
    need(1 <= sa.bits <= 32, "secure_aggregation.bits", f"must be in [1, 32], got {sa.bits}")
    need(0.0 <= sa.dropout_rate < 1.0, "secure_aggregation.dropout_rate", f"must be in [0, 1), got {sa.dropout_rate}")
    need(sa.threshold > 0 and (sa.threshold < 1 or float(sa.threshold).is_integer() and sa.threshold >= 2),
         "secure_aggregation.threshold", f"must be a fraction in (0, 1) or an integer >= 2, got {sa.threshold}")
    need(sa.neighbors >= -1, "secure_aggregation.neighbors", f"must be -1 (complete), 0 (auto) or a degree, got {sa.neighbors}")
    need(sa.clip >= 0, "secure_aggregation.clip", f"must be >= 0, got {sa.clip}")
    need(not (sa.enabled and cm.method in ("topk", "quantize")), "compression.method",
         f"{cm.method!r} gives every site its own sparsity pattern or scale, which cannot be summed under "
         f"secure aggregation; use 'shared_mask' or 'none' (docs/compression.md)")
    need(not (sa.enabled and c.strategy.weighting == "steps"), "strategy.weighting",
         "under secure aggregation the server sees only the sum, so updates are averaged uniformly; "
         "set weighting = 'uniform'")
    need(not (sa.enabled and c.strategy.name == "fedasync"), "strategy.name",
         "fedasync applies updates one by one and cannot run under secure aggregation (only sums are revealed)")
    if c.strategy.name == "fedbuff":
        need(sa.enabled, "strategy.name", "fedbuff aggregates each buffer of K arrivals through secure aggregation: "
             "set secure_aggregation.enabled = true")
        need(cm.method == "none", "compression.method",
             "fedbuff sites train before they know the round; compression other than 'none' is not supported")
        need(c.privacy.unit != "trajectory", "privacy.unit",
             "fedbuff with trajectory-level DP is not supported yet (use 'client' or 'none')")
        need(not (s.clients_per_round or s.poisson or s.fraction != 1.0), "sampling",
             "fedbuff takes the first buffer_size sites that finish training, nothing is sampled: remove [sampling]")
    need(not (c.strategy.name == "scaffold" and c.strategy.weighting == "steps"), "strategy.weighting",
         "scaffold keeps the server's c equal to the mean of the sites' c_i, which needs the control-variate "
         "deltas averaged uniformly; set weighting = 'uniform'")
    p = c.privacy
    if p.unit != "none":
        need(p.clip > 0, "privacy.clip", f"must be > 0, got {p.clip}")
        need(p.noise_multiplier >= 0, "privacy.noise_multiplier", f"must be > 0 (or 0 to calibrate), got {p.noise_multiplier}")
        need(0.0 < p.delta < 1.0, "privacy.delta", f"must be in (0, 1), got {p.delta}")
        need(p.target_epsilon > 0, "privacy.target_epsilon", f"must be > 0, got {p.target_epsilon}")
        need(0.0 < p.sample_rate <= 1.0, "privacy.sample_rate", f"must be in (0, 1], got {p.sample_rate}")
        need(p.noisy_steps >= 1, "privacy.noisy_steps", f"must be >= 1, got {p.noisy_steps}")
        need(0.0 < p.target_quantile < 1.0, "privacy.target_quantile", f"must be in (0, 1), got {p.target_quantile}")
        need(p.clip_learning_rate > 0, "privacy.clip_learning_rate", f"must be > 0, got {p.clip_learning_rate}")
        need(p.clipped_count_stddev >= 0, "privacy.clipped_count_stddev", f"must be >= 0, got {p.clipped_count_stddev}")
        need(c.strategy.weighting == "uniform", "strategy.weighting",
             "weights from the sites' private step counts are not covered by differential privacy; "
             "set weighting = 'uniform'")
    need(sa.max_colluding_sites >= 0, "secure_aggregation.max_colluding_sites",
         f"must be >= 0, got {sa.max_colluding_sites}")
    need(isinstance(sa.colluding_fraction, (int, float)) and not isinstance(sa.colluding_fraction, bool)
         and 0.0 <= sa.colluding_fraction < 0.5, "secure_aggregation.colluding_fraction",
         f"must be in [0, 0.5), got {sa.colluding_fraction!r}")
    need(not (sa.colluding_fraction > 0 and sa.max_colluding_sites > 0), "secure_aggregation.colluding_fraction",
         "give either colluding_fraction (gamma mode) or max_colluding_sites (c mode), not both")
    if sa.colluding_fraction > 0:
        need(sa.enabled, "secure_aggregation.colluding_fraction",
             f"is {sa.colluding_fraction!r} but secure aggregation is disabled (set secure_aggregation.enabled = true)")
        corrupt = corrupt_sites(sa.colluding_fraction, c.num_sites)
        need(corrupt >= 1, "secure_aggregation.colluding_fraction",
             f"floor({sa.colluding_fraction!r} x {c.num_sites} sites) = 0 colluders: gamma mode would "
             f"protect against no colluder (raise it to at least 1/{c.num_sites}, or set 0)")
        # each site caps its SecAgg+ attempts at floor(delta / (100 x 2^-40)) (its own SiteGuard), DP or not
        need(0.0 < p.delta < 1.0, "privacy.delta", f"must be in (0, 1) in gamma mode (it caps each site's "
             f"SecAgg+ attempts), got {p.delta}")
        need(p.target_epsilon > 0, "privacy.target_epsilon", f"must be > 0, got {p.target_epsilon}")
        from fractions import Fraction

        from secure_fedrl.privacy.budget import GRAPH_DELTA_SHARE
        from secure_fedrl.runtime.secure_aggregation import COMPLETE_GRAPH_UP_TO, GRAPH_SIGMA

        k = sa.neighbors  # may a round's graph be sparse (SecAgg+: GraphReveals, capped)?
        sparse = (k == 0 and c.num_sites > COMPLETE_GRAPH_UP_TO) or 0 < k < c.num_sites - 1
        floor_delta = GRAPH_DELTA_SHARE * Fraction(2) ** -int(GRAPH_SIGMA)
        need(not sparse or Fraction(p.delta) >= floor_delta, "privacy.delta",
             f"must be >= {GRAPH_DELTA_SHARE} x 2^-{int(GRAPH_SIGMA)} (~{float(floor_delta):.3g}) in gamma mode "
             f"with a SecAgg+ graph, got {p.delta}: each site caps its SecAgg+ attempts at floor(delta / "
             f"({GRAPH_DELTA_SHARE} x 2^-{int(GRAPH_SIGMA)})), 0 below that (every round refused)")
    need(p.max_participations >= 0, "privacy.max_participations", f"must be >= 0, got {p.max_participations}")
    if p.unit == "client":
        mech = p.mechanism
        need(not (p.threat_model == "server" and (mech == "gaussian" or mech == "auto" and not sa.enabled)),
             "privacy.threat_model",
             "'server' with central Gaussian noise gives no guarantee (the server sees every update); "
             "enable [secure_aggregation] (distributed noise) or set threat_model = 'release'")
        need(not (mech == "ddg" and not sa.enabled), "privacy.mechanism",
             "'ddg' (distributed discrete Gaussian) needs [secure_aggregation] enabled = true")
        need(not (mech == "gaussian" and sa.enabled), "privacy.mechanism",
             "'gaussian' is central noise added by the server; under secure aggregation use 'ddg'")
        need(c.strategy.name == "fedbuff" or s.poisson or s.fraction == 1.0 and not s.clients_per_round,
             "sampling.poisson",
             "client-level DP accounting assumes Poisson client sampling: set poisson = true (or sample every site)")
        need(c.strategy.name != "fedasync", "strategy.name", "client-level DP needs synchronous rounds")
        need(c.strategy.name != "scaffold", "strategy.name",
             "scaffold with privacy.unit = 'client' is not supported: clipping and noise on the control-variate "
             "deltas would pull the server's c away from the mean of the sites' c_i for good")
    need(not (p.adaptive_clipping and (p.unit != "client" or sa.enabled)), "privacy.adaptive_clipping",
         "adaptive clipping is implemented for client-level DP with central noise only (no secure aggregation)")
    if p.unit == "trajectory":
        need(lo.episodes > 0 and lo.steps == 0, "local.episodes",
             "trajectory-level DP collects whole episodes per round: set local.episodes and local.steps = 0")
    names = set()
    for i, site in enumerate(c.sites):
        where = f"sites[{i}]"
        need(bool(site.name), f"{where}.name", "must not be empty")
        need(site.num_envs >= 1, f"{where}.num_envs", f"must be >= 1, got {site.num_envs}")
        need(site.count >= 1, f"{where}.count", f"must be >= 1, got {site.count}")
        need(site.seed >= 0, f"{where}.seed", f"must be >= 0, got {site.seed}")
        need(site.pace > 0, f"{where}.pace", f"must be > 0, got {site.pace}")
        for attr, (low, high) in site.randomize.items():
            need(low <= high, f"{where}.randomize.{attr}", f"low {low} is above high {high}")
            need(attr not in site.overrides, f"{where}.randomize.{attr}", "also given in overrides; pick one")
        for name in expand_site_names(site):
            need(name not in names, f"{where}.name", f"duplicate site id {name!r}")
            names.add(name)


def resolved_mechanism(c: Config) -> str:
    """The privacy mechanism a config runs: "none", "gaussian", "ddg" or "dp-sgd"."""
    p = c.privacy
    if p.unit == "none":
        return "none"
    if p.unit == "trajectory":
        return "dp-sgd"
    if p.mechanism != "auto":
        return p.mechanism
    return "ddg" if c.secure_aggregation.enabled else "gaussian"


def resolved_threat_model(c: Config) -> str:
    """`privacy.threat_model` with "auto" resolved: "release" for central Gaussian, else "server"."""
    t = c.privacy.threat_model
    if t != "auto":
        return t
    return "release" if resolved_mechanism(c) == "gaussian" else "server"


def max_participations(c: Config) -> int:
    """Participations per site the server-threat-model calibration plans for (documented rule)."""
    p, rounds = c.privacy, c.federation.rounds
    if p.max_participations:
        return min(p.max_participations, rounds)
    s = c.sampling
    # FedBuff: who takes part is who finishes first, so a fast site may be in every round.
    q = s.fraction if s.poisson and c.strategy.name != "fedbuff" else 1.0
    mean = q * rounds
    return max(1, min(rounds, math.ceil(mean + 3.0 * math.sqrt(mean * (1.0 - q)) - 1e-9)))


def corrupt_sites(fraction: float, num_sites: int) -> int:
    """floor(gamma N) colluders of gamma mode, with gamma read as the decimal it was written as
    (0.29 x 100 = 29, not the 28 binary floating point gives): never fewer than the config states."""
    from fractions import Fraction

    return math.floor(Fraction(repr(float(fraction))) * num_sites)


def expand_site_names(site: SiteSection) -> list[str]:
    return [site.name] if site.count == 1 else [f"{site.name}-{i}" for i in range(site.count)]
