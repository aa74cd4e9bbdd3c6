"""Per-site gymnasium environments with physical-parameter overrides.

Heterogeneity between sites is modelled as different physical constants of one registered env
(Packer et al. 2018). Two gymnasium 1.x traps shape this module:

* setting an attribute on a wrapper (what ``gym.make`` returns) changes nothing: the dynamics read
  ``env.unwrapped``; so overrides are applied to the unwrapped env, inside each copy's factory,
  before the vector env reads the spaces;
* some envs derive constants in ``__init__`` (CartPole's ``total_mass``/``polemass_length``,
  Pendulum's action bounds from ``max_torque``, ...). Those go stale unless recomputed, so every
  override is followed by :func:`_recompute_derived` (a derived attribute the user overrode
  explicitly is left as given).

Any real numeric attribute of the unwrapped env may be overridden; the aliases below only add
friendlier spellings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl import pilots as _pilots  # noqa: F401  (registers the pilot envs' gymnasium ids)

__all__ = [
    "ALIASES",
    "SiteVectorEnv",
    "apply_overrides",
    "make_site_env",
    "resolve_attribute",
    "sample_overrides",
    "validate_site_env",
]

# Friendly spellings, per unwrapped env class name -> real attribute.
ALIASES: dict[str, dict[str, str]] = {
    "CartPoleEnv": {
        "half_length": "length",
        "pole_length": "length",
        "pole_mass": "masspole",
        "cart_mass": "masscart",
        "force": "force_mag",
    },
    "PendulumEnv": {
        "gravity": "g",
        "mass": "m",
        "length": "l",
    },
    "AcrobotEnv": {
        "link_length_1": "LINK_LENGTH_1",
        "link_length_2": "LINK_LENGTH_2",
        "link_mass_1": "LINK_MASS_1",
        "link_mass_2": "LINK_MASS_2",
        "link_com_pos_1": "LINK_COM_POS_1",
        "link_com_pos_2": "LINK_COM_POS_2",
        "link_moi": "LINK_MOI",
        "max_vel_1": "MAX_VEL_1",
        "max_vel_2": "MAX_VEL_2",
    },
}


def _env_label(env_id: str, site: str) -> str:
    return f"site {site!r}, env {env_id!r}"


def _make_raw(env_id: str, site: str) -> gym.Env:
    try:
        return gym.make(env_id)
    except gym.error.DependencyNotInstalled as exc:
        raise ConfigError(f"{_env_label(env_id, site)}: needs a dependency that is not installed ({exc})") from None
    except gym.error.Error as exc:  # NameNotFound, VersionNotFound, NamespaceNotFound, ...
        raise ConfigError(f"{_env_label(env_id, site)}: not a registered gymnasium env ({exc})") from None
    except TypeError as exc:
        raise ConfigError(f"{_env_label(env_id, site)}: cannot be created ({exc})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def resolve_attribute(unwrapped: gym.Env, name: str) -> str:
    """Map a user-facing override name to the unwrapped env's real attribute name."""
    aliases = ALIASES.get(type(unwrapped).__name__, {})
    if name in aliases:
        return aliases[name]
    if hasattr(unwrapped, name):
        return name
    lowered = {k.lower(): v for k, v in aliases.items()}
    return lowered.get(name.lower(), name)


def _check_overrides(unwrapped: gym.Env, env_id: str, overrides: Mapping[str, Any], site: str) -> dict[str, float]:
    """Return {real attribute: float value}, raising ConfigError naming the first bad entry."""
    label = _env_label(env_id, site)
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{label}: overrides must be a table of attribute = number, got {type(overrides).__name__}")
    resolved: dict[str, float] = {}
    for name, value in overrides.items():
        if not isinstance(name, str) or not name or name.startswith("_"):
            raise ConfigError(f"{label}: invalid override name {name!r}")
        attr = resolve_attribute(unwrapped, name)
        if not hasattr(unwrapped, attr):
            raise ConfigError(f"{label}: env has no attribute {name!r} to override")
        current = getattr(unwrapped, attr)
        if not _is_number(current):
            raise ConfigError(
                f"{label}: attribute {name!r} is not a numeric parameter (it is {type(current).__name__})"
            )
        if not _is_number(value):
            raise ConfigError(f"{label}: override {name!r} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{label}: override {name!r} must be finite, got {value!r}")
        if attr in resolved:
            raise ConfigError(f"{label}: attribute {attr!r} is overridden twice (via {name!r})")
        integral = isinstance(current, (int, np.integer)) and float(value).is_integer()
        resolved[attr] = int(value) if integral else float(value)
    return resolved


