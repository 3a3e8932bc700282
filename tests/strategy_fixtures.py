"""Synthetic market bars with the documented ``market_bars`` columns, for the strategy tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: The seed's example strategy: gap up more than 3 % on 1.5x the usual volume.
GAP_UP = """
def gap_up(df):
    hits = df[(df["gap_pct"] > 3) & (df["volume_ratio"] > 1.5)]
    return [
        {"ticker": row.ticker, "date": str(row.date.date()), "signal": True,
         "message": "gap %.1f%% on %.1fx volume" % (row.gap_pct, row.volume_ratio)}
        for row in hits.itertuples()
    ]
"""


def synthetic_bars(
    symbols: list[str], *, days: int, seed: int = 7, start: str = "2023-01-02"
) -> pd.DataFrame:
    """Random-walk daily bars with overnight gaps and volume spikes; same seed, same bars."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=days)
    n = len(symbols) * days
    ticker = np.repeat(np.asarray(symbols, dtype=object), days)
    close = 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.015, (len(symbols), days)), axis=1)).ravel()
    gap = rng.choice([0.0, 0.045], size=n, p=[0.9, 0.1]) + rng.normal(0, 0.004, n)
    previous = np.concatenate([[np.nan], close[:-1]])
    previous[::days] = close[::days]
    open_ = previous * (1 + gap)
    volume = rng.integers(100_000, 200_000, n) * np.where(rng.random(n) < 0.15, 3, 1)
    frame = pd.DataFrame(
        {
            "ticker": ticker,
            "date": np.tile(dates.to_numpy(), len(symbols)),
            "open": open_,
            "high": np.maximum(open_, close) * 1.01,
            "low": np.minimum(open_, close) * 0.99,
            "close": close,
            "volume": volume.astype(float),
        }
    )
    by_ticker = frame.groupby("ticker", sort=False)
    frame["gap_pct"] = (frame["open"] / by_ticker["close"].shift(1) - 1) * 100
    frame["volume_ratio"] = frame["volume"] / by_ticker["volume"].transform(
        lambda v: v.rolling(20, min_periods=1).mean()
    )
    return frame


def write_market_bars(delta_root: Path, bars: pd.DataFrame) -> Path:
    """``bars`` as the Delta table ``market_bars`` under ``delta_root``."""
    from deltalake import write_deltalake

    path = Path(delta_root) / "market_bars"
    write_deltalake(str(path), bars, mode="overwrite", partition_by=["ticker"])
    return path


def reference_backtest(bars: pd.DataFrame, signals: pd.DataFrame, *, holding_period: int, entry: str) -> dict:
    """The same backtest written the obvious way, one Python step per row: the engine's oracle."""
    wanted = {
        (t, d) for t, d, s in zip(signals["ticker"], signals["date"], signals["signal"], strict=True) if s
    }
    daily: dict = {d: [0.0, 0] for d in sorted(set(bars["date"]))}
    trades, unfilled = [], 0
    for ticker, frame in bars.sort_values(["ticker", "date"]).groupby("ticker"):
        rows = list(frame.itertuples(index=False))
        for i, row in enumerate(rows):
            if (ticker, row.date) not in wanted:
                continue
            if i + holding_period >= len(rows):
                unfilled += 1
                continue
            entry_price = rows[i + 1].open if entry == "next_open" else row.close
            previous = entry_price
            for held in rows[i + 1 : i + holding_period + 1]:
                daily[held.date][0] += held.close / previous - 1
                daily[held.date][1] += 1
                previous = held.close
            trades.append((ticker, rows[i + holding_period].close / entry_price - 1))
    returns = [earned / held if held else 0.0 for earned, held in daily.values()]
    equity, peak, worst, value = [], 0.0, 0.0, 1.0
    for r in returns:
        value *= 1 + r
        peak = max(peak, value)
        worst = min(worst, value / peak - 1)
        equity.append(value)
    mean = sum(returns) / len(returns)
    std = (sum((r - mean) ** 2 for r in returns) / (len(returns) - 1)) ** 0.5
    trade_returns = [r for _, r in trades]
    return {
        "total_return": equity[-1] - 1,
        "win_rate": sum(r > 0 for r in trade_returns) / len(trades) if trades else None,
        "avg_return": sum(trade_returns) / len(trades) if trades else None,
        "sharpe": mean / std * 252**0.5 if std else None,
        "max_drawdown": worst,
        "number_of_trades": len(trades),
        "exposure": sum(1 for _, held in daily.values() if held) / len(daily),
        "signals_unfilled": unfilled,
    }
