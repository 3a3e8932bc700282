"""``StrategyTasks`` in process, with the real Redis and a real Delta table: result documents and failures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import redis
from strategy_fixtures import synthetic_bars, write_market_bars

from actors.settings import Settings
from actors.strategies import StrategyFailed, build_strategy_tasks

ARGS = {
    "strategy_code": "def s(df):\n    return []",
    "symbols": ["AAA"],
    "start_date": "2023-01-01",
    "end_date": "2023-12-31",
}


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        namespace=namespace,
        audit_enabled=False,
        delta_root=tmp_path / "delta",
        strategy_result_prefix=f"{namespace}-task_result:",
        strategy_result_ttl_s=120,
    )


def test_invalid_arguments_are_an_error_result_without_running_anything(
    settings: Settings, redis_url: str
) -> None:
    tasks = build_strategy_tasks(settings)
    with pytest.raises(StrategyFailed, match=r"Invalid task: args\.symbols: Field required"):
        tasks.backtest("t-invalid", {k: v for k, v in ARGS.items() if k != "symbols"})
    raw = redis.Redis.from_url(redis_url).get(f"{settings.strategy_result_prefix}t-invalid")
    document = json.loads(raw)
    assert set(document) == {"status", "data", "updated_at"}
    assert document["status"] == "error"
    assert document["data"]["error"].startswith("Invalid task: args.symbols")
    assert document["data"]["task_type"] == "backtest"
    assert 0 < redis.Redis.from_url(redis_url).ttl(f"{settings.strategy_result_prefix}t-invalid") <= 120


def test_missing_table_is_a_clear_error(settings: Settings) -> None:
    tasks = build_strategy_tasks(settings)
    with pytest.raises(StrategyFailed, match=r"no market data: the Delta table .* does not exist"):
        tasks.screening("t-notable", {"strategy_code": ARGS["strategy_code"], "universe": ["AAA"]})
    assert tasks.results.get("t-notable").data["error"].startswith("no market data")


def test_bars_without_a_required_column_are_a_clear_error(settings: Settings) -> None:
    write_market_bars(
        settings.delta_root, synthetic_bars(["AAA"], days=20).drop(columns=["volume", "volume_ratio"])
    )
    with pytest.raises(StrategyFailed, match=r"the market bars lack the column\(s\) volume"):
        build_strategy_tasks(settings).backtest("t-columns", ARGS)


def test_an_internal_failure_is_recorded_and_raised_for_a_retry(settings: Settings) -> None:
    def broken_disk(symbols, start, end, *, interval):
        raise OSError(5, "Input/output error")

    tasks = build_strategy_tasks(settings)
    tasks.load_bars = broken_disk
    with pytest.raises(OSError):
        tasks.backtest("t-internal", ARGS)
    result = tasks.results.get("t-internal")
    assert result.status == "error"
    assert result.data["error"] == "Internal error: OSError: [Errno 5] Input/output error"


def test_a_completed_backtest_replaces_the_running_document(settings: Settings) -> None:
    write_market_bars(settings.delta_root, synthetic_bars(["AAA"], days=40))
    tasks = build_strategy_tasks(settings)
    code = "def s(df):\n    return [{'date': str(df['date'].iloc[0].date()), 'message': 'first'}]"
    data = tasks.backtest("t-done", {**ARGS, "strategy_code": code, "holding_period": 2, "entry": "close"})
    stored = tasks.results.get("t-done")
    assert stored.status == "completed" and stored.data == json.loads(json.dumps(data))
    assert data["instances"] == [{"ticker": "AAA", "date": "2023-01-02", "message": "first"}]
    assert data["performance_metrics"]["number_of_trades"] == 1
    assert (
        data["performance_metrics"]["holding_period"] == 2 and data["performance_metrics"]["entry"] == "close"
    )
    tasks.sandbox.close()


#: Signals on days whose NEXT close is higher: it reads tomorrow.
PEEKING = """
def peek(df):
    up = df["close"].shift(-1) > df["close"]
    return [{"date": str(d.date()), "signal": bool(u)} for d, u in zip(df["date"], up)]
