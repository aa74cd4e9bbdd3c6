"""Strategy math against hand-computed cases, state round trips, factory errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fedrl.errors import ConfigError, ProtocolError
from secure_fedrl.fl.strategies import (
    STRATEGIES,
    ConstantStaleness,
    FedAdagrad,
    FedAdam,
    FedAsync,
    FedAvg,
    FedProx,
    FedYogi,
    HingeStaleness,
    PolynomialStaleness,
    Scaffold,
    make_staleness,
    make_strategy,
    scaffold_client_control,
    scaffold_corrected_gradient,
)
from secure_fedrl.fl.updates import VectorError


def f32(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float32)


# ----------------------------------------------------------------------------- FedAvg / FedProx
def test_fedavg_weighted_and_uniform_by_hand():
    x = f32(10.0, -10.0)
    a, b = f32(1.0, 2.0), f32(3.0, 4.0)
    s = FedAvg()
    # uniform mean [2, 3]
    np.testing.assert_allclose(s.aggregate(x, [a, b]), [12.0, -7.0])
    # weights 1:3 -> [2.5, 3.5]
    np.testing.assert_allclose(s.aggregate(x, [a, b], [1, 3]), [12.5, -6.5])
    # server_lr 0.5 halves the step
    np.testing.assert_allclose(FedAvg(server_lr=0.5).apply(x, f32(2.0, 4.0)), [11.0, -8.0])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), dim=st.integers(1, 12))
def test_fedavg_equals_weighted_average_of_local_models(seed, n, dim):
    """x + Σ w_i (y_i − x)/Σ w_i = Σ w_i y_i / Σ w_i: FedAvg on updates is model averaging."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=dim).astype(np.float32)
    ys = [rng.normal(size=dim).astype(np.float32) for _ in range(n)]
    w = rng.uniform(1, 100, size=n)
    got = FedAvg().aggregate(x, [y - x for y in ys], list(w))
    want = np.average(np.stack(ys).astype(np.float64), axis=0, weights=w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_apply_does_not_modify_params():
    x = f32(1.0, 2.0)
    for s in (FedAvg(), FedAdam(), FedYogi(), FedAdagrad(), FedAsync(0.5)):
        s.apply(x, f32(1.0, 1.0))
        np.testing.assert_array_equal(x, [1.0, 2.0])


def test_fedprox_is_fedavg_on_server_and_exposes_mu():
    s = FedProx(0.01)
    assert s.client_prox_mu == 0.01
    assert FedAvg().client_prox_mu == 0.0
    np.testing.assert_allclose(s.apply(f32(1.0), f32(2.0)), [3.0])


# ----------------------------------------------------------------------------- FedOpt
# x = [1, 2, 3], Δ = [0.5, -1, 0.05], η = 0.1, β1 = 0.9, β2 = 0.99, τ = 0.1 (τ² = 0.01).
# m1 = (1 − β1)·Δ = [0.05, -0.1, 0.005] for every variant.
X = f32(1.0, 2.0, 3.0)
D = f32(0.5, -1.0, 0.05)


def test_fedadam_one_step_by_hand():
    s = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.1)
    out = s.apply(X, D)
    # v1 = 0.99·0.01 + 0.01·Δ² = [0.0099+0.0025, 0.0099+0.01, 0.0099+0.000025]
    np.testing.assert_allclose(s.v, [0.0124, 0.0199, 0.009925], rtol=1e-6)
    np.testing.assert_allclose(s.m, [0.05, -0.1, 0.005], rtol=1e-6)
    # x + 0.1·m/(√v + 0.1): 0.005/(0.1113553+0.1) = 0.0236568, -0.01/(0.1410674+0.1) = -0.0414822
    np.testing.assert_allclose(out, [1.02365685, 1.95851782, 3.00250471], rtol=1e-6)
    assert s.step_count == 1


def test_fedadam_positive_update_moves_params_up():
    # the sign trap: Δ is θ_local − θ_global, so the global model must move towards it
    out = FedAdam(server_lr=0.1).apply(f32(0.0), f32(1.0))
    assert out[0] > 0


