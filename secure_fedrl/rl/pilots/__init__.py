"""Pilot environments: the healthcare (Hovorka T1D insulin pump) and finance (portfolio desk)
pilots. Importing this package registers them with gymnasium, so a config can name them
(`[[sites]] env = "secure_fedrl/Hovorka-v0"` or `"secure_fedrl/Portfolio-v0"`); the site
definitions live in clients/healthcare and clients/finance.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym

HOVORKA_ID = "secure_fedrl/Hovorka-v0"
PORTFOLIO_ID = "secure_fedrl/Portfolio-v0"

__all__ = ["HOVORKA_ID", "PORTFOLIO_ID", "evaluation_overrides", "register"]


def register() -> None:
    """Register the pilot envs (idempotent). Episode limits are the envs' own (truncation)."""
    for env_id, entry in ((HOVORKA_ID, "secure_fedrl.rl.pilots.hovorka:HovorkaEnv"),
                          (PORTFOLIO_ID, "secure_fedrl.rl.pilots.portfolio:PortfolioEnv")):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, disable_env_checker=True)


def evaluation_overrides(env_id: str) -> Mapping[str, float]:
    """Attributes an evaluation sets on top of a site's own (the finance desks report on their
    held-out window)."""
    if env_id == PORTFOLIO_ID:
        return {"split": 1.0}
    return {}


register()
