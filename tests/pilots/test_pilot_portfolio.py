"""Finance pilot env: costs, accounting and windows of the portfolio desk env."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from secure_fedrl.rl.pilots import PORTFOLIO_ID, evaluation_overrides
from secure_fedrl.rl.pilots.portfolio import (DESKS, HELD_OUT_START, LOOKBACK, MAX_ASSETS, PortfolioEnv, load_prices, performance,
                                             sharpe_difference)

CASH = np.array([-1.0] * MAX_ASSETS + [1.0], dtype=np.float32)


def first_asset_only() -> np.ndarray:
    a = -np.ones(MAX_ASSETS + 1, dtype=np.float32)
    a[0] = 1.0
    return a


@pytest.mark.parametrize("desk", range(len(DESKS)))
def test_check_env_every_desk(desk):
    check_env(PortfolioEnv(desk=float(desk)), skip_render_check=True)


def test_registered_and_shipped_data():
    env = gym.make(PORTFOLIO_ID)
    assert isinstance(env.unwrapped, PortfolioEnv)
    dates, tickers, prices = load_prices()
    assert len(tickers) == 20 and prices.shape == (len(dates), 20) and (prices > 0).all()
    assert dates[0] == "1990-01-02" and dates[-1] == "2022-12-28"


def test_all_cash_earns_zero():
    env = PortfolioEnv(desk=1.0)
    env.reset(seed=0)
    done = False
    while not done:
        _, reward, term, trunc, info = env.step(CASH)
        done = term or trunc
        assert reward == 0.0 and info["turnover"] == 0.0
    assert env.values[-1] == 1.0
    assert info["episode_metrics"]["annual_return"] == 0.0


def test_zero_position_pays_only_the_cost_of_getting_there():
    env = PortfolioEnv(desk=0.0)
    env.cost = 0.002
    env.reset(seed=0)
    env.step(first_asset_only())  # into the market
    _, reward, _, _, info = env.step(CASH)  # flat again: only the cost of selling
    assert info["turnover"] == pytest.approx(2.0)
    assert reward == pytest.approx(math.log(1 - 0.002 * 2.0) * env.reward_scale)


def test_costs_are_charged_on_turnover():
    def first_reward(cost: float) -> tuple[float, float]:
        env = PortfolioEnv(desk=2.0)
        env.cost = cost
        env.reset(seed=3)
        _, reward, _, _, info = env.step(np.zeros(MAX_ASSETS + 1, dtype=np.float32))
        return reward, info["turnover"]

    free, turnover = first_reward(0.0)
    paid, _ = first_reward(0.001)
    n = len(DESKS[2][0])
    assert turnover == pytest.approx(2 * n / (n + 1))  # cash 1 -> 1/(n+1) each
    assert paid - free == pytest.approx(math.log(1 - 0.001 * turnover) * 100.0)


def test_book_follows_the_prices():
    env = PortfolioEnv(desk=0.0, split=1.0)
    env.cost = 0.0
    env.reset(seed=0)
    done = False
    while not done:
        *_, term, trunc, _ = env.step(first_asset_only())
        done = term or trunc
    growth = math.exp(env.logp[env.end, 0] - env.logp[env.start, 0])
    assert env.values[-1] == pytest.approx(growth, rel=1e-9)


def test_buy_and_hold_trades_once():
    env = PortfolioEnv(desk=4.0)
    env.reset(seed=0)
    turnovers = []
    for _ in range(20):
        *_, info = env.step(env.buy_and_hold_action())
        turnovers.append(info["turnover"])
    assert turnovers[0] == pytest.approx(2.0)
    assert max(turnovers[1:]) < 1e-6  # float32 actions: holding costs ~1e-8 of turnover


def test_held_out_window_is_later_than_training():
    train = PortfolioEnv(desk=3.0, split=0.0)
    test = PortfolioEnv(desk=3.0, split=1.0)
    train.reset(seed=0)
    test.reset(seed=0)
    assert train.dates[-1] < HELD_OUT_START <= test.dates[test.start]
    assert train.dates[LOOKBACK] >= DESKS[3][1]  # decisions start in the desk's own window
    assert evaluation_overrides(PORTFOLIO_ID) == {"split": 1.0}
    ends = set()
    for seed in range(3):
        other = PortfolioEnv(desk=3.0, split=1.0)
        other.reset(seed=seed)
        ends.add((other.start, other.end))
    assert len(ends) == 1  # the held-out window is one fixed episode


def test_seeded_determinism():
    def run(seed: int) -> list[float]:
        env = PortfolioEnv(desk=5.0)
        env.reset(seed=seed)
        return [env.step(np.full(MAX_ASSETS + 1, math.sin(k), dtype=np.float32))[1] for k in range(30)]

    assert run(1) == run(1)
    assert run(1) != run(2)  # another in-sample span


def test_performance_metrics():
    m = performance(np.array([1.0, 1.1, 0.99, 1.21]), np.array([1.0, 0.5]), 252)
    assert m["annual_return"] == pytest.approx(0.21)
    assert m["max_drawdown"] == pytest.approx(0.1)
    assert m["turnover"] == pytest.approx(0.75)
    r = np.array([0.1, -0.1, 1.21 / 0.99 - 1])
    assert m["sharpe"] == pytest.approx(r.mean() / r.std() * math.sqrt(252))


def test_unknown_desk_is_a_config_error():
    from secure_fedrl.errors import ConfigError
    from secure_fedrl.rl.envs import make_site_env

    with pytest.raises(ConfigError, match="desk must be in"):
        make_site_env(PORTFOLIO_ID, overrides={"desk": 9}, num_envs=1, seed=0, site="desk-x")


def _paths(rng: np.random.Generator, days: int, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Two books sharing a market, the first `edge` more mean daily return."""
    market = rng.normal(0.0004, 0.012, days)
    a = market + rng.normal(edge, 0.004, days)
    b = market + rng.normal(0.0, 0.004, days)
    return np.cumprod(np.r_[1.0, 1.0 + a]), np.cumprod(np.r_[1.0, 1.0 + b])