def test_fedyogi_one_step_by_hand():
    s = FedYogi(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.1)
    out = s.apply(X, D)
    # v1 = τ² − 0.01·Δ²·sign(τ² − Δ²): Δ² = [0.25, 1, 0.0025]; signs [-1, -1, +1]
    #    = [0.01 + 0.0025, 0.01 + 0.01, 0.01 − 0.000025]
    np.testing.assert_allclose(s.v, [0.0125, 0.02, 0.009975], rtol=1e-6)
    np.testing.assert_allclose(out, [1.0236068, 1.95857864, 3.00250156], rtol=1e-6)


def test_fedadagrad_one_step_by_hand():
    s = FedAdagrad(server_lr=0.1, beta1=0.9, tau=0.1)
    out = s.apply(X, D)
    # v1 = τ² + Δ² = [0.26, 1.01, 0.0125]
    np.testing.assert_allclose(s.v, [0.26, 1.01, 0.0125], rtol=1e-6)
    np.testing.assert_allclose(out, [1.00819804, 1.99095012, 3.00236068], rtol=1e-6)


def test_fedadam_two_steps_accumulate_moments():
    s = FedAdam(server_lr=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    s.apply(f32(0.0), f32(2.0))  # m = 1, v = 0.5·1 + 0.5·4 = 2.5
    out = s.apply(f32(0.0), f32(0.0))  # m = 0.5, v = 1.25
    assert s.m[0] == pytest.approx(0.5) and s.v[0] == pytest.approx(1.25)
    assert out[0] == pytest.approx(0.5 / (math.sqrt(1.25) + 1.0), rel=1e-6)


def test_bias_correction_divides_moments():
    s = FedAdam(server_lr=1.0, beta1=0.5, beta2=0.75, tau=1.0, bias_correction=True)
    out = s.apply(f32(0.0), f32(2.0))
    # m = 1 → m̂ = 1/0.5 = 2;  v = 0.75·1 + 0.25·4 = 1.75 → v̂ = 1.75/0.25 = 7
    assert out[0] == pytest.approx(2.0 / (math.sqrt(7.0) + 1.0), rel=1e-6)


# ----------------------------------------------------------------------------- SCAFFOLD
def test_scaffold_client_control_option_ii_by_hand():
    c_i, c = f32(0.1, -0.2), f32(0.05, 0.05)
    x, y = f32(1.0, 1.0), f32(0.8, 1.1)
    # (x − y)/(K·η_l) = [0.2, -0.1]/(10·0.1) = [0.2, -0.1]
    # c_i⁺ = c_i − c + [0.2, -0.1] = [0.1 − 0.05 + 0.2, −0.2 − 0.05 − 0.1]
    out = scaffold_client_control(c_i, c, x, y, 10, 0.1)
    np.testing.assert_allclose(out, [0.25, -0.35], rtol=1e-6)
    np.testing.assert_allclose(scaffold_corrected_gradient(f32(1.0, 1.0), c_i, c), [0.95, 1.25])


def test_scaffold_server_update_by_hand():
    s = Scaffold(server_lr=0.5, dim=2)
    np.testing.assert_array_equal(s.control_variate, [0.0, 0.0])
    x = f32(1.0, 2.0)
    # 2 of 4 sites sampled: c += (2/4)·mean Δc;  x += 0.5·mean Δy
    out = s.apply_scaffold(x, f32(0.2, -0.4), f32(0.2, -0.4), num_sampled=2, num_total=4)
    np.testing.assert_allclose(out, [1.1, 1.8], rtol=1e-6)
    np.testing.assert_allclose(s.control_variate, [0.1, -0.2], rtol=1e-6)
    out = s.apply_scaffold(out, f32(0.0, 0.0), f32(0.4, 0.4), num_sampled=4, num_total=4)
    np.testing.assert_allclose(s.control_variate, [0.5, 0.2], rtol=1e-6)
    with pytest.raises(ValueError):
        s.control_variate[0] = 3.0  # read-only view: the state cannot be changed behind its back


def test_scaffold_validation():
    s = Scaffold()
    with pytest.raises(VectorError, match="unset"):
        _ = s.control_variate
    with pytest.raises(ConfigError, match="apply_scaffold"):
        s.apply(f32(1.0), f32(1.0))
    with pytest.raises(ConfigError, match="exceeds"):
        s.apply_scaffold(f32(1.0), f32(1.0), f32(1.0), num_sampled=3, num_total=2)
    with pytest.raises(ConfigError, match="local_steps"):
        scaffold_client_control(f32(0), f32(0), f32(0), f32(0), 0, 0.1)


# ----------------------------------------------------------------------------- FedAsync
def test_staleness_weights_by_hand():
    const = ConstantStaleness()
    assert [const(s) for s in (0, 5, 100)] == [1.0, 1.0, 1.0]
    poly = PolynomialStaleness(a=0.5)
    # (t − τ + 1)^(−0.5): staleness 0 → 1, 3 → 1/2, 8 → 1/3
    assert poly(0) == 1.0 and poly(3) == pytest.approx(0.5) and poly(8) == pytest.approx(1 / 3)
    hinge = HingeStaleness(a=10.0, b=4)
    # 1 up to b = 4; then 1/(10·(s − 4) + 1): s = 5 → 1/11, s = 6 → 1/21
    assert hinge(0) == 1.0 and hinge(4) == 1.0
    assert hinge(5) == pytest.approx(1 / 11) and hinge(6) == pytest.approx(1 / 21)
    for bad in (-1, 1.5, True):
        with pytest.raises(ProtocolError):
            hinge(bad)


def test_fedasync_mixing_by_hand():
    s = FedAsync(0.5, staleness="polynomial", a=0.5)
    x, z = f32(0.0, 2.0), f32(2.0, 0.0)
    # α_t = 0.5·(3 + 1)^(−0.5) = 0.25: x ← 0.75·x + 0.25·z
    out = s.apply_async(x, z, 3)
    np.testing.assert_allclose(out, [0.5, 1.5])
    assert s.version == 1
    # as an update: x + α_t·Δ with α_t = 0.5 at staleness 0
    np.testing.assert_allclose(s.apply_async(x, f32(1.0, -1.0), 0, is_update=True), [0.5, 1.5])
    hinge = FedAsync(0.9, staleness="hinge", a=10, b=4)
    assert hinge.mixing_weight(6) == pytest.approx(0.9 / 21)


def test_make_staleness_errors():
    with pytest.raises(ConfigError, match="unknown staleness"):
        make_staleness("linear")
    with pytest.raises(ConfigError, match="takes no parameter a"):
        make_staleness("constant", a=1.0)
    with pytest.raises(ConfigError, match="takes no parameter b"):
        FedAsync(0.5, staleness="polynomial", b=3)


# ----------------------------------------------------------------------------- state round trip
def _configs():
    return [
        ("fedavg", {"server_lr": 0.7}),
        ("fedprox", {"mu": 0.1}),
        ("fedadam", {"server_lr": 0.05, "tau": 1e-2}),
        ("fedyogi", {"server_lr": 0.05, "tau": 1e-2}),
        ("fedadagrad", {"server_lr": 0.05, "tau": 1e-2}),
        ("fedadam", {"bias_correction": True}),
        ("fedasync", {"alpha": 0.3, "staleness": "hinge", "a": 2.0, "b": 1}),
    ]


@pytest.mark.parametrize(("name", "params"), _configs())
def test_state_dict_round_trip_gives_identical_next_step(name, params):
    rng = np.random.default_rng(7)
    dim = 50
    x = rng.normal(size=dim).astype(np.float32)
    a = make_strategy(name, **params)
    for _ in range(3):
        x = a.apply(x, rng.normal(size=dim).astype(np.float32))
    saved = a.state_dict()
    b = make_strategy(name, **params)
    b.load_state_dict(saved)
    d = rng.normal(size=dim).astype(np.float32)
    xa, xb = a.apply(x, d), b.apply(x, d)
    np.testing.assert_array_equal(xa, xb)
    # checkpointable: a flat dict of numpy arrays and scalars, tagged with the strategy name
    assert saved["strategy"] == name
    for v in saved.values():
        assert v is None or isinstance(v, (int, float, str, np.ndarray))


def test_scaffold_state_round_trip():
    a = Scaffold(dim=3)
    x = f32(1, 2, 3)
    x = a.apply_scaffold(x, f32(1, 1, 1), f32(0.5, 0.1, -0.3), num_sampled=1, num_total=3)
    b = Scaffold()
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.control_variate, b.control_variate)
    args = (x, f32(0.1, 0.2, 0.3), f32(1, 1, 1), 2, 3)
    np.testing.assert_array_equal(a.apply_scaffold(*args), b.apply_scaffold(*args))
    np.testing.assert_array_equal(a.control_variate, b.control_variate)


