"""The vectorised backtest engine: signals + bars -> trades, equity curve, metrics.

A true signal on bar ``s`` of a ticker opens a long position at the close of
``s`` (entry ``close``) or at the open of ``s + 1`` (entry ``next_open``) and
closes it at the close of bar ``s + holding_period``.  Signals too close to the
end of the data to be closed are not traded (``signals_unfilled``).  The
portfolio holds every open position at equal weight, rebalanced daily; a day
with no position earns 0.  Returns are fractions (0.05 is 5 %).

Everything is computed with whole-array pandas/numpy operations: there is no
Python loop over rows (see ``bench/strategy.py`` for the comparison).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

#: Trading days per year, to annualise the Sharpe ratio.
TRADING_DAYS = 252


class EntryRule(StrEnum):
    """When a signal's position opens."""

    CLOSE = "close"
    NEXT_OPEN = "next_open"


@dataclass(frozen=True)
class BacktestConfig:
    """How signals become trades.

    Parameters:
      holding_period(int): Bars after the signal bar at whose close the
        position closes.  Defaults to 5.
      entry(EntryRule): ``next_open`` (default) or ``close`` of the signal bar.
    """

    holding_period: int = 5
    entry: EntryRule = EntryRule.NEXT_OPEN

    def __post_init__(self) -> None:
        if self.holding_period < 1:
            raise ValueError(f"holding_period must be at least 1 bar (got {self.holding_period})")


@dataclass
class BacktestOutcome:
    """Trades and metrics of one backtest."""

    trades: pd.DataFrame
    daily_returns: pd.Series
    metrics: dict
    per_symbol: dict


def backtest(bars: pd.DataFrame, signals: pd.DataFrame, config: BacktestConfig) -> BacktestOutcome:
    """Run ``signals`` (ticker, date, signal) over ``bars`` (ticker, date, open, close)."""
    bars = bars.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    trades, unfilled = _trades(bars, signals, config)
    daily, exposure = _daily_returns(bars, trades)
    metrics = _metrics(trades, daily)
    metrics["exposure"] = _number(exposure)
    metrics["signals_unfilled"] = unfilled
    return BacktestOutcome(
        trades=trades, daily_returns=daily, metrics=metrics, per_symbol=_per_symbol(trades)
    )


def _trades(bars: pd.DataFrame, signals: pd.DataFrame, config: BacktestConfig) -> tuple[pd.DataFrame, int]:
    """One row per traded signal (row numbers, prices, return), and how many signals could not be closed."""
    position = bars.groupby("ticker", sort=False).cumcount().to_numpy()
    length = bars.groupby("ticker", sort=False)["date"].transform("size").to_numpy()
    rows = pd.DataFrame({"ticker": bars["ticker"], "date": bars["date"], "row": np.arange(len(bars))})
    wanted = signals.loc[signals["signal"], ["ticker", "date"]].drop_duplicates()
    matched = wanted.merge(rows, on=["ticker", "date"], how="inner")
    signal_row = matched["row"].to_numpy()
    fillable = position[signal_row] + config.holding_period < length[signal_row]
    signal_row = signal_row[fillable]
    exit_row = signal_row + config.holding_period
    open_, close = bars["open"].to_numpy(float), bars["close"].to_numpy(float)
    # Either way the position is first held on the bar after the signal.
    first_held = signal_row + 1
    entry_price = open_[first_held] if config.entry is EntryRule.NEXT_OPEN else close[signal_row]
    exit_price = close[exit_row]
    trades = pd.DataFrame(
        {
            "ticker": bars["ticker"].to_numpy()[signal_row],
            "signal_date": bars["date"].to_numpy()[signal_row],
            "exit_date": bars["date"].to_numpy()[exit_row],
            "first_held": first_held,
            "exit_row": exit_row,
            "entry_price": entry_price,
            "exit_price": exit_price,
            "return": exit_price / entry_price - 1.0,
        }
    )
    return trades, len(wanted) - len(signal_row)


def _daily_returns(bars: pd.DataFrame, trades: pd.DataFrame) -> tuple[pd.Series, float]:
    """Equal-weight portfolio return per date, from per-row position counts, and the exposure."""
    size = len(bars) + 1
    close = bars["close"].to_numpy(float)
    bar_return = bars.groupby("ticker", sort=False)["close"].pct_change().fillna(0.0).to_numpy()
    first, last = trades["first_held"].to_numpy(), trades["exit_row"].to_numpy()
    held = np.cumsum(np.bincount(first, minlength=size) - np.bincount(last + 1, minlength=size))[:-1]
    entering = np.bincount(first, minlength=size)[:-1]
    # A position's first held bar earns close / entry price; later bars earn the bar's return.
    first_return = close[first] / trades["entry_price"].to_numpy() - 1.0
    earned = (held - entering) * bar_return + np.bincount(first, weights=first_return, minlength=size)[:-1]
    per_date = pd.DataFrame({"date": bars["date"], "held": held, "earned": earned}).groupby("date").sum()
    daily = per_date["earned"] / per_date["held"].where(per_date["held"] > 0)
    exposure = float((per_date["held"] > 0).mean()) if len(per_date) else 0.0
    return daily.fillna(0.0), exposure


def _metrics(trades: pd.DataFrame, daily: pd.Series) -> dict:
    returns = trades["return"]
    equity = (1.0 + daily).cumprod()
    drawdown = equity / equity.cummax() - 1.0
    spread = daily.std(ddof=1) if len(daily) > 1 else 0.0
    return {
        "total_return": _number(equity.iloc[-1] - 1.0 if len(equity) else 0.0),
        "win_rate": _number((returns > 0).mean() if len(returns) else None),
        "avg_return": _number(returns.mean() if len(returns) else None),
        "sharpe": _number(daily.mean() / spread * np.sqrt(TRADING_DAYS) if spread > 0 else None),
        "max_drawdown": _number(drawdown.min() if len(drawdown) else 0.0),
        "number_of_trades": len(trades),
    }


def _per_symbol(trades: pd.DataFrame) -> dict:
    returns, ticker = trades["return"], trades["ticker"]
    table = pd.DataFrame(
        {
            "trades": returns.groupby(ticker).size(),
            "win_rate": (returns > 0).groupby(ticker).mean(),
            "avg_return": returns.groupby(ticker).mean(),
            "total_return": np.expm1(np.log1p(returns).groupby(ticker).sum()),
        }
    )
    return {
        str(name): {key: (int(v) if key == "trades" else _number(v)) for key, v in row.items()}
        for name, row in table.to_dict("index").items()
    }


def _number(value) -> float | None:
    """A JSON-safe float: ``None`` for missing or non-finite values."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 10)