def test_sharpe_difference_is_the_difference_of_the_reported_sharpes():
    a, b = _paths(np.random.default_rng(0), 1000, 0.0)
    d = sharpe_difference(a, b, resamples=200)
    expected = performance(a, np.zeros(1), 1000)["sharpe"] - performance(b, np.zeros(1), 1000)["sharpe"]
    assert d["difference"] == pytest.approx(expected, rel=1e-9)
    assert d["low"] < d["difference"] < d["high"]
    assert sharpe_difference(a, a, resamples=50) == {"difference": 0.0, "low": 0.0, "high": 0.0}


def test_sharpe_difference_interval_covers_a_zero_difference_about_as_often_as_it_says():
    """Equal books by construction: the 90 % interval must cover 0 about 90 % of the time (an
    interval from unpaired resampling, or the wrong width, fails this)."""
    rng = np.random.default_rng(1)
    covered = [(lambda d: d["low"] <= 0.0 <= d["high"])(sharpe_difference(*_paths(rng, 500, 0.0), resamples=400,
                                                                           level=0.9, seed=k)) for k in range(120)]
    assert 0.80 <= np.mean(covered) <= 0.97


def test_sharpe_difference_finds_a_real_edge():
    a, b = _paths(np.random.default_rng(2), 1250, 0.001)  # +25 % a year for about the same risk
    d = sharpe_difference(a, b, resamples=500)
    assert d["low"] > 0.0


def test_sharpe_difference_refuses_paths_of_different_days():
    a, b = _paths(np.random.default_rng(3), 100, 0.0)
    with pytest.raises(ValueError, match="same days"):
        sharpe_difference(a, b[:-1])
