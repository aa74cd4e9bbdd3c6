"""RL core: per-site gymnasium envs, actor-critic policies, local PPO/REINFORCE/ES, trajectory-level DP.

The round loop needs only what is re-exported here.
"""

from secure_fedrl.rl.dp_training import TrajectoryDP
from secure_fedrl.rl.envs import SiteVectorEnv, make_site_env, sample_overrides, validate_site_env
from secure_fedrl.rl.es import ESConfig
from secure_fedrl.rl.evaluate import evaluate
from secure_fedrl.rl.gae import compute_gae
from secure_fedrl.rl.local import LocalResult, train_local
from secure_fedrl.rl.policies import ActorCritic, get_flat, num_params, set_flat
from secure_fedrl.rl.ppo import PPOConfig
from secure_fedrl.rl.reinforce import ReinforceConfig

__all__ = [
    "ActorCritic",
    "ESConfig",
    "LocalResult",
    "PPOConfig",
    "ReinforceConfig",
    "SiteVectorEnv",
    "TrajectoryDP",
    "compute_gae",
    "evaluate",
    "get_flat",
    "make_site_env",
    "num_params",
    "sample_overrides",
    "set_flat",
    "train_local",
    "validate_site_env",
]