def validate_site_env(env_id: str, overrides: Mapping[str, Any], site: str = "?") -> None:
    """Fail fast, with one line naming site, env id and attribute, on a bad env id or override."""
    if not isinstance(env_id, str) or not env_id:
        raise ConfigError(f"site {site!r}: env id must be a non-empty string, got {env_id!r}")
    env = _make_raw(env_id, site)
    try:
        _check_overrides(env.unwrapped, env_id, overrides, site)
    finally:
        env.close()


def _recompute_derived(env: Any, explicit: set[str]) -> None:
    """Refresh constants that the env's ``__init__`` derived from the overridden ones."""

    def setd(name: str, value: Any) -> None:
        if name not in explicit:
            setattr(env, name, value)

    cls = type(env).__name__
    if cls == "CartPoleEnv":
        setd("total_mass", env.masspole + env.masscart)
        setd("polemass_length", env.masspole * env.length)
        high = np.array(
            [env.x_threshold * 2, np.inf, env.theta_threshold_radians * 2, np.inf], dtype=np.float32
        )
        env.observation_space = spaces.Box(-high, high, dtype=np.float32)
    elif cls == "PendulumEnv":
        high = np.array([1.0, 1.0, env.max_speed], dtype=np.float32)
        env.action_space = spaces.Box(low=-env.max_torque, high=env.max_torque, shape=(1,), dtype=np.float32)
        env.observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
    elif cls == "AcrobotEnv":
        # The centre of mass sits mid-link; moving a link's length moves its centre of mass.
        for i in (1, 2):
            if f"LINK_LENGTH_{i}" in explicit:
                setd(f"LINK_COM_POS_{i}", 0.5 * getattr(env, f"LINK_LENGTH_{i}"))
        high = np.array([1.0, 1.0, 1.0, 1.0, env.MAX_VEL_1, env.MAX_VEL_2], dtype=np.float32)
        env.observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
    elif cls == "MountainCarEnv":
        env.low = np.array([env.min_position, -env.max_speed], dtype=np.float32)
        env.high = np.array([env.max_position, env.max_speed], dtype=np.float32)
        env.observation_space = spaces.Box(env.low, env.high, dtype=np.float32)
    elif cls == "Continuous_MountainCarEnv":
        env.low_state = np.array([env.min_position, -env.max_speed], dtype=np.float32)
        env.high_state = np.array([env.max_position, env.max_speed], dtype=np.float32)
        env.action_space = spaces.Box(low=env.min_action, high=env.max_action, shape=(1,), dtype=np.float32)
        env.observation_space = spaces.Box(low=env.low_state, high=env.high_state, dtype=np.float32)


def apply_overrides(env: gym.Env, overrides: Mapping[str, Any], *, env_id: str = "?", site: str = "?") -> gym.Env:
    """Set overrides on ``env.unwrapped`` (where the dynamics read them) and refresh derived constants."""
    unwrapped = env.unwrapped
    resolved = _check_overrides(unwrapped, env_id, overrides, site)
    for attr, value in resolved.items():
        setattr(unwrapped, attr, value)
    if resolved:
        _recompute_derived(unwrapped, set(resolved))
    return env


def _factory(env_id: str, overrides: Mapping[str, Any], site: str) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        return apply_overrides(_make_raw(env_id, site), overrides, env_id=env_id, site=site)

    return make


