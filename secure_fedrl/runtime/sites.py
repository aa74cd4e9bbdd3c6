"""Expansion of the config's [[sites]] entries into concrete, validated site specs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from secure_fedrl.config import SiteSection, expand_site_names


@dataclass(frozen=True)
class SiteSpec:
    """One concrete site: its env id, the attribute values it runs with, and its seed."""

    name: str
    env_id: str
    num_envs: int
    seed: int
    overrides: Mapping[str, float] = field(default_factory=dict)
    pace: float = 1.0  # simulated FedBuff only: mean duration of a local round


def expand_sites(sections: Sequence[SiteSection]) -> list[SiteSpec]:
    """Replicate `count` sites and draw each one's randomized attributes from its own seed.

    Drawing from the site seed (not the federation seed) keeps a site's environment the same
    when other sites are added or removed from the config.
    """
    from secure_fedrl.rl.envs import sample_overrides, validate_site_env

    specs = []
    for section in sections:
        for offset, name in enumerate(expand_site_names(section)):
            seed = section.seed + offset
            overrides = dict(section.overrides)
            if section.randomize:
                rng = np.random.default_rng([seed, 0x5EED])
                overrides.update(sample_overrides(dict(section.randomize), rng))
            validate_site_env(section.env, overrides, name)
            specs.append(SiteSpec(name=name, env_id=section.env, num_envs=section.num_envs,
                                  seed=seed, overrides=overrides, pace=section.pace))
    return specs
