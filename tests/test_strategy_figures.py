"""Backtest, screening and feature figures a trader can trust: each checked against a case small
enough to compute by hand here, from the definitions in docs/strategy.md and docs/data.md."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from strategy_fixtures import reference_backtest, synthetic_bars

from actors.market_data.features import add_features
from actors.strategies import BacktestConfig, EntryRule, backtest, cut_dates, plan_cuts, trade_list

DAYS = pd.bdate_range("2024-01-01", periods=6)


def _bars(prices: dict[str, dict[str, list[float]]], *, missing: dict[str, list[int]] | None = None):
    """Bars per ticker on DAYS; ``missing`` drops those day numbers of a ticker."""
    frames = []
    for ticker, columns in prices.items():
        frame = pd.DataFrame({"ticker": ticker, "date": DAYS[: len(columns["close"])], **columns})
        if "open" not in columns:
            frame["open"] = frame["close"]
        frames.append(frame.drop(index=(missing or {}).get(ticker, [])))
    return pd.concat(frames, ignore_index=True).astype({"open": float, "close": float})


def _signals(*rows: tuple[str, int]) -> pd.DataFrame:
    return pd.DataFrame({"ticker": [t for t, _ in rows], "date": [DAYS[d] for _, d in rows], "signal": True})


def test_a_position_is_carried_over_a_date_its_symbol_has_no_bar() -> None:
    # BBB has no bar on day 2. Both bought at day 0's close, held 3 bars: AAA exits on day 3,
    # BBB on its third bar after the signal, day 4. On day 2 BBB is still held, at 20.
    bars = _bars(
        {"AAA": {"close": [10, 10, 11, 12, 12]}, "BBB": {"close": [20, 20, 99, 22, 22]}}, missing={"BBB": [2]}
    )
    outcome = backtest(
        bars, _signals(("AAA", 0), ("BBB", 0)), BacktestConfig(holding_period=3, entry="close")
    )
    day1 = (0.0 + 0.0) / 2
    day2 = (11 / 10 - 1 + 0.0) / 2  # BBB carried: 0 %, and still half of the portfolio
    day3 = (12 / 11 - 1 + 22 / 20 - 1) / 2
    day4 = 22 / 22 - 1  # BBB alone
    assert outcome.daily_returns.tolist() == pytest.approx([0, day1, day2, day3, day4])
    assert outcome.metrics["total_return"] == pytest.approx((1 + day2) * (1 + day3) - 1)
    assert outcome.metrics["exposure"] == pytest.approx(4 / 5)
    trades = {t["symbol"]: t for t in trade_list(outcome.trades)}
    assert (trades["BBB"]["exit_date"], trades["BBB"]["holding_bars"]) == ("2024-01-05", 3)
    assert trades["BBB"]["return"] == pytest.approx(22 / 20 - 1)


def test_overlapping_signals_share_their_symbols_weight() -> None:
    # AAA signals on days 0 and 1, BBB on day 0; bought at the close, held 2 bars.
    bars = _bars({"AAA": {"close": [10, 11, 12, 12]}, "BBB": {"close": [20, 20, 18, 18]}})
    signals = _signals(("AAA", 0), ("AAA", 1), ("BBB", 0))
    outcome = backtest(bars, signals, BacktestConfig(holding_period=2, entry="close"))
    # Half the equity in AAA (its two positions a quarter each), half in BBB.
    day1 = (11 / 10 - 1) / 2 + 0 / 2
    day2 = ((12 / 11 - 1) + (12 / 11 - 1)) / 2 / 2 + (18 / 20 - 1) / 2
    day3 = 12 / 12 - 1  # AAA's second position alone
    assert outcome.daily_returns.tolist() == pytest.approx([0, day1, day2, day3])
    # AAA's sleeve: +10 % then +1/11: +20 %, not two full-capital trades compounded (+30.9 %).
    assert outcome.per_symbol["AAA"]["total_return"] == pytest.approx(1.1 * 12 / 11 - 1)
    assert outcome.per_symbol["AAA"]["avg_return"] == pytest.approx((12 / 10 - 1 + 12 / 11 - 1) / 2)

    capped = backtest(bars, signals, BacktestConfig(holding_period=2, entry="close", max_weight=0.25))
    expected = [0, 0.25 * 0.1, 0.25 * (1 / 11) + 0.25 * (18 / 20 - 1), 0.25 * 0]  # the rest is cash
    assert capped.daily_returns.tolist() == pytest.approx(expected)


def test_commission_and_slippage_are_charged_on_each_fill() -> None:
    bars = _bars({"AAA": {"open": [10, 10, 10.5], "close": [10, 10.4, 11]}})
    config = BacktestConfig(
        holding_period=2,
        entry=EntryRule.NEXT_OPEN,
        commission_bps=5,
        commission_per_share=0.01,
        slippage_bps=10,
    )
    outcome = backtest(bars, _signals(("AAA", 0)), config)
    bought, sold = 10 * 1.001, 11 * 0.999  # 10 bps against us each way
    paid, received = bought * 1.0005 + 0.01, sold * 0.9995 - 0.01
    (trade,) = trade_list(outcome.trades)
    assert (trade["entry_price"], trade["exit_price"]) == (pytest.approx(bought), pytest.approx(sold))
    assert trade["return"] == pytest.approx(received / paid - 1)
    assert outcome.daily_returns.tolist() == pytest.approx([0, 10.4 / paid - 1, received / 10.4 - 1])
    assert outcome.metrics["total_return"] == pytest.approx(received / paid - 1)
    free = backtest(bars, _signals(("AAA", 0)), BacktestConfig(holding_period=2))
    assert free.metrics["total_return"] == pytest.approx(11 / 10 - 1)


def test_zero_return_trades_are_flat_not_losses_and_figures_are_not_rounded() -> None:
    bars = _bars(
        {"AAA": {"close": [10, 10, 10]}, "BBB": {"close": [3, 3.1, 3.2]}, "CCC": {"close": [30, 29, 28]}}
    )
    outcome = backtest(bars, _signals(("AAA", 0), ("BBB", 0), ("CCC", 0)), BacktestConfig(1, "close"))
    metrics = outcome.metrics
    assert (metrics["winning_trades"], metrics["losing_trades"], metrics["flat_trades"]) == (1, 1, 1)
    assert metrics["win_rate"] == 0.5  # 1 of the 2 trades that won or lost
    assert metrics["avg_return"] == (0.0 + (3.1 / 3 - 1) + (29 / 30 - 1)) / 3  # exactly, unrounded
    assert outcome.per_symbol["AAA"]["win_rate"] is None


def test_the_trade_list_is_in_signal_order_and_capped() -> None:
    bars = _bars({"AAA": {"close": [10, 11, 12, 13, 14, 15]}, "BBB": {"close": [5, 5, 5, 5, 5, 5]}})
    signals = _signals(("AAA", 2), ("BBB", 0), ("AAA", 0), ("BBB", 5))
    outcome = backtest(bars, signals, BacktestConfig(holding_period=2))
    listed = trade_list(outcome.trades, limit=2)
    assert [(t["symbol"], t["signal_date"], t["entry_date"]) for t in listed] == [
        ("AAA", "2024-01-01", "2024-01-02"),
        ("BBB", "2024-01-01", "2024-01-02"),
    ]
    assert listed[0] == {
        "symbol": "AAA",
        "signal_date": "2024-01-01",
        "entry_date": "2024-01-02",
        "entry_price": 11.0,  # open of the next bar (here equal to its close)
        "exit_date": "2024-01-03",
        "exit_price": 12.0,
        "return": 12 / 11 - 1,
        "holding_bars": 2,
    }
    assert len(outcome.trades) == 3  # BBB on the last day cannot be closed
    assert outcome.metrics["signals_unfilled"] == 1


@pytest.mark.parametrize("entry", ["next_open", "close"])
def test_engine_agrees_with_a_per_date_loop_with_gaps_costs_and_a_cap(entry: str) -> None:
    bars = synthetic_bars(["A", "B", "C", "D"], days=90, seed=11)
    rng = np.random.default_rng(2)
    bars = bars[rng.random(len(bars)) > 0.08].reset_index(drop=True)  # each symbol misses some days
    signals = bars.loc[rng.random(len(bars)) < 0.2, ["ticker", "date"]].assign(signal=True)
    costs = {"commission_bps": 3.0, "commission_per_share": 0.005, "slippage_bps": 7.0, "max_weight": 0.4}
    metrics = backtest(
        bars, signals, BacktestConfig(holding_period=3, entry=EntryRule(entry), **costs)
    ).metrics
    expected = reference_backtest(bars, signals, holding_period=3, entry=entry, **costs)
    assert expected["number_of_trades"] > 20
    assert metrics == {key: pytest.approx(value) for key, value in expected.items()}


def test_intraday_periods_compound_into_daily_returns() -> None:
    hours = pd.to_datetime(["2024-01-02 15:00", "2024-01-02 16:00", "2024-01-02 17:00",
                            "2024-01-03 15:00", "2024-01-03 16:00", "2024-01-03 17:00"])  # fmt: skip
    bars = pd.DataFrame({"ticker": "AAA", "date": hours, "close": [10.0, 11, 12, 12, 13, 13]})
    bars["open"] = bars["close"]
    signal = pd.DataFrame({"ticker": ["AAA"], "date": [hours[0]], "signal": [True]})
    outcome = backtest(bars, signal, BacktestConfig(holding_period=3, entry="close"))
    # Held 16:00 (+10 %), 17:00 (12/11) and the next day's 15:00 (0 %): day one +20 %, day two 0.
    assert outcome.daily_returns.tolist() == pytest.approx([1.1 * 12 / 11 - 1, 0.0])
    assert outcome.daily_returns.index.strftime("%Y-%m-%d").tolist() == ["2024-01-02", "2024-01-03"]
    assert outcome.metrics["exposure"] == pytest.approx(3 / 6)  # of the bars' periods


def _wilder(values: list[float], period: int = 14) -> list[float]:
    """Wilder's smoothing as he defined it: the first average is the simple mean of the first
    ``period`` values (values[1..period]; values[0] has no previous bar), then
    (previous * (period - 1) + value) / period."""
    averages = [math.nan] * len(values)
    averages[period] = sum(values[1 : period + 1]) / period
    for i in range(period + 1, len(values)):
        averages[i] = (averages[i - 1] * (period - 1) + values[i]) / period
    return averages


def test_rsi_and_atr_are_wilders_from_the_fifteenth_bar() -> None:
    rng = np.random.default_rng(4)
    close = list(100 + np.cumsum(rng.normal(0, 1.5, 60)))
    high = [c + abs(x) for c, x in zip(close, rng.normal(0, 1, 60), strict=True)]
    low = [c - abs(x) for c, x in zip(close, rng.normal(0, 1, 60), strict=True)]
    bars = pd.DataFrame({"open": close, "high": high, "low": low, "close": close, "volume": 1000})
    features = add_features(bars)

    change = [math.nan] + [close[i] - close[i - 1] for i in range(1, 60)]
    gain = _wilder([max(c, 0.0) if i else math.nan for i, c in enumerate(change)])
    loss = _wilder([max(-c, 0.0) if i else math.nan for i, c in enumerate(change)])
    rsi = [100 - 100 / (1 + g / lo) for g, lo in zip(gain, loss, strict=True)]
    true_range = [math.nan] + [
        max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1])) for i in range(1, 60)
    ]
    atr = _wilder(true_range)
    assert features["rsi_14"].iloc[:14].isna().all() and features["atr_14"].iloc[:14].isna().all()
    assert features["rsi_14"].iloc[14:].tolist() == pytest.approx(rsi[14:], abs=1e-10)
    assert features["atr_14"].iloc[14:].tolist() == pytest.approx(atr[14:], abs=1e-10)


def test_rsi_of_a_flat_series_is_50() -> None:
    flat = pd.DataFrame({"open": 5.0, "high": 5.0, "low": 5.0, "close": [5.0] * 30, "volume": 10})
    features = add_features(flat)
    assert features["rsi_14"].iloc[14:].tolist() == [50.0] * 16
    assert features["atr_14"].iloc[14:].tolist() == [0.0] * 16


def test_look_ahead_cuts_go_to_every_symbols_first_signal_before_any_second() -> None:
    candidates = {"A": ["a1", "a2", "a3"], "B": ["b1"], "C": ["c1", "c2"]}
    assert plan_cuts(candidates, 4) == {"A": ["a1", "a2"], "B": ["b1"], "C": ["c1"]}
    assert plan_cuts(candidates, 2) == {"A": ["a1"], "B": ["b1"]}  # spread over the symbols
    assert plan_cuts(candidates, 0) == {}
    frame = pd.DataFrame({"date": pd.bdate_range("2024-01-01", periods=10)})
    instances = [{"date": str(d.date())} for d in frame["date"]] + [{"date": "2024-01-02", "signal": False}]
    # Signals on all 10 days; the last bar has no future to remove. First, last, then the middle.
    days = [d.strftime("%m-%d") for d in cut_dates(frame, instances, 3)]
    assert days == ["01-01", "01-11", "01-05"]
