"""Portfolio rebalancing with transaction costs on real daily prices (our own env).

One env instance is one trading desk: a long-only book over its own instrument set plus cash,
rebalanced every `rebalance_days` trading days. Prices are the 20 S&P 500 constituents that the
`skfolio` package ships in its wheel (daily adjusted closes 1990-01-02 .. 2022-12-28,
`skfolio/datasets/data/sp500_dataset.csv.gz`; skfolio is BSD-3-Clause and says the data are for
testing and examples only). The file is read with the standard library straight from the
installed distribution (skfolio itself is not imported: it pulls scikit-learn and cvxpy).

Step: the action a in [-1, 1]^(n+1) sets target weights w = (a+1)/2 normalised (the last entry
is cash; all zeros means all cash; a = 0 is equal weights over assets and cash). Rebalancing from
the drifted weights costs `cost` (default 10 bp) times the turnover sum|w - w_drift|; the reward
is the period's log return of the book net of that cost, times `reward_scale` (Moody & Saffell
2001 argue for optimising risk-adjusted returns; log wealth is the simpler, additive choice).
Cash earns nothing.

Windows: `split` 0 trains on random `episode_days` spans of the desk's in-sample window;
`split` 1 runs the held-out later window (2018-01-01 .. 2022-12-28) once, from its start, the
window reported in the results. Observation per asset: log returns over the last 1, 5, 20 and 60
days and the 20-day volatility (annualised), then the current (drifted) weights.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["DESKS", "PortfolioEnv", "load_prices", "performance", "sharpe_difference"]

TRADING_DAYS = 252
HELD_OUT_START = "2018-01-01"
LOOKBACK = 60

# desk -> (instruments, first in-sample day). Each desk its own sector mix and in-sample window.
DESKS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("AAPL", "AMD", "MSFT", "HD"), "2003-01-01"),      # technology and retail
    (("BAC", "JPM", "GE", "BBY"), "2005-01-01"),        # financials and cyclicals
    (("JNJ", "LLY", "MRK", "PFE", "UNH"), "2001-01-01"),  # healthcare
    (("CVX", "XOM", "RRC"), "2007-01-01"),              # energy
    (("KO", "PEP", "PG", "WMT"), "2000-01-01"),         # consumer staples
    (("MSFT", "JPM", "XOM", "JNJ", "WMT"), "2009-01-01"),  # diversified
)
MAX_ASSETS = max(len(d[0]) for d in DESKS)


@lru_cache(maxsize=1)
def load_prices() -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """(dates as 'YYYY-MM-DD' strings, tickers, prices [days, tickers]) from skfolio's wheel."""
    from importlib import metadata

    try:
        dist = metadata.distribution("skfolio")
    except metadata.PackageNotFoundError:
        raise gym.error.DependencyNotInstalled("the finance pilot reads skfolio's S&P 500 data: pip install skfolio") from None
    path = dist.locate_file("skfolio/datasets/data/sp500_dataset.csv.gz")
    with open(path, "rb") as fh:
        text = gzip.decompress(fh.read()).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    tickers = tuple(rows[0][1:])
    dates = np.array([r[0] for r in rows[1:]])
    prices = np.array([[float(x) for x in r[1:]] for r in rows[1:]], dtype=np.float64)
    return dates, tickers, prices


def performance(daily_values: np.ndarray, turnovers: np.ndarray, days: int) -> dict[str, float]:
    """Annualised return, annualised Sharpe (daily simple returns, zero risk-free rate), max
    drawdown (fraction) and annualised one-way turnover of a book's daily value path."""
    v = np.asarray(daily_values, dtype=np.float64)
    r = v[1:] / v[:-1] - 1.0
    years = max(days, 1) / TRADING_DAYS
    ann = float((v[-1] / v[0]) ** (1.0 / years) - 1.0) if v[-1] > 0 else -1.0
    sd = float(np.std(r))
    sharpe = float(np.mean(r) / sd * math.sqrt(TRADING_DAYS)) if sd > 0 else 0.0
    peak = np.maximum.accumulate(v)
    mdd = float(np.max(1.0 - v / peak))
    turnover = float(np.sum(turnovers) / 2.0 / years)
    return {"annual_return": ann, "sharpe": sharpe, "max_drawdown": mdd, "turnover": turnover}


