"""The facts an analysis is made of, read from the Delta tables and the caller's inputs.

Facts are plain JSON-able dicts: the offline analyzer reads them, the LLM
analyzer is sent them, and they are stored with the report.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from actors.market_data.providers import SymbolDataError, normalize_symbol
from actors.market_data.tables import MARKET_BARS, NEWS, read_table, table_version

#: Bars of the momentum windows.
MOMENTUM_WINDOWS = (20, 60)
#: Bars of the volatility window, and of the history its regime is judged against.
VOLATILITY_WINDOW, VOLATILITY_HISTORY = 20, 252
#: Volatility above / below these multiples of its one-year median is a high / low regime.
HIGH_VOLATILITY, LOW_VOLATILITY = 1.5, 0.67
#: Days of news averaged into the sentiment.
NEWS_DAYS = 7
#: Bars of returns behind the value at risk.
VAR_HISTORY = 250
#: Risk limits used when the caller names none (percent of equity).
DEFAULT_LIMITS = {"max_position_pct": 20.0, "max_gross_exposure_pct": 100.0, "max_var_pct": 3.0}
#: Required figures of a backtest result.
BACKTEST_FIGURES = ("total_return_pct", "max_drawdown_pct", "sharpe", "trades")
#: Optional figures of a backtest result.
BACKTEST_OPTIONAL = ("win_rate_pct", "profit_factor", "annual_return_pct", "exposure_pct")
#: Figures as the strategy queue's backtest reports them (fractions), and what they become here.
BACKTEST_ALIASES = {
    "total_return": ("total_return_pct", 100.0),
    "max_drawdown": ("max_drawdown_pct", 100.0),
    "win_rate": ("win_rate_pct", 100.0),
    "exposure": ("exposure_pct", 100.0),
    "number_of_trades": ("trades", 1.0),
}


def market_facts(root: Path, symbols: list[str], *, as_of: datetime | None = None) -> dict[str, Any]:
    """Per-symbol facts from daily bars and news up to ``as_of`` (default: the newest bar)."""
    if isinstance(symbols, str) or not symbols:
        raise ValueError(f"symbols must be a non-empty list of tickers, got {symbols!r}")
    wanted = []
    for symbol in symbols:
        try:
            wanted.append(normalize_symbol(symbol))
        except SymbolDataError as exc:
            raise ValueError(str(exc)) from None
    bars_filter = pc.field("symbol").isin(wanted) & (pc.field("interval") == "1d")
    if as_of is not None:
        bars_filter &= pc.field("timestamp") <= pd.Timestamp(as_of)
    bars = read_table(root, MARKET_BARS, filter=bars_filter).to_pandas()
    news = read_table(root, NEWS, filter=pc.field("symbol").isin(wanted)).to_pandas()
    facts: dict[str, Any] = {"symbols": {}, "missing": []}
    for symbol in wanted:
        series = bars[bars["symbol"] == symbol].sort_values("timestamp", ignore_index=True)
        if series.empty:
            facts["missing"].append(symbol)
            continue
        facts["symbols"][symbol] = symbol_facts(series, news[news["symbol"] == symbol])
    facts["inputs"] = {
        "market_bars_version": table_version(root, MARKET_BARS),
        "news_version": table_version(root, NEWS),
        "as_of": as_of.isoformat() if as_of else None,
    }
    return facts


def symbol_facts(bars: pd.DataFrame, news: pd.DataFrame) -> dict[str, Any]:
    """Facts of one symbol from its daily bars (sorted, with features) and its news."""
    close = bars["close"]
    last = bars.iloc[-1]
    returns = bars["return_pct"].dropna()
    volatility = returns.rolling(VOLATILITY_WINDOW).std() * math.sqrt(252)
    current_volatility = _number(volatility.iat[-1]) if len(volatility) else None
    typical = _number(volatility.iloc[-VOLATILITY_HISTORY:].median()) if volatility.notna().any() else None
    recent_news = news[news["published_at"] > last["timestamp"] - timedelta(days=NEWS_DAYS)]
    recent_news = recent_news[recent_news["published_at"] <= last["timestamp"] + timedelta(days=1)]
    facts = {
        "as_of": last["timestamp"].isoformat(),
        "close": float(last["close"]),
        "bars": len(bars),
        "volatility_pct": current_volatility,
        "volatility_median_pct": typical,
        "volatility_regime": _regime(current_volatility, typical),
        "drawdown_pct": float((last["close"] / close.iloc[-VOLATILITY_HISTORY:].max() - 1) * 100),
        "gap_pct": _number(last["gap_pct"]),
        "volume_ratio": _number(last["volume_ratio"]),
        "rsi_14": _number(last["rsi_14"]),
        "sma_50": _number(last["sma_50"]),
        "news_count": len(recent_news),
        "news_sentiment": _number(recent_news["sentiment_compound"].mean()) if len(recent_news) else None,
    }
    for window in MOMENTUM_WINDOWS:
        facts[f"momentum_{window}d_pct"] = (
            float((last["close"] / close.iat[-1 - window] - 1) * 100) if len(close) > window else None
        )
    return facts


def portfolio_facts(root: Path, portfolio: dict, limits: dict | None = None) -> dict[str, Any]:
    """Market values, weights, concentration, 1-day 95 % VaR and headroom to each risk limit."""
    positions, cash = _positions(portfolio)
    limits = {**DEFAULT_LIMITS, **_numbers(limits or {}, what="limits")}
    bars = read_table(
        root,
        MARKET_BARS,
        filter=pc.field("symbol").isin(list(positions)) & (pc.field("interval") == "1d"),
    ).to_pandas()
    closes = bars.pivot_table(index="timestamp", columns="symbol", values="close").sort_index()
    missing = sorted(set(positions) - set(closes.columns))
    if missing:
        raise ValueError(f"no daily bars for position(s) {', '.join(missing)}: fetch_market_data them first")
    last, previous = closes.ffill().iloc[-1], closes.ffill().iloc[-2] if len(closes) > 1 else closes.iloc[-1]
    values = {symbol: quantity * float(last[symbol]) for symbol, quantity in positions.items()}
    equity = cash + sum(values.values())
    if equity <= 0:
        raise ValueError(f"portfolio equity is {equity:.2f}: cash plus positions must be positive")
    weights = {symbol: value / equity * 100 for symbol, value in values.items()}
    gross = sum(abs(weight) for weight in weights.values())
    var_pct = _value_at_risk(closes, weights)
    largest = max(weights, key=lambda symbol: abs(weights[symbol])) if weights else None
    day_pnl = {
        symbol: quantity * float(last[symbol] - previous[symbol]) for symbol, quantity in positions.items()
    }
    return {
        "equity": equity,
        "cash": cash,
        "positions": {
            symbol: {
                "quantity": positions[symbol],
                "price": float(last[symbol]),
                "value": values[symbol],
                "weight_pct": weights[symbol],
                "day_pnl": day_pnl[symbol],
            }
            for symbol in positions
        },
        "gross_exposure_pct": gross,
        "largest_position": largest,
        "largest_weight_pct": abs(weights[largest]) if largest else 0.0,
        "concentration_hhi": sum((weight / 100) ** 2 for weight in weights.values()),
        "var_95_1d_pct": var_pct,
        "day_pnl": sum(day_pnl.values()),
        "limits": limits,
        "headroom_pct": {
            "position": limits["max_position_pct"] - (abs(weights[largest]) if largest else 0.0),
            "gross_exposure": limits["max_gross_exposure_pct"] - gross,
            "var": limits["max_var_pct"] - var_pct if var_pct is not None else None,
        },
        "inputs": {
            "market_bars_version": table_version(root, MARKET_BARS),
            "as_of": closes.index[-1].isoformat(),
        },
    }


def backtest_facts(backtest: dict) -> dict[str, Any]:
    """The figures of a backtest result (flat, or under ``metrics``), checked."""
    if not isinstance(backtest, dict):
        raise ValueError(
            f"backtest must be an object with {', '.join(BACKTEST_FIGURES)}, got {type(backtest).__name__}"
        )
    metrics = _in_percent(backtest.get("metrics", backtest))
    missing = [name for name in BACKTEST_FIGURES if name not in metrics]
    if missing:
        raise ValueError(f"backtest result lacks {', '.join(missing)} (need {', '.join(BACKTEST_FIGURES)})")
    figures = _numbers(
        {name: metrics[name] for name in (*BACKTEST_FIGURES, *BACKTEST_OPTIONAL) if name in metrics},
        what="backtest",
    )
    return {
        "strategy": str(backtest.get("strategy") or backtest.get("name") or "strategy"),
        "symbols": [str(symbol) for symbol in backtest.get("symbols", [])],
        "figures": figures,
    }


def _in_percent(metrics: dict) -> dict:
    """``metrics`` with the strategy queue's fraction figures also given under our percent names.

    A Sharpe ratio of ``None`` (no variance: no or constant returns) counts as 0.
    """
    if not isinstance(metrics, dict):
        raise ValueError(f"backtest metrics must be an object, got {type(metrics).__name__}")
    converted = dict(metrics)
    for name, (ours, scale) in BACKTEST_ALIASES.items():
        value = metrics.get(name)
        if ours not in metrics and isinstance(value, int | float) and not isinstance(value, bool):
            converted[ours] = value * scale
    if "sharpe" in converted and converted["sharpe"] is None:
        converted["sharpe"] = 0.0
    return converted


def _positions(portfolio: dict) -> tuple[dict[str, float], float]:
    if not isinstance(portfolio, dict) or not isinstance(portfolio.get("positions"), dict):
        raise ValueError('portfolio must look like {"positions": {"AAPL": 100}, "cash": 10000}')
    positions = {}
    for symbol, quantity in portfolio["positions"].items():
        try:
            positions[normalize_symbol(symbol)] = _numbers({symbol: quantity}, what="positions")[symbol]
        except SymbolDataError as exc:
            raise ValueError(f"portfolio: {exc}") from None
    if not positions:
        raise ValueError("portfolio has no positions")
    return positions, _numbers({"cash": portfolio.get("cash", 0.0)}, what="portfolio")["cash"]


def _numbers(values: dict, *, what: str) -> dict[str, float]:
    checked = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{what}: {name} must be a finite number, got {value!r}")
        checked[name] = float(value)
    return checked


def _value_at_risk(closes: pd.DataFrame, weights: dict[str, float]) -> float | None:
    """Historical 1-day 95 % VaR of the weighted portfolio, in percent of equity (positive = loss)."""
    returns = closes.pct_change(fill_method=None).iloc[-VAR_HISTORY:].dropna()
    if len(returns) < 20:
        return None
    portfolio = returns[list(weights)].to_numpy() @ np.array(list(weights.values()))
    return float(-np.percentile(portfolio, 5))


def _regime(current: float | None, typical: float | None) -> str | None:
    if current is None or not typical:
        return None
    if current > HIGH_VOLATILITY * typical:
        return "high"
    return "low" if current < LOW_VOLATILITY * typical else "normal"


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)
