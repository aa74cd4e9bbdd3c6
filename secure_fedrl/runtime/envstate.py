"""Capture and restore a site's vector env between process runs (for an exact `--resume`).

Sites keep their environments across rounds (episodes continue over round boundaries, so local
training sees late-episode states), so an exact resume has to bring back every copy's physics
state and random generator, not just reseed.
"""

from __future__ import annotations

import pickle

from secure_fedrl.rl.envs import SiteVectorEnv

_VEC_SKIP = {"envs", "env_fns"}


def capture_env_state(env: SiteVectorEnv) -> bytes:
    vec = env.env
    return pickle.dumps({
        "envs": vec.envs,
        "vec": {k: v for k, v in vars(vec).items() if k not in _VEC_SKIP},
        "wrapper": {k: getattr(env, k) for k in SiteVectorEnv.STATE_ATTRS},
    }, protocol=pickle.HIGHEST_PROTOCOL)


def restore_env_state(env: SiteVectorEnv, blob: bytes) -> None:
    state = pickle.loads(blob)
    vec = env.env
    vec.envs = state["envs"]
    for key, value in state["vec"].items():
        setattr(vec, key, value)
    for key, value in state["wrapper"].items():
        setattr(env, key, value)
