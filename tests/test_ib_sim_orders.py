"""The IB Gateway simulator's orders, as the real ib_async client sees them."""

from __future__ import annotations

import ib_async
import pytest

from actors.ib import GatewaySimulator, demo_scenario

pytestmark = pytest.mark.timeout(60)


def _connected(gateway, client_id: int) -> ib_async.IB:
    ib = ib_async.IB()
    ib.connect("127.0.0.1", gateway.port, clientId=client_id, timeout=10)
    return ib


def test_an_order_fills_at_the_mark_and_another_client_sees_the_execution():
    with GatewaySimulator(scenario=demo_scenario(holdings=2)) as gateway:
        ib = _connected(gateway, 5)
        try:
            trade = ib.placeOrder(ib_async.Stock("SYM1", "SMART", "USD"), ib_async.MarketOrder("BUY", 3))
            ib.sleep(0.5)
            assert trade.orderStatus.status == "Filled"
            assert [(f.execution.shares, f.execution.price) for f in trade.fills] == [(3.0, 51.0)]
            other = _connected(gateway, 6)
            fills = other.reqExecutions(ib_async.ExecutionFilter(acctCode="DU1"))
            mine = [f for f in fills if f.execution.orderId == trade.order.orderId]
            assert mine and mine[0].execution.permId == trade.orderStatus.permId
            other.disconnect()
        finally:
            ib.disconnect()
        assert gateway.request_counts["place_order"] == 1


def test_a_held_order_is_cancelled_and_a_rejected_one_is_inactive():
    scenario = demo_scenario(holdings=1)
    scenario.order_fills = "hold"
    with GatewaySimulator(scenario=scenario) as gateway:
        ib = _connected(gateway, 5)
        try:
            trade = ib.placeOrder(ib_async.Stock("SYM0", "SMART", "USD"), ib_async.LimitOrder("BUY", 1, 49.0))
            ib.sleep(0.3)
            assert trade.orderStatus.status == "Submitted" and not trade.fills
            ib.cancelOrder(trade.order)
            ib.sleep(0.3)
            assert trade.orderStatus.status == "Cancelled"
            scenario.order_fills = "reject"
            rejected = ib.placeOrder(ib_async.Stock("SYM0", "SMART", "USD"), ib_async.MarketOrder("SELL", 1))
            ib.sleep(0.3)
            assert rejected.orderStatus.status == "Inactive"
            assert any(entry.errorCode == 201 for entry in rejected.log)
        finally:
            ib.disconnect()
