"""The data_fetcher queue end to end: a real dramatiq worker process, real Redis, Delta in a temp dir."""

from __future__ import annotations

import time

import pytest
from data_workers import Client, data_settings, kill_hard, worker
from dramatiq.results import ResultFailure

from actors.market_data.tables import MARKET_BARS, read_table, table_version
from storage import create_db_engine, get_task

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def client(redis_url, namespace, tmp_path):
    settings = data_settings(redis_url, namespace, tmp_path)
    with worker(settings, "data_fetcher"):
        yield Client(settings, "data_fetcher")


def test_fetch_twice_extend_and_per_symbol_errors_through_a_worker(client):
    first = client.call("fetch_market_data", ["AAPL", "MSFT"], "2024-01-01", "2024-03-29")
    assert first["changed"] and first["inserted"] == 2 * 65 and first["errors"] == {}

    again = client.call("fetch_market_data", ["AAPL", "MSFT"], "2024-01-01", "2024-03-29")
    assert not again["changed"] and (again["inserted"], again["updated"]) == (0, 0)
    assert again["version"] == first["version"]

    extended = client.call("fetch_market_data", ["AAPL", "NOPE"], "2024-03-01", "2024-04-30")
    assert extended["inserted"] == 22 and extended["symbols"]["AAPL"]["new_bars"] == 22
    assert "NOPE: not in the synthetic universe" in extended["errors"]["NOPE"]

    # Two batches at once on the worker's two threads: concurrent MERGEs into one table both land.
    batches = [
        client.send("fetch_market_data", [symbol], "2023-01-01", "2023-12-31") for symbol in ("GOOG", "MSFT")
    ]
    assert [client.result(message)["inserted"] for message in batches] == [260, 260]

    news = client.call("fetch_news", ["AAPL"], "2024-01-01", "2024-03-31")
    assert news["inserted"] > 0 and news["errors"] == {}
    stats = client.call("update_24h_stats")
    assert stats["series"] == 3 and stats["stats"]["AAPL/1d"]["as_of"].startswith("2024-04-30")

    cleaned = client.call("cleanup_data", "2024-01-01")
    assert cleaned["deleted"]["market_bars"] == 2 * 260  # GOOG's and MSFT's 2023
    optimized = client.call("optimize_tables")
    assert optimized["market_bars"]["files_removed"] > 0


def test_a_bad_batch_fails_at_once_with_the_reason(client):
    with pytest.raises(ResultFailure, match="interval '2d' is unknown"):
        client.call("fetch_market_data", ["AAPL"], "2024-01-01", "2024-02-01", "2d")
    with pytest.raises(ResultFailure, match="start='soon' is not an ISO date"):
        client.call("fetch_market_data", ["AAPL"], "soon", "2024-02-01")
    with pytest.raises(ResultFailure, match="older_than=-3 days must not be negative"):
        client.call("cleanup_data", -3)


def test_a_worker_killed_mid_fetch_loses_nothing(redis_url, namespace, tmp_path):
    """kill -9 during a fetch: the message is redelivered to the next worker and the table ends complete."""
    settings = data_settings(
        redis_url,
        namespace,
        tmp_path,
        data_synthetic_symbols="",
        heartbeat_timeout_ms=2_000,
        maintenance_chance=1_000_000,
    )
    symbols = [f"K{index:03d}" for index in range(150)]
    engine = create_db_engine(settings.database_url)
    with worker(settings, "data_fetcher") as first:
        client = Client(settings, "data_fetcher")
        message = client.send("fetch_market_data", symbols, "2023-01-01", "2024-12-31")
        deadline = time.monotonic() + 60
        while (task := get_task(engine, message.message_id)) is None or task.status != "running":
            assert time.monotonic() < deadline, "the fetch never started"
            time.sleep(0.05)
        kill_hard(first)
    assert table_version(settings.delta_root, MARKET_BARS) is None  # cut before its commit
    with worker(settings, "data_fetcher"):
        result = client.result(message)
    assert result["errors"] == {} and len(result["symbols"]) == 150
    bars = read_table(settings.delta_root, MARKET_BARS).to_pandas()
    assert len(bars) == 150 * 522 and not bars.duplicated(["symbol", "timestamp"]).any()
    assert get_task(engine, message.message_id).status == "completed"
    engine.dispose()
