"""``StrategyTasks`` in process, with the real Redis and a real Delta table: result documents and failures."""

from __future__ import annotations

import json
from pathlib import Path

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
    def broken_disk(symbols, start, end):
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