class SiteVectorEnv(VectorWrapper):
    """A site's vector env that remembers where it is between rounds.

    The env persists across federated rounds, so a rollout continues from the last observation
    and episode returns keep accumulating across round boundaries. Autoreset is SAME_STEP: the
    observation returned for a finished copy is already the next episode's first one, and the
    finished episode's last observation is in ``info["final_obs"]`` (needed to bootstrap
    truncated episodes).
    """

    STATE_ATTRS = ("last_obs", "last_done", "episode_return", "episode_length", "completed_returns",
                   "completed_lengths")
    """What, besides the inner vector env, must be saved for an exact resume."""

    def __init__(self, env: VectorEnv, *, env_id: str, site: str, seed: int) -> None:
        super().__init__(env)
        mode = env.metadata.get("autoreset_mode")
        if mode not in (AutoresetMode.SAME_STEP, AutoresetMode.SAME_STEP.value):
            raise ConfigError(f"site {site!r}: the vector env must use SAME_STEP autoreset, got {mode!r}")
        self.env_id = env_id
        self.site = site
        self.seed = seed
        self.last_obs: np.ndarray | None = None
        self.last_done = np.zeros(self.num_envs, dtype=np.float32)
        self.episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_length = np.zeros(self.num_envs, dtype=np.int64)
        self.completed_returns: list[float] = []
        self.completed_lengths: list[int] = []

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.last_obs = obs
        self.last_done = np.zeros(self.num_envs, dtype=np.float32)
        self.episode_return[:] = 0.0
        self.episode_length[:] = 0
        return obs, info

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        self.episode_return += rewards
        self.episode_length += 1
        if "_final_obs" in info:  # SAME_STEP autoreset marks exactly the copies that finished
            idx = np.flatnonzero(info["_final_obs"])
            self.completed_returns.extend(self.episode_return[idx].tolist())
            self.completed_lengths.extend(self.episode_length[idx].tolist())
            self.episode_return[idx] = 0.0
            self.episode_length[idx] = 0
        self.last_obs = obs
        return obs, rewards, terminated, truncated, info

    def pop_completed(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of episodes completed since the last call."""
        returns, lengths = self.completed_returns, self.completed_lengths
        self.completed_returns, self.completed_lengths = [], []
        return returns, lengths


def make_site_env(
    env_id: str, *, overrides: Mapping[str, float], num_envs: int, seed: int, site: str = "?"
) -> SiteVectorEnv:
    """A seeded SyncVectorEnv of ``num_envs`` identical copies of the site's environment.

    Copy i is seeded with ``seed + i`` (gymnasium's convention), and so is its action space.
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ConfigError(f"{_env_label(env_id, site)}: num_envs must be a positive integer, got {num_envs!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"{_env_label(env_id, site)}: seed must be an integer, got {seed!r}")
    validate_site_env(env_id, overrides, site)
    vec = SyncVectorEnv(
        [_factory(env_id, dict(overrides), site) for _ in range(num_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    env = SiteVectorEnv(vec, env_id=env_id, site=site, seed=int(seed))
    try:
        env.reset(seed=int(seed))
    except (ValueError, gym.error.DependencyNotInstalled) as exc:  # rejected parameters / missing data (pilots)
        env.close()
        raise ConfigError(f"{_env_label(env_id, site)}: {exc}") from None
    env.action_space.seed(int(seed))
    return env


def sample_overrides(ranges: Mapping[str, tuple[float, float]], rng: np.random.Generator) -> dict[str, float]:
    """Draw each override uniformly from its [low, high] range (in sorted key order, so the draw is
    reproducible regardless of the mapping's insertion order)."""
    out: dict[str, float] = {}
    for name in sorted(ranges):
        bounds = ranges[name]
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ConfigError(f"override range {name!r} must be a [low, high] pair, got {bounds!r}")
        low, high = bounds
        if not (_is_number(low) and _is_number(high)) or not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"override range {name!r} must hold two finite numbers, got {bounds!r}")
        if low > high:
            raise ConfigError(f"override range {name!r} has low {low} > high {high}")
        out[name] = float(rng.uniform(low, high))
    return out
