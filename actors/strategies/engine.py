"""The vectorised backtest engine: signals + bars -> trades, equity curve, metrics.

A true signal on bar ``s`` of a ticker opens a long position at the close of
``s`` (entry ``close``) or at the open of ``s + 1`` (entry ``next_open``) and
closes it at the close of bar ``s + holding_period``.  Fills move against the
trade by the slippage, and each fill pays commission.  Signals too close to the
end of the data to be closed are not traded (``signals_unfilled``).

The portfolio runs on the calendar of all bar dates.  Each symbol with an open
position gets an equal weight ``min(1 / symbols held, max_weight)`` (the rest is
cash earning 0), rebalanced at every close at no cost; the positions of one
symbol share its weight equally.  A position stays open on a date its symbol
has no bar, at its last close (0 % that day).  Returns are fractions (0.05 is
5 %).  ``docs/strategy.md`` has the exact definitions; :func:`assumptions`
states them in every result.

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

#: Most trades listed in a result (``trades_total`` counts them all).
TRADE_LIST_LIMIT = 1_000

#: One basis point, as a fraction.
BPS = 1e-4


class EntryRule(StrEnum):
    """When a signal's position opens."""

    CLOSE = "close"
    NEXT_OPEN = "next_open"


@dataclass(frozen=True)
class BacktestConfig:
    """How signals become trades, what they cost and how they are sized.

    Parameters:
      holding_period(int): Bars after the signal bar at whose close the
        position closes.  Defaults to 5.
      entry(EntryRule): ``next_open`` (default) or ``close`` of the signal bar.
      commission_bps(float): Commission per fill, in basis points of the
        fill's value.  Defaults to 0.
      commission_per_share(float): Commission per share and fill, in the
        price's currency.  Defaults to 0.
      slippage_bps(float): How far each fill is from the bar's price against
        the trade (buys higher, sells lower), in basis points.  Defaults to 0.
      max_weight(float): Largest share of the portfolio one symbol may hold,
        in ``(0, 1]``; ``None`` (default) is no cap.
    """

    holding_period: int = 5
    entry: EntryRule = EntryRule.NEXT_OPEN
    commission_bps: float = 0.0
    commission_per_share: float = 0.0
    slippage_bps: float = 0.0
    max_weight: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "entry", EntryRule(self.entry))
        if self.holding_period < 1:
            raise ValueError(f"holding_period must be at least 1 bar (got {self.holding_period})")
        for name in ("commission_bps", "commission_per_share", "slippage_bps"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be 0 or more (got {getattr(self, name)})")
        if self.max_weight is not None and not 0 < self.max_weight <= 1:
            raise ValueError(f"max_weight must be in (0, 1] (got {self.max_weight})")


@dataclass
class BacktestOutcome:
    """Trades and metrics of one backtest."""

    trades: pd.DataFrame
    daily_returns: pd.Series
    metrics: dict
    per_symbol: dict


def backtest(bars: pd.DataFrame, signals: pd.DataFrame, config: BacktestConfig) -> BacktestOutcome:
    """Run ``signals`` (ticker, date, signal) over ``bars`` (ticker, date, open, close)."""
    bars = bars.drop_duplicates(["ticker", "date"], keep="last")
    bars = bars.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    trades, unfilled = _trades(bars, signals, config)
    book = _Book(bars, trades, config)
    daily = book.daily_returns()
    metrics = _metrics(trades, daily)
    metrics["exposure"] = _number(book.exposure())
    metrics["signals_unfilled"] = unfilled
    return BacktestOutcome(
        trades=trades, daily_returns=daily, metrics=metrics, per_symbol=_per_symbol(trades, book)
    )


def _trades(bars: pd.DataFrame, signals: pd.DataFrame, config: BacktestConfig) -> tuple[pd.DataFrame, int]:
    """One row per traded signal (dates, fills, return net of costs), and how many signals
    could not be closed."""
    position = bars.groupby("ticker", sort=False).cumcount().to_numpy()
    length = bars.groupby("ticker", sort=False)["date"].transform("size").to_numpy()
    rows = pd.DataFrame({"ticker": bars["ticker"], "date": bars["date"], "row": np.arange(len(bars))})
    wanted = signals.loc[signals["signal"], ["ticker", "date"]].drop_duplicates()
    matched = wanted.merge(rows, on=["ticker", "date"], how="inner")
    signal_row = np.sort(matched["row"].to_numpy())
    fillable = position[signal_row] + config.holding_period < length[signal_row]
    signal_row = signal_row[fillable]
    exit_row = signal_row + config.holding_period
    open_, close = bars["open"].to_numpy(float), bars["close"].to_numpy(float)
    dates = bars["date"].to_numpy()
    next_open = config.entry is EntryRule.NEXT_OPEN
    entry_row = signal_row + 1 if next_open else signal_row
    slip = config.slippage_bps * BPS
    entry_fill = (open_[entry_row] if next_open else close[signal_row]) * (1 + slip)
    exit_fill = close[exit_row] * (1 - slip)
    # Cash paid per share bought, and received per share sold, commission included.
    basis = entry_fill * (1 + config.commission_bps * BPS) + config.commission_per_share
    proceeds = exit_fill * (1 - config.commission_bps * BPS) - config.commission_per_share
    trades = pd.DataFrame(
        {
            "ticker": bars["ticker"].to_numpy()[signal_row],
            "signal_date": dates[signal_row],
            "entry_date": dates[entry_row],
            "exit_date": dates[exit_row],
            "entry_price": entry_fill,
            "exit_price": exit_fill,
            "basis": basis,
            "proceeds": proceeds,
            "return": proceeds / basis - 1.0,
            "holding_bars": exit_row - signal_row,
        }
    )
    return trades, len(wanted) - len(signal_row)


class _Book:
    """Positions on the calendar of all bar dates (rows) by symbol (columns)."""

    def __init__(self, bars: pd.DataFrame, trades: pd.DataFrame, config: BacktestConfig) -> None:
        self.dates = pd.DatetimeIndex(np.unique(bars["date"].to_numpy()))
        self.tickers = pd.Index(pd.unique(bars["ticker"]))
        wide = bars.pivot(index="date", columns="ticker", values="close").reindex(
            index=self.dates, columns=self.tickers
        )
        # A date without a bar keeps the last close: a carried position earns 0 that day.
        close = wide.ffill().to_numpy(float)
        previous = np.vstack([np.full((1, close.shape[1]), np.nan), close[:-1]])
        bar_return = np.nan_to_num(close / previous - 1.0)
        column = self.tickers.get_indexer(trades["ticker"])
        exit_at = self.dates.get_indexer(trades["exit_date"])
        if config.entry is EntryRule.NEXT_OPEN:
            start = self.dates.get_indexer(trades["entry_date"])
        else:  # bought at the signal's close: held from the next calendar date on
            start = self.dates.get_indexer(trades["signal_date"]) + 1
        shape = (len(self.dates) + 1, len(self.tickers))
        opened = np.zeros(shape)
        np.add.at(opened, (start, column), 1)
        np.add.at(opened, (exit_at + 1, column), -1)
        self.count = np.cumsum(opened, axis=0)[:-1]
        earned = self.count * bar_return
        # The first and last held dates earn from the cash basis and up to the proceeds.
        basis, proceeds = trades["basis"].to_numpy(float), trades["proceeds"].to_numpy(float)
        same_day = start == exit_at
        first = np.where(same_day, proceeds, close[start, column]) / basis - 1.0
        np.add.at(earned, (start, column), first - bar_return[start, column])
        last = proceeds / close[exit_at - 1, column] - 1.0
        np.add.at(earned, (exit_at, column), np.where(same_day, 0.0, last - bar_return[exit_at, column]))
        held = self.count > 0
        #: Return of each symbol's sleeve (its positions at equal shares), 0 when not held.
        self.sleeve = np.where(held, earned / np.where(held, self.count, 1), 0.0)
        symbols = held.sum(axis=1)
        weight = np.where(symbols > 0, 1.0 / np.maximum(symbols, 1), 0.0)
        if config.max_weight is not None:
            weight = np.minimum(weight, config.max_weight)
        self.period = pd.Series(self.sleeve.sum(axis=1) * weight, index=self.dates)
        self.symbols_held = symbols

    def daily_returns(self) -> pd.Series:
        """Portfolio return per day: the bars' periods compounded within each calendar day."""
        days = self.dates.normalize()
        if days.equals(self.dates):
            return self.period.rename_axis("date")
        return ((1.0 + self.period).groupby(days).prod() - 1.0).rename_axis("date")

    def exposure(self) -> float:
        return float((self.symbols_held > 0).mean()) if len(self.dates) else 0.0

    def sleeve_total_return(self) -> pd.Series:
        """Per symbol: its sleeve's returns compounded over the dates it was held."""
        return pd.Series(np.expm1(np.log1p(self.sleeve).sum(axis=0)), index=self.tickers)


def _metrics(trades: pd.DataFrame, daily: pd.Series) -> dict:
    returns = trades["return"]
    equity = (1.0 + daily).cumprod()
    # The equity is 1 before the first date: a loss on day one is a drawdown too.
    drawdown = equity / np.maximum(equity.cummax(), 1.0) - 1.0
    spread = daily.std(ddof=1) if len(daily) > 1 else 0.0
    wins, losses = int((returns > 0).sum()), int((returns < 0).sum())
    return {
        "total_return": _number(equity.iloc[-1] - 1.0 if len(equity) else 0.0),
        "win_rate": _number(wins / (wins + losses) if wins + losses else None),
        "avg_return": _number(returns.mean() if len(returns) else None),
        "sharpe": _number(daily.mean() / spread * np.sqrt(TRADING_DAYS) if spread > 0 else None),
        "max_drawdown": _number(min(drawdown.min(), 0.0) if len(drawdown) else 0.0),
        "number_of_trades": len(trades),
        "winning_trades": wins,
        "losing_trades": losses,
        "flat_trades": len(trades) - wins - losses,
    }


def _per_symbol(trades: pd.DataFrame, book: _Book) -> dict:
    returns, ticker = trades["return"], trades["ticker"]
    wins, losses = (returns > 0).groupby(ticker).sum(), (returns < 0).groupby(ticker).sum()
    decided = wins + losses
    table = pd.DataFrame(
        {
            "trades": returns.groupby(ticker).size(),
            "win_rate": (wins / decided).where(decided > 0),
            "avg_return": returns.groupby(ticker).mean(),
        }
    )
    table["total_return"] = book.sleeve_total_return().reindex(table.index)
    return {
        str(name): {key: (int(v) if key == "trades" else _number(v)) for key, v in row.items()}
        for name, row in table.to_dict("index").items()
    }


def trade_list(trades: pd.DataFrame, *, limit: int = TRADE_LIST_LIMIT) -> list[dict]:
    """The first ``limit`` trades in signal-date order, as JSON-safe records."""
    first = trades.sort_values(["signal_date", "ticker"], kind="stable").head(limit)
    return [
        {
            "symbol": str(trade["ticker"]),
            "signal_date": _stamp(trade["signal_date"]),
            "entry_date": _stamp(trade["entry_date"]),
            "entry_price": _number(trade["entry_price"]),
            "exit_date": _stamp(trade["exit_date"]),
            "exit_price": _number(trade["exit_price"]),
            "return": _number(trade["return"]),
            "holding_bars": int(trade["holding_bars"]),
        }
        for trade in first.to_dict("records")
    ]


def assumptions(config: BacktestConfig, *, interval: str = "1d") -> dict:
    """Every modelling choice of a backtest, as it is stated in its result."""
    entry = (
        "open of the bar after the signal bar"
        if config.entry is EntryRule.NEXT_OPEN
        else "close of the signal bar, the bar whose close produced the signal (the strategy "
        "must be able to decide before that close, e.g. for a market-on-close order)"
    )
    return {
        "interval": interval,
        "direction": "long only",
        "entry": config.entry.value,
        "entry_fill": entry,
        "exit_fill": f"close of the bar {config.holding_period} bars after the signal bar",
        "holding_period": config.holding_period,
        "commission_bps": config.commission_bps,
        "commission_per_share": config.commission_per_share,
        "slippage_bps": config.slippage_bps,
        "costs": "every entry and exit fill is moved against the trade by slippage_bps and pays "
        "commission_bps of its value plus commission_per_share; trade returns and the equity "
        "curve are net of them; no minimum commission, borrow, financing or taxes",
        "sizing": "each symbol with an open position gets min(1 / symbols held, max_weight) of the "
        "equity, the rest is cash earning 0; positions of one symbol share its weight equally; "
        "weights are reset at every close at no cost",
        "max_weight": config.max_weight,
        "missing_bars": "an open position is carried at its last close (0 % return) on a date its "
        "symbol has no bar; the calendar is the union of all bar dates",
        "unfilled_signals": "signals fewer than holding_period bars before the end of the data "
        "are not traded",
        "sharpe": f"mean / sample standard deviation of daily portfolio returns x sqrt({TRADING_DAYS}); "
        "risk-free rate 0; days without a position count as 0",
        "max_drawdown": "lowest daily close-to-close equity / running peak - 1, the equity starting at 1",
        "win_rate": "winning / (winning + losing) trades, net of costs; trades returning exactly 0 are "
        "flat_trades, counted in neither",
        "per_symbol_total_return": "the symbol's sleeve (its positions at equal shares) compounded "
        "over the dates it was held",
        "lookahead": "signals are recomputed on the bars cut at signal dates; a strategy whose past "
        "signals change is rejected",
        "rounding": "none: figures are full double precision",
    }


def _stamp(value) -> str:
    stamp = pd.Timestamp(value)
    return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()


def _number(value) -> float | None:
    """A JSON-safe float: ``None`` for missing or non-finite values (never rounded)."""
    if value is None or not np.isfinite(value):
        return None
    return float(value)
