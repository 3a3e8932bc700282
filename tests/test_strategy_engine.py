"""The backtest engine and the handling of a strategy's instances, on data small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from strategy_fixtures import reference_backtest, synthetic_bars

from actors.market_data.bars import normalise_bars
from actors.strategies import (
    BacktestConfig,
    EntryRule,
    StrategyFailed,
    backtest,
    instance_records,
    instances_frame,
    rank,
)

DAYS = pd.bdate_range("2024-01-01", periods=6)


def _bars() -> pd.DataFrame:
    aaa = {"open": [10, 10, 11, 12, 12, 13], "close": [10, 11, 12, 12, 13, 14]}
    bbb = {"open": [20, 20, 20, 19, 18, 18], "close": [20, 20, 19, 18, 18, 18]}
    frames = [
        pd.DataFrame({"ticker": t, "date": DAYS, **prices}) for t, prices in (("AAA", aaa), ("BBB", bbb))
    ]
    return pd.concat(frames, ignore_index=True).astype({"open": float, "close": float})


def _signals(*rows: tuple[str, int, bool]) -> pd.DataFrame:
    return pd.DataFrame(
        {"ticker": [r[0] for r in rows], "date": [DAYS[r[1]] for r in rows], "signal": [r[2] for r in rows]}
    )


def test_next_open_backtest_matches_the_hand_computed_case() -> None:
    # AAA: in at open[2]=11, out at close[3]=12 (+1/11); BBB: in at 20, out at 18 (-10 %).
    # A signal on AAA day 4 cannot be closed 2 bars later; a false signal is no trade.
    signals = _signals(("AAA", 1, True), ("BBB", 1, True), ("AAA", 4, True), ("BBB", 3, False))
    outcome = backtest(_bars(), signals, BacktestConfig(holding_period=2, entry=EntryRule.NEXT_OPEN))

    day2 = ((12 / 11 - 1) + (19 / 20 - 1)) / 2
    day3 = ((12 / 12 - 1) + (18 / 19 - 1)) / 2
    daily = [0, 0, day2, day3, 0, 0]
    assert outcome.daily_returns.tolist() == pytest.approx(daily)
    metrics = outcome.metrics
    assert metrics["total_return"] == pytest.approx((1 + day2) * (1 + day3) - 1)
    assert metrics["win_rate"] == 0.5
    assert metrics["avg_return"] == pytest.approx(((12 / 11 - 1) + (18 / 20 - 1)) / 2)
    assert metrics["sharpe"] == pytest.approx(np.mean(daily) / np.std(daily, ddof=1) * math.sqrt(252))
    assert metrics["max_drawdown"] == pytest.approx((1 + day3) - 1)
    assert metrics["number_of_trades"] == 2
    assert metrics["exposure"] == pytest.approx(2 / 6)
    assert metrics["signals_unfilled"] == 1
    assert outcome.per_symbol == {
        "AAA": {
            "trades": 1,
            "win_rate": 1.0,
            "avg_return": pytest.approx(1 / 11),
            "total_return": pytest.approx(1 / 11),
        },
        "BBB": {
            "trades": 1,
            "win_rate": 0.0,
            "avg_return": pytest.approx(-0.1),
            "total_return": pytest.approx(-0.1),
        },
    }


def test_close_entry_holds_from_the_signal_close() -> None:
    outcome = backtest(
        _bars(), _signals(("AAA", 0, True)), BacktestConfig(holding_period=3, entry=EntryRule.CLOSE)
    )
    assert outcome.trades["entry_price"].tolist() == [10.0]
    assert outcome.metrics["avg_return"] == pytest.approx(0.2)
    assert outcome.daily_returns.tolist() == pytest.approx([0, 0.1, 12 / 11 - 1, 0, 0, 0])
    assert outcome.metrics["total_return"] == pytest.approx(0.2)


def test_no_signals_is_a_flat_backtest() -> None:
    outcome = backtest(_bars(), _signals(("AAA", 1, False)), BacktestConfig())
    assert outcome.metrics["number_of_trades"] == 0
    assert outcome.metrics["total_return"] == 0.0
    assert outcome.metrics["win_rate"] is None and outcome.metrics["sharpe"] is None
    assert outcome.per_symbol == {}


@pytest.mark.parametrize("entry", ["next_open", "close"])
def test_engine_agrees_with_a_per_row_loop_on_random_data(entry: str) -> None:
    bars = synthetic_bars(["A", "B", "C", "D"], days=120, seed=3)
    rng = np.random.default_rng(5)
    signals = bars.loc[rng.random(len(bars)) < 0.2, ["ticker", "date"]].assign(signal=True)
    signals.loc[signals.index[::7], "signal"] = False
    config = BacktestConfig(holding_period=4, entry=EntryRule(entry))
    metrics = backtest(bars, signals, config).metrics
    expected = reference_backtest(bars, signals, holding_period=4, entry=entry)
    assert expected["number_of_trades"] > 20  # overlapping positions are exercised
    assert metrics == {key: pytest.approx(value) for key, value in expected.items()}


def test_holding_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="holding_period must be at least 1"):
        BacktestConfig(holding_period=0)


def test_bars_read_with_other_column_names_get_the_derived_columns() -> None:
    raw = pd.DataFrame(
        {
            "symbol": ["B", "A", "A", "A"],
            "timestamp": pd.to_datetime(
                ["2024-01-02", "2024-01-03 21:00", "2024-01-02 21:00", "2024-01-04 21:00"],
                utc=True,
                format="ISO8601",
            ),
            "open": [5.0, 10.4, 10.0, 9.0],
            "high": 11.0,
            "low": 4.0,
            "close": [5.0, 10.0, 10.0, 9.5],
            "volume": [100.0, 300.0, 100.0, 200.0],
        }
    )
    bars = normalise_bars(raw, start=pd.Timestamp("2024-01-01").date(), end=pd.Timestamp("2024-01-04").date())
    assert list(bars.columns) == [
        "ticker",
        "date",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "gap_pct",
        "volume_ratio",
    ]
    assert bars["ticker"].tolist() == ["A", "A", "A", "B"]
    assert bars["date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-02",
    ]
    assert bars["gap_pct"].iloc[1:3].tolist() == pytest.approx([4.0, -10.0])
    assert bars["gap_pct"].iloc[[0, 3]].isna().all()
    assert bars["volume_ratio"].tolist() == pytest.approx([1.0, 300 / 200, 200 / 200, 1.0])


def test_instances_are_checked_with_the_ticker_and_position_named() -> None:
    good = {"AAA": [{"date": "2024-01-02", "message": "m"}], "BBB": [{"date": "2024-01-03", "signal": False}]}
    records = instance_records(good)
    frame = instances_frame(records, require_date=True)
    assert frame["ticker"].tolist() == ["AAA", "BBB"]
    assert frame["signal"].tolist() == [True, False]
    assert records[0] == {"ticker": "AAA", "date": "2024-01-02", "message": "m"}
    bad_cases = [
        ({"AAA": [{"date": "2024-01-02"}, {"message": "no date"}]}, "instance 2 of AAA has no 'date'"),
        ({"AAA": [{"date": "soon"}]}, "instance 1 of AAA has a 'date' that is not a date"),
        ({"AAA": [{"date": "2024-01-02", "signal": "yes"}]}, "'signal' that is not true or false"),
        ({"AAA": [{"date": "2024-01-02", "score": "high"}]}, "'score' that is not a number"),
    ]
    for instances, message in bad_cases:
        with pytest.raises(StrategyFailed, match=message):
            instances_frame(instance_records(instances), require_date=True)


def test_rank_takes_each_tickers_latest_instance_and_honours_limit() -> None:
    instances = instances_frame(
        instance_records(
            {
                "AAA": [
                    {"date": "2024-01-02", "score": 9.0},
                    {"date": "2024-01-05", "score": 2.0, "message": "latest"},
                ],
                "BBB": [{"date": "2024-01-04", "score": 5.0}],
                "CCC": [{"date": "2024-01-04", "signal": True}],
                "DDD": [{"date": "2024-01-04", "signal": False}],
            }
        ),
        require_date=False,
    )
    ranked = rank(instances, limit=3)
    assert [(r["ticker"], r["score"]) for r in ranked] == [("BBB", 5.0), ("AAA", 2.0), ("CCC", 1.0)]
    assert ranked[1]["message"] == "latest" and ranked[1]["date"] == "2024-01-05"
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert len(rank(instances, limit=10)) == 3  # DDD's latest signal is false
    assert len(rank(instances, limit=10, include_false=True)) == 4
    assert rank(instances_frame([], require_date=False), limit=5) == []


def test_load_bars_reads_partitioned_and_unpartitioned_tables(tmp_path) -> None:
    from deltalake import write_deltalake
    from strategy_fixtures import write_market_bars

    from actors.market_data.bars import MarketDataMissing, load_bars

    with pytest.raises(MarketDataMissing, match="does not exist"):
        load_bars(tmp_path, ["AAA"])
    bars = synthetic_bars(["AAA", "BBB", "CCC"], days=30, seed=2)
    write_market_bars(tmp_path / "partitioned", bars)
    first, last = pd.Timestamp(bars["date"].iloc[3]), pd.Timestamp(bars["date"].iloc[10])
    loaded = load_bars(tmp_path / "partitioned", ["CCC", "AAA"], first.date(), last.date())
    assert loaded["ticker"].unique().tolist() == ["AAA", "CCC"]
    expected = bars[bars["ticker"].isin(["AAA", "CCC"]) & bars["date"].between(first, last)]
    assert len(loaded) == len(expected) == 16
    assert loaded["close"].tolist() == pytest.approx(expected["close"].tolist())

    other = bars.rename(columns={"ticker": "symbol", "date": "timestamp"}).drop(
        columns=["gap_pct", "volume_ratio"]
    )
    write_deltalake(str(tmp_path / "plain" / "market_bars"), other)
    plain = load_bars(tmp_path / "plain", ["BBB"])
    assert len(plain) == 30 and set(plain["ticker"]) == {"BBB"}
    assert plain["gap_pct"].iloc[1:].tolist() == pytest.approx(
        bars[bars["ticker"] == "BBB"]["gap_pct"].iloc[1:].tolist()
    )
