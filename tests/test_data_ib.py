"""IB historical bars through ib_async against the IB Gateway simulator (from the ib area).

The simulator tests skip until ``actors.ib.gateway_sim`` is on the branch (it lands with the
ib area's merge); the others run everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from actors.market_data import ingest
from actors.market_data.ib import IBProvider, duration_of
from actors.market_data.tables import MARKET_BARS, read_table

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sim():
    return pytest.importorskip("actors.ib.gateway_sim")


def daily_bars(sim, days: list[str], start: float) -> list:
    return [
        sim.SimBar(
            date=day,
            open=start + i,
            high=start + i + 2,
            low=start + i - 1,
            close=start + i + 1,
            volume=1000 + i,
        )
        for i, day in enumerate(days)
    ]


@pytest.fixture
def gateway(sim):
    scenario = sim.Scenario(
        historical_bars={
            "AAPL": daily_bars(sim, ["20240102", "20240103", "20240104", "20240105", "20240108"], 180.0),
            "MSFT": daily_bars(sim, ["20240102", "20240103"], 370.0),
        }
    )
    with sim.GatewaySimulator(scenario=scenario) as gateway:
        yield gateway


def test_ib_bars_are_fetched_upserted_and_unknown_symbols_reported(tmp_path, gateway):
    provider = IBProvider(host="127.0.0.1", port=gateway.port, client_id=31)
    try:
        arguments = {
            "symbols": ["AAPL", "MSFT", "NOPE"],
            "start": datetime(2024, 1, 1, tzinfo=UTC),
            "end": datetime(2024, 1, 6, tzinfo=UTC),
            "interval": "1d",
            "max_commit_retries": 5,
        }
        result = ingest.fetch_bars(provider, tmp_path, **arguments)
        again = ingest.fetch_bars(provider, tmp_path, **arguments)
    finally:
        provider.close()
    assert result.symbols["AAPL"]["bars"] == 4  # the bar of Jan 8 is after the range
    assert result.symbols["MSFT"]["bars"] == 2
    assert "NOPE: IB has no data for the range (error 162" in result.errors["NOPE"]
    assert not again.changed
    assert gateway.request_counts["historical_data"] == 6
    bars = read_table(tmp_path, MARKET_BARS).to_pandas().sort_values(["symbol", "timestamp"])
    aapl = bars[bars["symbol"] == "AAPL"]
    assert aapl["close"].tolist() == [181.0, 182.0, 183.0, 184.0]
    assert aapl["timestamp"].iat[0] == datetime(2024, 1, 2, tzinfo=UTC) and set(bars["source"]) == {"ib"}


def test_ib_error_200_is_an_unknown_symbol(tmp_path, gateway):
    gateway.scenario.errors["historical_data"] = (
        200,
        "No security definition has been found for the request",
    )
    provider = IBProvider(host="127.0.0.1", port=gateway.port, client_id=32)
    try:
        result = ingest.fetch_bars(
            provider,
            tmp_path,
            symbols=["AAPL"],
            start=datetime(2024, 1, 1, tzinfo=UTC),
            end=datetime(2024, 1, 6, tzinfo=UTC),
            interval="1d",
            max_commit_retries=5,
        )
    finally:
        provider.close()
    assert "AAPL: IB does not know it (error 200" in result.errors["AAPL"]


def test_gateway_down_fails_the_batch_with_what_to_do(tmp_path):
    provider = IBProvider(host="127.0.0.1", port=1, client_id=33)
    with pytest.raises(ConnectionError, match="start TWS / IB Gateway"):
        ingest.fetch_bars(
            provider,
            tmp_path,
            symbols=["AAPL"],
            start=datetime(2024, 1, 1, tzinfo=UTC),
            end=datetime(2024, 1, 6, tzinfo=UTC),
            interval="1d",
            max_commit_retries=5,
        )
    provider.close()


def test_duration_strings():
    assert duration_of(datetime(2024, 1, 1), datetime(2024, 1, 6)) == "5 D"
    assert duration_of(datetime(2022, 1, 1), datetime(2024, 1, 6)) == "3 Y"
