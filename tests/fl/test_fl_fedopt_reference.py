"""FedAdam / FedYogi / FedAdagrad side by side with an independent float64 implementation of
Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 (5 rounds, 4 sites), and with
Flower's variant where the two differ only in v's start (Flower: v = 0, the paper: v = τ²).

The reference is written from the paper, not from our code: per round t, with x_{i,K}^t the site
models and Δ_i^t = x_{i,K}^t − x_t,
    Δ_t = (1/|S|) Σ_i Δ_i^t
    m_t = β1 m_{t−1} + (1 − β1) Δ_t
    v_t = v_{t−1} + Δ_t²                                   (FedAdagrad)
    v_t = β2 v_{t−1} + (1 − β2) Δ_t²                       (FedAdam)
    v_t = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²)     (FedYogi)
    x_{t+1} = x_t + η m_t / (√v_t + τ)
with m_{−1} = 0, v_{−1} = τ².
"""

from __future__ import annotations

import numpy as np
import pytest

from secure_fedrl.fl.strategies import make_strategy

ROUNDS, SITES, DIM = 5, 4, 32


def reference(variant: str, x0, site_models_fn, *, eta, beta1, beta2, tau, v0=None, bias_correction=False):
    """Algorithm 2 in float64; `site_models_fn(t, x)` gives the |S| local models of round t."""
    x = np.asarray(x0, dtype=np.float64).copy()
    m = np.zeros_like(x)
    v = np.full_like(x, tau * tau) if v0 is None else np.full_like(x, v0)
    xs = []
    for t in range(ROUNDS):
        deltas = [np.asarray(y, dtype=np.float64) - x for y in site_models_fn(t, x)]
        d = sum(deltas) / len(deltas)
        m = beta1 * m + (1 - beta1) * d
        if variant == "fedadagrad":
            v = v + d * d
        elif variant == "fedadam":
            v = beta2 * v + (1 - beta2) * d * d
        else:
            v = v - (1 - beta2) * d * d * np.sign(v - d * d)
        m_hat, v_hat = m, v
        if bias_correction:  # Kingma & Ba, t counted from 1
            m_hat = m / (1 - beta1 ** (t + 1))
            if variant != "fedadagrad":
                v_hat = v / (1 - beta2 ** (t + 1))
        x = x + eta * m_hat / (np.sqrt(v_hat) + tau)
        xs.append(x.copy())
    return xs


def site_models(seed: int):
    """Deterministic heterogeneous site models: each site pulls x towards its own target, with
    scales spread over four decades so some coordinates have |Δ| ≪ τ and others ≫ τ."""
    rng = np.random.default_rng(seed)
    targets = rng.normal(size=(SITES, DIM)) * np.logspace(-4, 0, DIM)
    pull = rng.uniform(0.2, 0.8, size=SITES)

    def fn(t, x):
        return [(x + p * (tgt - x)).astype(np.float32) for p, tgt in zip(pull, targets)]

    return fn


def ours(name, x0, fn, *, state=None, **hyper):
    s = make_strategy(name, **hyper)
    if state is not None:
        s.load_state_dict({**s.state_dict(), **state})
    x = np.asarray(x0, dtype=np.float32).copy()
    xs = []
    for t in range(ROUNDS):
        x = s.aggregate(x, [y - x for y in fn(t, x)])
        xs.append(x.copy())
    return xs


CASES = [
    ("fedadam", dict(server_lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)),
    ("fedyogi", dict(server_lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)),
    ("fedadagrad", dict(server_lr=0.05, beta1=0.9, tau=1e-3)),
    ("fedadam", dict(server_lr=0.1, beta1=0.5, beta2=0.9, tau=1e-2)),
    ("fedyogi", dict(server_lr=0.1, beta1=0.0, beta2=0.9, tau=1e-2)),
    ("fedadagrad", dict(server_lr=0.1, beta1=0.0, tau=1e-2)),
]


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("name, hyper", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_reddi_algorithm_2_in_float64(name, hyper, bias_correction):
    x0 = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    fn = site_models(7)
    mine = ours(name, x0, fn, bias_correction=bias_correction, **hyper)
    ref = reference(name, x0, fn, eta=hyper["server_lr"], beta1=hyper["beta1"], beta2=hyper.get("beta2", 0.0),
                    tau=hyper["tau"], bias_correction=bias_correction)
    for t in range(ROUNDS):
        # float32 state against float64: agreement to float32 rounding, scaled by the step size
        np.testing.assert_allclose(mine[t], ref[t], rtol=1e-5, atol=1e-6 * hyper["server_lr"] * (t + 1),
                                   err_msg=f"round {t}")
    assert not np.allclose(mine[-1], x0)  # it moved


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_flower_start_v0_is_the_only_difference_and_it_matters(name):
    """Flower starts v at 0 (and its FedYogi/FedAdagrad do not bias-correct): loading v = 0 into
    our strategy reproduces that recursion exactly; the paper's v = τ² gives different steps on
    the coordinates with |Δ| ≲ τ."""
    hyper = dict(server_lr=0.05, beta1=0.9, tau=1e-3)
    if name != "fedadagrad":
        hyper["beta2"] = 0.99
    x0 = np.zeros(DIM, dtype=np.float32)
    fn = site_models(3)
    zeros = np.zeros(DIM, dtype=np.float32)
    flower_like = ours(name, x0, fn, state={"m": zeros, "v": zeros, "step_count": 0}, **hyper)
    ref_flower = reference(name, x0, fn, eta=0.05, beta1=0.9, beta2=hyper.get("beta2", 0.0), tau=1e-3, v0=0.0)
    paper = ours(name, x0, fn, **hyper)
    for t in range(ROUNDS):
        np.testing.assert_allclose(flower_like[t], ref_flower[t], rtol=1e-5, atol=1e-7 * (t + 1))
    mean_delta = np.mean([y - x0 for y in fn(0, x0)], axis=0)
    small = np.abs(mean_delta) < 1e-4  # coordinates where Δ is well below τ
    assert small.any()
    # First step there: Flower's η(1−β1)Δ/(√(1−β2)|Δ| + τ) ≈ η(1−β1)Δ/τ, the paper's divides by
    # √(β2τ² + (1−β2)Δ²) + τ ≈ 2τ (Adagrad: √(τ² + Δ²) + τ): about half the step.
    ratio = np.abs(flower_like[0] - x0)[small] / np.abs(paper[0] - x0)[small]
    assert ratio.min() > 1.5
    big = np.abs(mean_delta) > 0.1  # |Δ| ≫ τ/√(1−β2): τ² is forgotten at once, same step
    np.testing.assert_allclose(np.abs(flower_like[0] - x0)[big], np.abs(paper[0] - x0)[big], rtol=2e-2)
