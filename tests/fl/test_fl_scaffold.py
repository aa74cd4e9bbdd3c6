"""SCAFFOLD with the local optimizers we ship, on a heterogeneous quadratic (4 sites, 50 local steps).

The local steps run through the same pieces the RL trainers use: `make_optimizer` (Adam with
CleanRL's eps, SGD with or without momentum), PPO's linear learning-rate annealing, and the
`Corrections` hook that adds c − c_i and (in `train_local`) records the first gradient, which is
the option-I control variate. The server side is `Scaffold.apply_scaffold`, the site side
`ScaffoldClient.propose` / `commit`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secure_fedrl.errors import ProtocolError
from secure_fedrl.fl.strategies import Scaffold, ScaffoldClient, make_strategy
from secure_fedrl.rl.local import FirstGradient, _RecordingCorrections
from secure_fedrl.rl.rollout import make_optimizer

N_SITES, DIM, LOCAL_STEPS = 4, 8, 50


def quadratic(seed: int = 0):
    """f_i(y) = ½ (y − b_i)ᵀ A_i (y − b_i), eigenvalues of A_i in [0.5, 2]; x* = (Σ A_i)⁻¹ Σ A_i b_i."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(N_SITES):
        q, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
        ev = np.exp(rng.uniform(np.log(0.5), np.log(2.0), DIM))
        a.append((q * ev) @ q.T)
        b.append(rng.normal(size=DIM))
    a, b = np.array(a), np.array(b)
    x_star = np.linalg.solve(a.sum(0), np.einsum("nij,nj->i", a, b))
    return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), x_star


#: Every local-optimizer setting the config lets SCAFFOLD run with: (optimizer, lr, momentum, anneal).
#: Learning rates: the PPO default for Adam; stable step sizes for SGD on this problem.
SETTINGS = [
    ("adam", 1e-3, 0.0, False),
    ("adam", 1e-3, 0.0, True),
    ("sgd", 0.05, 0.0, False),
    ("sgd", 0.05, 0.0, True),
    ("sgd", 0.02, 0.9, False),
    ("sgd", 0.02, 0.9, True),
]


def run(kind, lr, momentum, anneal, *, scaffold: bool, rounds: int, option: str = "I") -> float:
    """Distance to x* after `rounds` rounds; one (4, DIM) tensor holds the four sites' local models
    (Adam and SGD act coordinate-wise, so one optimizer over the stack is four independent ones)."""
    a, b, x_star = quadratic()
    x = np.zeros(DIM, dtype=np.float32)
    server = Scaffold(server_lr=1.0, dim=DIM)
    clients = [ScaffoldClient(DIM) for _ in range(N_SITES)]
    for _ in range(rounds):
        y = torch.tensor(np.tile(x, (N_SITES, 1)), requires_grad=True)
        correction = None
        if scaffold:
            c = server.control_variate
            correction = [torch.tensor(np.stack([cl.correction(c) for cl in clients]))]
        probe = FirstGradient()
        hook = _RecordingCorrections([y], probe=probe, prox_mu=0.0, anchor=None, grad_correction=correction)
        opt = make_optimizer([y], kind=kind, lr=lr, momentum=momentum)
        for k in range(LOCAL_STEPS):
            if anneal:  # PPO's anneal_lr: linear decay to 0 over the local run
                for group in opt.param_groups:
                    group["lr"] = (1.0 - k / LOCAL_STEPS) * lr
            opt.zero_grad(set_to_none=True)
            y.grad = torch.einsum("nij,nj->ni", a, y.detach() - b)
            hook.apply()
            opt.step()
        local = y.detach().numpy()
        dy = local - x
        if not scaffold:
            x = make_strategy("fedavg").aggregate(x, list(dy))
            continue
        grads = probe.gradient.reshape(N_SITES, DIM)
        if option == "I":
            proposals = [cl.propose(grads[i]) for i, cl in enumerate(clients)]
        else:  # option II, (x − y_i)/(K·η_l): right for plain SGD at a fixed rate only
            proposals = [cl.propose_option_ii(server.control_variate, x, local[i], LOCAL_STEPS, lr)
                         for i, cl in enumerate(clients)]
        x = server.apply_scaffold(x, dy.mean(0), np.mean([p.delta for p in proposals], axis=0),
                                  num_sampled=N_SITES, num_total=N_SITES)
        for cl, p in zip(clients, proposals):
            cl.commit(p)
        np.testing.assert_allclose(server.control_variate, np.mean([cl.control_variate for cl in clients], 0),
                                   atol=1e-5)
    return float(np.linalg.norm(x - x_star))


