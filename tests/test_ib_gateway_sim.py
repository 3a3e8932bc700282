"""The gateway simulator, driven by the real ib_async client over TCP."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import ib_async
import pytest

from actors.ib import GatewaySimulator, Scenario, SimBar, SimExecution, SimPosition

pytestmark = pytest.mark.timeout(30)


def _scenario(**overrides) -> Scenario:
    values = dict(
        accounts=["DU1", "DU2"],
        positions=[
            SimPosition(account="DU1", conid=265598, symbol="AAPL", position=100, avg_cost=150.0,
                        market_price=190.5),
            SimPosition(account="DU2", conid=272093, symbol="MSFT", position=-20, avg_cost=400.0),
        ],
        account_values={"DU1": {"NetLiquidation": 120000.5, "AccountType": "INDIVIDUAL"}},
        historical_bars={
            "AAPL": [
                SimBar(date="20261119", open=180, high=185, low=179, close=184, volume=1000, bar_count=7),
                SimBar(date="20261120", open=184, high=191, low=183.5, close=190.5, volume=1500),
            ]
        },
        executions=[
            SimExecution(exec_id="0001.01", account="DU1", conid=265598, symbol="AAPL", side="SLD",
                         shares=10, price=189.0, time="20261123 14:30:00", realized_pnl=390.0,
                         commission=1.25),
        ],
    )  # fmt: skip
    values.update(overrides)
    return Scenario(**values)


@pytest.fixture
def gateway():
    with GatewaySimulator(scenario=_scenario()) as simulator:
        yield simulator


def _connect(port: int, **options) -> ib_async.IB:
    ib = ib_async.IB()
    ib.connect("127.0.0.1", port, clientId=options.pop("clientId", 11), timeout=5, **options)
    return ib


def test_connect_reports_accounts_and_positions(gateway):
    ib = _connect(gateway.port, readonly=True)
    try:
        assert ib.managedAccounts() == ["DU1", "DU2"]
        positions = {p.contract.conId: p for p in ib.reqPositions()}
        assert set(positions) == {265598, 272093}
        aapl, msft = positions[265598], positions[272093]
        assert (aapl.account, aapl.contract.symbol, aapl.position, aapl.avgCost) == ("DU1", "AAPL", 100, 150)
        assert (msft.account, msft.position, msft.avgCost) == ("DU2", -20, 400)
        assert aapl.contract.secType == "STK" and aapl.contract.currency == "USD"
        # connect issued its own reqPositions; our call is the second one
        assert gateway.request_counts["positions"] == 2
    finally:
        ib.disconnect()


def test_startup_requests_all_answered_without_timeouts(gateway):
    ib = ib_async.IB()
    ib.connect("127.0.0.1", gateway.port, clientId=12, timeout=5, readonly=False, raiseSyncErrors=True)
    try:
        assert ib.isConnected()
        assert gateway.request_counts["open_orders"] == 1
        assert gateway.request_counts["completed_orders"] == 1
        assert gateway.request_counts["executions"] == 1
    finally:
        ib.disconnect()


def test_portfolio_prices_and_account_summary(gateway):
    ib = _connect(gateway.port, readonly=True, account="DU1")
    try:
        (item,) = ib.portfolio("DU1")
        assert item.contract.conId == 265598
        assert (item.marketPrice, item.marketValue, item.averageCost) == (190.5, 19050.0, 150.0)
        assert item.unrealizedPNL == pytest.approx(4050.0)
        summary = {v.tag: v.value for v in ib.accountSummary("DU1")}
        assert summary == {"NetLiquidation": "120000.5", "AccountType": "INDIVIDUAL"}
    finally:
        ib.disconnect()


def test_historical_bars(gateway):
    ib = _connect(gateway.port, readonly=True)
    try:
        bars = ib.reqHistoricalData(
            ib_async.Stock("AAPL", "SMART", "USD"), "", "2 D", "1 day", "TRADES", True
        )
        assert [(str(b.date), b.open, b.high, b.low, b.close, b.volume, b.barCount) for b in bars] == [
            ("2026-11-19", 180, 185, 179, 184, 1000, 7),
            ("2026-11-20", 184, 191, 183.5, 190.5, 1500, 0),
        ]
        unknown = ib.reqHistoricalData(
            ib_async.Stock("ZZZ", "SMART", "USD"), "", "2 D", "1 day", "TRADES", True
        )
        assert list(unknown) == []
    finally:
        ib.disconnect()


def test_executions_with_commission_reports(gateway):
    ib = _connect(gateway.port, readonly=True)
    try:
        ib.reqExecutions()
        (fill,) = ib.fills()
        assert fill.execution.execId == "0001.01"
        assert (fill.execution.side, fill.execution.shares, fill.execution.price) == ("SLD", 10, 189.0)
        assert fill.execution.time.isoformat() == "2026-11-23T14:30:00+00:00"
        assert (fill.commissionReport.commission, fill.commissionReport.realizedPNL) == (1.25, 390.0)
    finally:
        ib.disconnect()


def test_pnl_subscriptions_report_daily_pnl():
    scenario = _scenario(daily_pnl={"DU2": -75.5})
    scenario.positions[0].daily_pnl = 210.0
    with GatewaySimulator(scenario=scenario) as simulator:
        ib = _connect(simulator.port, readonly=True)
        try:
            account = ib.reqPnL("DU1")
            single = ib.reqPnLSingle("DU1", "", 265598)
            other = ib.reqPnL("DU2")
            ib.sleep(0.3)
            # DU1: its one position's daily P&L; 100 x (190.5 - 150) unrealized; the SLD fill's 390.
            assert (account.dailyPnL, account.unrealizedPnL) == (210.0, 4050.0)
            assert account.realizedPnL == 390.0
            figures = (single.position, single.dailyPnL, single.unrealizedPnL, single.value)
            assert figures == (100, 210.0, 4050.0, 19050.0)
            assert other.dailyPnL == -75.5  # set for the account, not from its positions
            ib.cancelPnL("DU1")
            ib.cancelPnLSingle("DU1", "", 265598)
            ib.sleep(0.1)
            assert (simulator.request_counts["pnl"], simulator.request_counts["pnl_single"]) == (2, 1)
        finally:
            ib.disconnect()


def test_market_data_snapshot_uses_the_mark(gateway):
    ib = _connect(gateway.port, readonly=True)
    try:
        ticker = ib.reqMktData(ib_async.Contract(conId=265598, exchange="SMART"), snapshot=True)
        ib.sleep(0.3)
        assert ticker.last == 190.5
    finally:
        ib.disconnect()


def test_injected_error_fails_the_request():
    scenario = _scenario(errors={"historical_data": (162, "pacing violation")})
    with GatewaySimulator(scenario=scenario) as gateway:
        ib = _connect(gateway.port, readonly=True)
        try:
            ib.RaiseRequestErrors = True
            with pytest.raises(ib_async.RequestError, match="pacing violation"):
                ib.reqHistoricalData(
                    ib_async.Stock("AAPL", "SMART", "USD"), "", "2 D", "1 day", "TRADES", True
                )
        finally:
            ib.disconnect()


def test_disconnect_on_nth_positions_request_breaks_the_call():
    with GatewaySimulator(scenario=_scenario(disconnect_on={"positions": 2})) as gateway:
        ib = _connect(gateway.port, readonly=True)

        async def positions():
            return await asyncio.wait_for(ib.reqPositionsAsync(), 5)

        with pytest.raises(ConnectionError):
            ib.run(positions())
        assert not ib.isConnected()
        # the next connection works again
        ib = _connect(gateway.port, readonly=True, clientId=13)
        assert len(ib.reqPositions()) == 2
        ib.disconnect()


def test_latency_delays_answers():
    with GatewaySimulator(scenario=_scenario(latency_ms=150)) as gateway:
        ib = _connect(gateway.port, readonly=True)
        try:
            started = asyncio.get_event_loop().time()
            ib.reqPositions()
            assert asyncio.get_event_loop().time() - started >= 0.15
        finally:
            ib.disconnect()


def test_refused_connections_fail_connect():
    with GatewaySimulator(scenario=_scenario(refuse_connections=True)) as gateway:
        ib = ib_async.IB()
        with pytest.raises((ConnectionError, asyncio.TimeoutError, TimeoutError)):
            ib.connect("127.0.0.1", gateway.port, clientId=14, timeout=2)
        assert gateway.connection_count == 1


def test_client_id_in_use_is_rejected(gateway):
    first = _connect(gateway.port, readonly=True, clientId=21)
    try:
        second = ib_async.IB()
        with pytest.raises((ConnectionError, asyncio.TimeoutError, TimeoutError)):
            second.connect("127.0.0.1", gateway.port, clientId=21, timeout=2)
        assert first.isConnected()
    finally:
        first.disconnect()


def test_drop_connections_cuts_clients(gateway):
    ib = _connect(gateway.port, readonly=True)
    gateway.drop_connections()
    with pytest.raises(ConnectionError, match="Socket disconnect"):
        ib.sleep(2)
    assert not ib.isConnected()


def test_bad_handshake_is_closed(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"HELLO" + struct.pack(">I", 3) + b"abc")
        assert sock.recv(100) == b""


def test_scenario_from_file_and_errors(tmp_path):
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(_scenario().to_dict()))
    loaded = Scenario.from_file(path)
    assert loaded == _scenario()
    with pytest.raises(ValueError, match=r"positions\.0\.position: Input should be a valid number"):
        Scenario.from_dict({"positions": [{"account": "DU1", "conid": 1, "symbol": "X", "position": "many",
                                          "avg_cost": 1}]})  # fmt: skip
    with pytest.raises(ValueError, match="not in accounts"):
        Scenario.from_dict({"accounts": ["A"], "positions": [
            {"account": "B", "conid": 1, "symbol": "X", "position": 1, "avg_cost": 1}]})  # fmt: skip
    with pytest.raises(ValueError, match="latency: Unexpected keyword"):
        Scenario.from_dict({"latency": 5})
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        Scenario.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="cannot read scenario"):
        Scenario.from_file(tmp_path / "missing.json")


def test_bars_by_conid_and_disconnect_after_n_requests():
    bars = [SimBar(date="20261120 09:30:00 UTC", open=1, high=2, low=0.5, close=1.5, volume=10)]
    scenario = _scenario(historical_bars={"265598": bars}, disconnect_after_requests=6)
    with GatewaySimulator(scenario=scenario) as gateway:
        ib = _connect(gateway.port, readonly=True, account="DU1")  # connect itself sends 5 requests
        contract = ib_async.Contract(conId=265598, exchange="SMART")
        (bar,) = ib.reqHistoricalData(contract, "", "1 D", "1 min", "TRADES", True)
        assert bar.date.isoformat() == "2026-11-20T09:30:00+00:00" and bar.close == 1.5
        assert ib.isConnected()
        with pytest.raises(ConnectionError):
            ib.reqHistoricalData(contract, "", "1 D", "1 min", "TRADES", True)  # the 7th request
        assert not ib.isConnected()
