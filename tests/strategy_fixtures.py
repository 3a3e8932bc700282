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


def reference_backtest(
    bars: pd.DataFrame,
    signals: pd.DataFrame,
    *,
    holding_period: int,
    entry: str,
    commission_bps: float = 0.0,
    commission_per_share: float = 0.0,
    slippage_bps: float = 0.0,
    max_weight: float | None = None,
) -> dict:
    """The documented backtest written the obvious way, one Python step per date: the engine's oracle.

    Each position is valued at its symbol's last close on every calendar date from the one after
    it was bought to its exit; the symbols held share the equity equally (capped), the positions
    of a symbol share its part equally.
    """
    wanted = {
        (t, d) for t, d, s in zip(signals["ticker"], signals["date"], signals["signal"], strict=True) if s
    }
    calendar = sorted(set(bars["date"]))
    slip, bps = slippage_bps / 10_000, commission_bps / 10_000
    positions, trade_returns, unfilled = [], [], 0
    for ticker, frame in bars.sort_values(["ticker", "date"]).groupby("ticker"):
        rows = list(frame.itertuples(index=False))
        close_on = {row.date: row.close for row in rows}
        for i, row in enumerate(rows):
            if (ticker, row.date) not in wanted:
                continue
            if i + holding_period >= len(rows):
                unfilled += 1
                continue
            bought = (rows[i + 1].open if entry == "next_open" else row.close) * (1 + slip)
            sold = rows[i + holding_period].close * (1 - slip)
            paid = bought * (1 + bps) + commission_per_share
            received = sold * (1 - bps) - commission_per_share
            exit_date = rows[i + holding_period].date
            if entry == "next_open":
                held = [d for d in calendar if rows[i + 1].date <= d <= exit_date]
            else:
                held = [d for d in calendar if row.date < d <= exit_date]
            value, mark, returns = paid, row.close, {}
            for day in held:
                mark = close_on.get(day, mark)
                new = received if day == exit_date else mark
                returns[day] = new / value - 1
                value = new
            positions.append((ticker, returns))
            trade_returns.append(received / paid - 1)
    returns = []
    for day in calendar:
        by_symbol: dict = {}
        for ticker, earned in positions:
            if day in earned:
                by_symbol.setdefault(ticker, []).append(earned[day])
        weight = 1 / len(by_symbol) if by_symbol else 0.0
        if max_weight is not None:
            weight = min(weight, max_weight)
        returns.append(sum(weight * sum(r) / len(r) for r in by_symbol.values()))
    value, peak, worst = 1.0, 1.0, 0.0
    for r in returns:
        value *= 1 + r
        peak = max(peak, value)
        worst = min(worst, value / peak - 1)
    mean = sum(returns) / len(returns)
    std = (sum((r - mean) ** 2 for r in returns) / (len(returns) - 1)) ** 0.5
    wins, losses = sum(r > 0 for r in trade_returns), sum(r < 0 for r in trade_returns)
    return {
        "total_return": value - 1,
        "win_rate": wins / (wins + losses) if wins + losses else None,
        "avg_return": sum(trade_returns) / len(trade_returns) if trade_returns else None,
        "sharpe": mean / std * 252**0.5 if std else None,
        "max_drawdown": worst,
        "number_of_trades": len(trade_returns),
        "winning_trades": wins,
        "losing_trades": losses,
        "flat_trades": len(trade_returns) - wins - losses,
        "exposure": sum(1 for day in calendar if any(day in e for _, e in positions)) / len(calendar),
        "signals_unfilled": unfilled,
    }
