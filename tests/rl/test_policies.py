"""ActorCritic distributions, flat-vector round trip, federated parameter groups."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from secure_fedrl.errors import ConfigError
from secure_fedrl.rl.policies import ActorCritic, get_flat, num_params, set_flat

OBS = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)


@pytest.fixture(params=["discrete", "box"])
def policy(request):
    torch.manual_seed(0)
    act = spaces.Discrete(3) if request.param == "discrete" else spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)
    return ActorCritic(OBS, act, hidden_sizes=(16, 8))


def test_flat_round_trip_is_exact(policy):
    params = list(policy.parameters())
    vec = get_flat(params)
    assert vec.dtype == np.float32 and vec.shape == (num_params(params),)
    rng = np.random.default_rng(1)
    new = rng.standard_normal(vec.shape).astype(np.float32)
    set_flat(params, new)
    assert np.array_equal(get_flat(params), new)
    set_flat(params, vec)
    assert np.array_equal(get_flat(params), vec)
    # get_flat returns a copy: mutating it does not touch the parameters
    vec[:] = 0
    assert not np.array_equal(get_flat(params), vec)


def test_set_flat_rejects_wrong_length(policy):
    params = list(policy.parameters())
    with pytest.raises(ValueError, match="length"):
        set_flat(params, np.zeros(num_params(params) + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        set_flat(params, np.zeros((2, 2), dtype=np.float32))


def test_parameter_groups(policy):
    actor, critic = policy.actor_parameters(), policy.critic_parameters()
    assert {id(p) for p in actor}.isdisjoint({id(p) for p in critic})
    assert num_params(actor) + num_params(critic) == num_params(policy.parameters())
    assert policy.shared_parameters(False) == actor
    assert policy.shared_parameters(True) == actor + critic
    # the flat vector of the federated actor only leaves the critic untouched
    before = get_flat(critic)
    set_flat(policy.shared_parameters(False), np.zeros(num_params(actor), dtype=np.float32))
    assert np.array_equal(get_flat(critic), before)


def test_log_prob_and_entropy_match_torch_distributions(policy):
    obs = torch.randn(5, 4)
    with torch.no_grad():
        action, logp, value = policy.act(obs, torch.Generator().manual_seed(0))
        logp2, ent, value2 = policy.evaluate(obs, action)
        out = policy.actor(obs)
        if policy.discrete:
            dist = torch.distributions.Categorical(logits=out)
            ref_logp, ref_ent = dist.log_prob(action), dist.entropy()
        else:
            dist = torch.distributions.Normal(out, policy.actor_logstd.exp().expand_as(out))
            ref_logp, ref_ent = dist.log_prob(action).sum(-1), dist.entropy().sum(-1)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(logp2, ref_logp)
    torch.testing.assert_close(ent, ref_ent)
    torch.testing.assert_close(value, value2)
    assert value.shape == (5,)


def test_sampling_is_reproducible_and_follows_probabilities():
    torch.manual_seed(0)
    pol = ActorCritic(OBS, spaces.Discrete(2))
    obs = torch.zeros(20000, 4)
    a1 = pol.sample(obs, torch.Generator().manual_seed(3))
    a2 = pol.sample(obs, torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2)
    p1 = torch.softmax(pol.actor(obs[:1]), -1)[0, 1].item()
    assert abs(a1.float().mean().item() - p1) < 0.02


def test_gaussian_deterministic_action_is_mean_and_unclipped():
    torch.manual_seed(0)
    pol = ActorCritic(OBS, spaces.Box(-0.1, 0.1, shape=(1,), dtype=np.float32))
    with torch.no_grad():
        pol.actor[-1].bias.fill_(5.0)  # mean far outside the bounds
        a = pol.deterministic_action(torch.zeros(3, 4))
    assert torch.allclose(a, torch.full((3, 1), 5.0))


def test_orthogonal_init_like_cleanrl():
    torch.manual_seed(0)
    pol = ActorCritic(OBS, spaces.Discrete(2), hidden_sizes=(64, 64))
    w = pol.actor[2].weight.detach()  # 64x64 hidden layer, gain sqrt(2)
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(64), atol=1e-4, rtol=0)
    assert torch.all(pol.actor[0].bias == 0)
    assert pol.actor[-1].weight.detach().norm(dim=1).max() < 0.02  # policy head gain 0.01


def test_works_with_real_env_spaces():
    env = gym.make("Pendulum-v1")
    pol = ActorCritic(env.observation_space, env.action_space)
    assert not pol.discrete and pol.act_dim == 1
    env.close()


def test_unsupported_spaces_raise_config_error():
    with pytest.raises(ConfigError, match="observation"):
        ActorCritic(spaces.Discrete(4), spaces.Discrete(2))
    with pytest.raises(ConfigError, match="actions"):
        ActorCritic(OBS, spaces.MultiBinary(3))


@pytest.mark.parametrize("act", [spaces.Discrete(3), spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)],
                         ids=["discrete", "box"])
def test_linear_actor_is_one_layer_and_keeps_the_critic_hidden_layers(act):
    pol = ActorCritic(OBS, act, hidden_sizes=(16, 8), linear_actor=True)
    discrete = isinstance(act, spaces.Discrete)
    out = 3 if discrete else 2
    linears = [m for m in pol.actor if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 4 and linears[0].out_features == out
    # the federated actor: obs x out weights, out biases, plus the Gaussian's log-std
    assert num_params(pol.actor_parameters()) == 4 * out + out + (0 if discrete else out)
    assert [m.out_features for m in pol.critic if isinstance(m, torch.nn.Linear)] == [16, 8, 1]
    # an affine actor: its output at a mix of two observations is the mix of its outputs
    x, y = torch.randn(1, 4), torch.randn(1, 4)
    mid = pol.actor(0.5 * (x + y))
    assert torch.allclose(mid, 0.5 * (pol.actor(x) + pol.actor(y)), atol=1e-6)
    assert ActorCritic(OBS, act, hidden_sizes=(16, 8)).actor[0].out_features == 16


def test_init_log_std_sets_the_gaussian_exploration_and_leaves_a_categorical_actor_alone():
    box = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    pol = ActorCritic(OBS, box, hidden_sizes=(8,), init_log_std=-1.2)
    assert torch.equal(pol.actor_logstd, torch.full((1, 2), -1.2))
    assert torch.equal(ActorCritic(OBS, box, hidden_sizes=(8,)).actor_logstd, torch.zeros(1, 2))
    # the spread of sampled actions is the configured std around the mean
    obs = torch.zeros(20000, 4)
    mean = pol.actor(obs)
    std = (pol.sample(obs, torch.Generator().manual_seed(0)) - mean).std(0)
    assert torch.allclose(std, torch.full((2,), math.exp(-1.2)), rtol=0.05)
    assert ActorCritic(OBS, spaces.Discrete(3), hidden_sizes=(8,), init_log_std=-1.2).actor_logstd is None