def test_fedadam_state_dict_is_a_copy():
    s = FedAdam()
    s.apply(f32(0.0), f32(1.0))
    saved = s.state_dict()
    m0 = saved["m"].copy()
    s.apply(f32(0.0), f32(1.0))
    np.testing.assert_array_equal(saved["m"], m0)


def test_load_state_refuses_other_strategy_or_config():
    a = FedAdam(beta1=0.9)
    a.apply(f32(0.0), f32(1.0))
    with pytest.raises(ConfigError, match="tau='x'"):
        FedAdam(beta1=0.9).load_state_dict(a.state_dict() | {"tau": "x"})
    with pytest.raises(ConfigError, match="beta1"):
        FedAdam(beta1=0.8).load_state_dict(a.state_dict())
    with pytest.raises(ConfigError, match="'fedadam', not 'fedyogi'"):
        FedYogi().load_state_dict(a.state_dict())


def test_dim_change_is_refused():
    s = FedAdam()
    s.apply(f32(0.0, 0.0), f32(1.0, 1.0))
    with pytest.raises(VectorError, match="dim 2"):
        s.apply(f32(0.0), f32(1.0))
    with pytest.raises(VectorError, match="length 3, expected 2"):
        FedAvg().apply(f32(0.0, 0.0), f32(1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------- factory
def test_make_strategy_builds_every_name():
    assert set(STRATEGIES) == {
        "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fedasync", "fedbuff"
    }
    assert isinstance(make_strategy("fedprox", mu=0.5), FedProx)
    assert make_strategy("fedasync").alpha == 0.6
    assert make_strategy("fedadam", server_lr=0.3).server_lr == 0.3


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("fedsgd", {}, "unknown strategy 'fedsgd'"),
        ("FedAvg", {}, "unknown strategy"),
        ("fedavg", {"lr": 1.0}, "unknown parameter(s) lr for strategy 'fedavg'"),
        ("fedadagrad", {"beta2": 0.9}, "unknown parameter(s) beta2"),
        ("fedprox", {}, "needs parameter(s) mu"),
        ("fedavg", {"server_lr": -1.0}, "server_lr must be > 0.0"),
        ("fedavg", {"server_lr": "1"}, "server_lr must be a number"),
        ("fedavg", {"server_lr": True}, "server_lr must be a number"),
        ("fedadam", {"beta1": 1.0}, "beta1 must be < 1.0"),
        ("fedyogi", {"tau": 0.0}, "tau must be > 0.0"),
        ("fedadam", {"beta2": float("nan")}, "beta2 must be finite"),
        ("fedadam", {"bias_correction": 1}, "bias_correction must be true or false"),
        ("fedprox", {"mu": -0.1}, "mu must be >= 0.0"),
        ("fedasync", {"alpha": 0.0}, "alpha must be > 0.0"),
        ("fedasync", {"alpha": 1.5}, "alpha must be <= 1.0"),
        ("fedasync", {"staleness": "hinge", "b": -1}, "b must be an integer >= 0"),
    ],
)
def test_make_strategy_errors_are_one_line(name, params, needle):
    with pytest.raises(ConfigError) as ei:
        make_strategy(name, **params)
    assert needle in str(ei.value) and "\n" not in str(ei.value)