@pytest.mark.parametrize("kind, lr, momentum, anneal", SETTINGS,
                         ids=[f"{k}-lr{lr}-mom{m}-anneal{a}" for k, lr, m, a in SETTINGS])
def test_scaffold_reaches_the_optimum_where_fedavg_drifts(kind, lr, momentum, anneal):
    err_scaffold = run(kind, lr, momentum, anneal, scaffold=True, rounds=60)
    err_fedavg = run(kind, lr, momentum, anneal, scaffold=False, rounds=60)
    assert err_scaffold < 1e-4, err_scaffold
    assert err_fedavg > 0.1, err_fedavg  # client drift: FedAvg's fixed point is not x*


def test_option_ii_is_wrong_under_adam_which_is_why_option_i_is_used():
    """The old control variate, (x − y)/(K·η), under the default optimizer: stuck far from x*."""
    assert run("adam", 1e-3, 0.0, False, scaffold=True, rounds=60, option="II") > 1e-2
    assert run("sgd", 0.05, 0.0, False, scaffold=True, rounds=60, option="II") < 1e-4  # fine for SGD


def test_first_gradient_is_taken_before_the_correction_at_the_start_point():
    y = torch.tensor([1.0, 2.0], requires_grad=True)
    probe = FirstGradient()
    hook = _RecordingCorrections([y], probe=probe, prox_mu=0.0, anchor=None,
                                 grad_correction=[torch.tensor([10.0, 10.0])])
    y.grad = torch.tensor([0.5, -0.5])
    hook.apply()
    np.testing.assert_array_equal(probe.gradient, [0.5, -0.5])  # not the corrected 10.5, 9.5
    np.testing.assert_array_equal(y.grad.numpy(), [10.5, 9.5])
    y.grad = torch.tensor([3.0, 3.0])
    hook.apply()
    np.testing.assert_array_equal(probe.gradient, [0.5, -0.5])  # only the first step counts


def test_scaffold_client_two_steps():
    cl = ScaffoldClient(3)
    p = cl.propose(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    np.testing.assert_array_equal(cl.control_variate, 0.0)  # nothing moves before commit
    np.testing.assert_array_equal(p.delta, [1.0, 2.0, 3.0])
    cl.commit(p)
    np.testing.assert_array_equal(cl.control_variate, [1.0, 2.0, 3.0])
    with pytest.raises(ProtocolError, match="stale"):
        cl.commit(p)  # twice would be fine here, but never on a moved c_i
    q = cl.propose(np.zeros(3, dtype=np.float32))
    np.testing.assert_array_equal(q.delta, [-1.0, -2.0, -3.0])
    with pytest.raises(ProtocolError, match="not a proposal of this site"):
        ScaffoldClient(3).commit(q)
    np.testing.assert_array_equal(cl.correction(np.ones(3, dtype=np.float32)), [0.0, -1.0, -2.0])


def test_train_local_records_the_first_gradient_after_dp_noise():
    """Under trajectory DP the option-I control variate is the first *noised* gradient, so
    uploading it is post-processing of DP-SGD (no privacy cost beyond the accounted steps)."""
    from secure_fedrl.rl.dp_training import TrajectoryDP
    from secure_fedrl.rl.envs import make_site_env
    from secure_fedrl.rl.local import train_local
    from secure_fedrl.rl.policies import ActorCritic, get_flat, set_flat
    from secure_fedrl.rl.reinforce import ReinforceConfig

    env = make_site_env("CartPole-v1", overrides={}, num_envs=2, seed=1, site="a")
    torch.manual_seed(0)
    policy = ActorCritic(env.single_observation_space, env.single_action_space, hidden_sizes=(16,))
    federated = list(policy.shared_parameters(True))
    x0 = get_flat(federated)
    norms = []
    for sigma in (1e-6, 5.0):
        set_flat(federated, x0)
        probe = FirstGradient()
        train_local(policy, env, ReinforceConfig(), episodes=8, generator=torch.Generator().manual_seed(3),
                    federated_params=federated, first_gradient=probe,
                    dp=TrajectoryDP(max_grad_norm=1.0, noise_multiplier=sigma, sample_rate=0.5, steps=2,
                                    allow_zero_noise=True))
        assert probe.gradient is not None and probe.gradient.shape == x0.shape
        assert np.isfinite(probe.gradient).all()
        norms.append(float(np.linalg.norm(probe.gradient)))
    assert norms[0] <= 2.0 + 1e-4  # per-trajectory clip C = 1, summed, / (q·N): at most N/(qN) = 2
    assert norms[1] > 5 * norms[0]  # the noise is in it