def sharpe_difference(values_a: np.ndarray, values_b: np.ndarray, *, block: int = 20, resamples: int = 2000,
                      level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Annualised Sharpe of book a minus book b over the same days, with a paired circular block
    bootstrap percentile interval (Politis and Romano 1992; Ledoit and Wolf 2008 bootstrap Sharpe
    differences this way, and studentise the interval, which this simpler one does not).
    Why: a 5-year window measures one book's Sharpe ratio with a standard error of about 0.5 (Lo
    2002); two books that share the market differ far less, but a difference of a few hundredths
    may still be noise, and the interval says how much is. Paired: both books' returns are
    resampled on the same days (they share the market); blocks of `block` days keep volatility
    clustering."""
    ra, rb = (np.diff(np.asarray(v, dtype=np.float64)) / np.asarray(v, dtype=np.float64)[:-1] for v in (values_a, values_b))
    if ra.shape != rb.shape or ra.size < 2 * block:
        raise ValueError(f"sharpe_difference: needs two value paths over the same days, at least {2 * block + 1} "
                         f"(got {ra.size + 1} and {rb.size + 1})")

    def sharpe(r: np.ndarray) -> np.ndarray:
        sd = r.std(axis=-1)
        return np.where(sd > 0, r.mean(axis=-1) / np.where(sd > 0, sd, 1.0), 0.0) * math.sqrt(TRADING_DAYS)

    n = ra.size
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, size=(resamples, -(-n // block)))
    idx = ((starts[:, :, None] + np.arange(block)) % n).reshape(resamples, -1)[:, :n]
    boot = sharpe(ra[idx]) - sharpe(rb[idx])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return {"difference": float(sharpe(ra) - sharpe(rb)), "low": float(low), "high": float(high)}


class PortfolioEnv(gym.Env):
    """A trading desk's rebalancing problem (see module doc). Overridable numeric attributes:
    `desk` (index into DESKS), `split` (0 in-sample, 1 held-out), `cost` (per unit turnover),
    `rebalance_days`, `episode_days` (in-sample episode length), `reward_scale`."""

    metadata = {"render_modes": []}
    DOMAIN_METRICS = {"annual_return": True, "sharpe": True, "max_drawdown": False, "turnover": False}
    EVALUATION_OVERRIDES = {"split": 1.0}
    """Evaluation reports on the held-out window."""

    def __init__(self, desk: float = 0.0, split: float = 0.0) -> None:
        self.desk = float(desk)
        self.split = float(split)
        self.cost = 0.001
        self.rebalance_days = 5.0
        self.episode_days = 252.0
        self.reward_scale = 100.0
        n = MAX_ASSETS
        # Fixed shapes for every desk (one global policy): desks with fewer assets pad with zeros.
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n + 1,), dtype=np.float32)
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(5 * n + n + 1,), dtype=np.float32)
        self.completed_metrics: list[dict[str, float]] = []
        self._key: tuple | None = None

    # -- data ------------------------------------------------------------------------------
    def _load(self) -> None:
        key = (int(self.desk), int(self.split))
        if key == self._key:
            return
        desk = int(self.desk)
        if not 0 <= desk < len(DESKS):
            raise ValueError(f"desk must be in [0, {len(DESKS) - 1}], got {self.desk}")
        names, start = DESKS[desk]
        dates, tickers, prices = load_prices()
        cols = [tickers.index(t) for t in names]
        held = int(np.searchsorted(dates, HELD_OUT_START))
        first = int(np.searchsorted(dates, start))
        lo, hi = (first, held) if int(self.split) == 0 else (held, len(dates))
        lo = max(lo - LOOKBACK, 0)  # features need LOOKBACK days before the first decision
        self.names = names
        self.dates = dates[lo:hi]
        self.logp = np.log(prices[lo:hi][:, cols])
        self.n = len(names)
        self._key = key

    # -- episode ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._load()
        hold = max(1, int(self.rebalance_days))
        last = len(self.dates) - 1
        if int(self.split) == 0:
            span = min(int(self.episode_days), last - LOOKBACK - hold)
            self.start = int(self.np_random.integers(LOOKBACK, last - span + 1))
            self.end = self.start + span
        else:
            self.start, self.end = LOOKBACK, last
        self.day = self.start
        self.weights = np.zeros(self.n + 1)
        self.weights[-1] = 1.0  # start in cash
        self.values = [1.0]
        self.turnovers: list[float] = []
        return self._obs(), {"date": str(self.dates[self.day])}

    def _obs(self) -> np.ndarray:
        lp, d = self.logp, self.day
        feats = np.zeros((MAX_ASSETS, 5))
        for k, lag in enumerate((1, 5, 20, 60)):
            feats[: self.n, k] = (lp[d] - lp[d - lag]) * (10.0 if lag <= 5 else 3.0)
        daily = np.diff(lp[d - 20:d + 1], axis=0)
        feats[: self.n, 4] = daily.std(axis=0) * math.sqrt(TRADING_DAYS)
        w = np.zeros(MAX_ASSETS + 1)
        w[: self.n] = self.weights[:-1]
        w[-1] = self.weights[-1]
        return np.clip(np.concatenate([feats.reshape(-1), w]), -10.0, 10.0).astype(np.float32)

    def target_weights(self, action: np.ndarray) -> np.ndarray:
        """Action -> long-only weights over this desk's assets and cash (padding ignored)."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        raw = np.concatenate([(a[: self.n] + 1.0) / 2.0, [(a[-1] + 1.0) / 2.0]])
        total = raw.sum()
        if total <= 1e-12:
            out = np.zeros(self.n + 1)
            out[-1] = 1.0
            return out
        return raw / total

    def step(self, action):
        target = self.target_weights(action)
        turnover = float(np.abs(target - self.weights).sum())
        v0 = self.values[-1]
        w = target * v0 * (1.0 - self.cost * turnover)  # holdings in value, after the cost
        hold = max(1, int(self.rebalance_days))
        stop = min(self.day + hold, self.end)
        for d in range(self.day + 1, stop + 1):
            growth = np.exp(self.logp[d] - self.logp[d - 1])
            w = np.concatenate([w[:-1] * growth, w[-1:]])
            self.values.append(float(w.sum()))
        total = float(w.sum())
        self.weights = w / total if total > 0 else target
        reward = math.log(max(total, 1e-300) / v0) * self.reward_scale
        self.turnovers.append(turnover)
        self.day = stop
        truncated = self.day >= self.end
        info: dict[str, Any] = {"turnover": turnover, "value": total, "date": str(self.dates[self.day])}
        if truncated:
            metrics = self.episode_metrics()
            self.completed_metrics.append(metrics)
            info["episode_metrics"] = metrics
        return self._obs(), float(reward), False, bool(truncated), info

    def episode_metrics(self) -> dict[str, float]:
        return performance(np.asarray(self.values), np.asarray(self.turnovers), len(self.values) - 1)

    def pop_episode_metrics(self) -> list[dict[str, float]]:
        out, self.completed_metrics = self.completed_metrics, []
        return out

    # -- baselines ------------------------------------------------------------------------
    def buy_and_hold_action(self) -> np.ndarray:
        """Equal weights over the assets on the first step, then hold (zero turnover)."""
        a = -np.ones(MAX_ASSETS + 1, dtype=np.float32)
        if self.weights[-1] >= 1.0 - 1e-12:  # in cash: buy equal weights
            a[: self.n] = 1.0
            return a
        w = self.weights
        scaled = w / w.max()
        a[: self.n] = 2.0 * scaled[:-1] - 1.0
        a[-1] = 2.0 * scaled[-1] - 1.0
        return a

    def equal_weight_action(self) -> np.ndarray:
        a = -np.ones(MAX_ASSETS + 1, dtype=np.float32)
        a[: self.n] = 1.0
        return a