"""

#: The same rule without the look-ahead: today's close above yesterday's.
CAUSAL = PEEKING.replace('df["close"].shift(-1) > df["close"]', 'df["close"] > df["close"].shift(1)')


def test_a_strategy_that_peeks_one_bar_ahead_is_rejected_naming_the_first_date(settings: Settings) -> None:
    bars = synthetic_bars(["AAA"], days=40)
    write_market_bars(settings.delta_root, bars)
    tasks = build_strategy_tasks(settings)
    close, dates = bars["close"].tolist(), bars["date"].dt.strftime("%Y-%m-%d").tolist()
    # Its first true signal needs the next bar: without it, that signal is false.
    first = next(dates[i] for i in range(len(close) - 1) if close[i + 1] > close[i])
    message = (
        f"Strategy error: look-ahead detected: the signal of AAA on {first} is true with the bars "
        f"after {first} and false without them"
    )
    with pytest.raises(StrategyFailed, match=message):
        tasks.backtest("t-peek", {**ARGS, "strategy_code": PEEKING})
    assert tasks.results.get("t-peek").data["error"].startswith(message)
    # Above the mean of the whole window: a past signal depends on every later close.
    whole_window = (
        "def s(df):\n    return [{'date': str(d)} for d in df['date'][df['close'] > df['close'].mean()]]"
    )
    with pytest.raises(StrategyFailed, match="look-ahead detected"):
        tasks.backtest("t-mean", {**ARGS, "strategy_code": whole_window})

    data = tasks.backtest("t-causal", {**ARGS, "strategy_code": CAUSAL})
    up_days = sum(close[i] > close[i - 1] for i in range(1, len(close)))
    assert data["summary"]["positive_signals"] == up_days
    assert data["assumptions"]["entry"] == "next_open" and data["assumptions"]["lookahead_cuts"] == 24
    # Signals in the last 5 bars cannot be closed; every other one is a trade, all listed.
    assert (
        data["trades_total"]
        == data["trades_listed"]
        == len(data["trades"])
        == up_days - sum(close[i] > close[i - 1] for i in range(len(close) - 5, len(close)))
    )
    first_trade = data["trades"][0]
    day = dates.index(first_trade["signal_date"])
    assert first_trade["entry_price"] == pytest.approx(bars["open"].iloc[day + 1])
    assert first_trade["exit_price"] == pytest.approx(close[day + 5])
    tasks.sandbox.close()


def test_backtests_and_screenings_read_only_their_interval(settings: Settings) -> None:
    daily = synthetic_bars(["AAA"], days=12).drop(columns=["gap_pct", "volume_ratio"]).assign(interval="1d")
    # Hourly bars of the same days, at other prices: they must never enter a daily series.
    hourly = pd.concat(
        [
            daily.assign(date=daily["date"] + pd.Timedelta(hours=14 + h), close=daily["close"] * (2 + h))
            for h in range(7)
        ]
    ).assign(interval="1h", open=lambda f: f["close"])
    write_market_bars(settings.delta_root, pd.concat([daily, hourly], ignore_index=True))
    tasks = build_strategy_tasks(settings)
    first_bar = "def s(df):\n    return [{'date': str(df['date'].iloc[0])}]"
    args = {**ARGS, "strategy_code": first_bar, "holding_period": 2, "entry": "close"}
    data = tasks.backtest("t-daily", args)
    assert data["summary"]["data_shape"][0] == 12 and data["summary"]["interval"] == "1d"
    close = daily["close"].tolist()
    assert data["performance_metrics"]["total_return"] == pytest.approx(close[2] / close[0] - 1)

    data = tasks.backtest("t-hourly", {**args, "interval": "1h"})
    assert data["summary"]["data_shape"][0] == 7 * 12
    (trade,) = data["trades"]
    assert trade["signal_date"] == "2023-01-02T14:00:00" and trade["exit_date"] == "2023-01-02T16:00:00"
    assert trade["return"] == pytest.approx(close[0] * 4 / (close[0] * 2) - 1)

    ranked = tasks.screening("t-screen", {"strategy_code": first_bar, "universe": ["AAA"], "interval": "1h"})
    assert ranked["ranked_results"][0]["date"] == "2023-01-02T14:00:00"
    tasks.sandbox.close()


def test_screening_ranks_only_symbols_whose_latest_signal_is_true(settings: Settings) -> None:
    write_market_bars(settings.delta_root, synthetic_bars(["AAA", "BBB", "CCC"], days=20))
    code = (
        "def s(df):\n"
        "    ticker = df['ticker'].iloc[0]\n"
        "    score = {'AAA': 3.0, 'BBB': 9.0, 'CCC': 1.0}[ticker]\n"
        "    return [{'date': str(df['date'].iloc[-1].date()), 'score': score, 'signal': ticker != 'BBB'}]"
    )
    tasks = build_strategy_tasks(settings)
    args = {"strategy_code": code, "universe": ["AAA", "BBB", "CCC"]}
    ranked = tasks.screening("t-rank", args)["ranked_results"]
    assert [(r["rank"], r["ticker"]) for r in ranked] == [(1, "AAA"), (2, "CCC")]  # BBB's signal is false
    ranked = tasks.screening("t-rank-all", {**args, "include_false_signals": True})["ranked_results"]
    assert [r["ticker"] for r in ranked] == ["BBB", "AAA", "CCC"]
    tasks.sandbox.close()
