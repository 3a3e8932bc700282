"""The IB Gateway simulator's orders, as the real ib_async client sees them."""

from __future__ import annotations

import time

import ib_async
import pytest

from actors.ib import GatewaySimulator, demo_scenario

pytestmark = pytest.mark.timeout(60)


def _connected(gateway, client_id: int) -> ib_async.IB:
    ib = ib_async.IB()
    ib.connect("127.0.0.1", gateway.port, clientId=client_id, timeout=10)
    return ib


def _until(ib: ib_async.IB, *trades: ib_async.Trade, status: str, timeout: float = 10.0) -> None:
    """Let ``ib`` process the gateway's messages until every trade has ``status`` (orders are
    sent without an answer; on a loaded machine a fixed pause was too short)."""
    deadline = time.monotonic() + timeout
    while any(trade.orderStatus.status != status for trade in trades):
        assert time.monotonic() < deadline, [trade.orderStatus.status for trade in trades]
        ib.sleep(0.05)


def test_an_order_fills_at_the_mark_and_another_client_sees_the_execution():
    with GatewaySimulator(scenario=demo_scenario(holdings=2)) as gateway:
        ib = _connected(gateway, 5)
        try:
            trade = ib.placeOrder(ib_async.Stock("SYM1", "SMART", "USD"), ib_async.MarketOrder("BUY", 3))
            _until(ib, trade, status="Filled")
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
            _until(ib, trade, status="Submitted")
            ib.sleep(0.2)  # a held order stays unfilled
            assert trade.orderStatus.status == "Submitted" and not trade.fills
            ib.cancelOrder(trade.order)
            _until(ib, trade, status="Cancelled")
            scenario.order_fills = "reject"
            rejected = ib.placeOrder(ib_async.Stock("SYM0", "SMART", "USD"), ib_async.MarketOrder("SELL", 1))
            _until(ib, rejected, status="Inactive")
            assert any(entry.errorCode == 201 for entry in rejected.log)
        finally:
            ib.disconnect()


def test_open_and_completed_orders_are_listed_with_their_order_ref_to_any_client():
    scenario = demo_scenario(holdings=2)
    scenario.order_fills = "hold"
    with GatewaySimulator(scenario=scenario) as gateway:
        ib = _connected(gateway, 5)
        other = _connected(gateway, 6)
        try:
            held = ib_async.LimitOrder("BUY", 3, 49.5, account="DU1", orderRef="run:place:step:1")
            # the gateway must take the first order while orders are held, before fills resume
            _until(ib, ib.placeOrder(ib_async.Stock("SYM1", "SMART", "USD"), held), status="Submitted")
            scenario.order_fills = "fill"
            filled = ib_async.MarketOrder("SELL", 2, account="DU1", orderRef="run:place:step:2")
            _until(ib, ib.placeOrder(ib_async.Stock("SYM0", "SMART", "USD"), filled), status="Filled")
            (working,) = other.reqAllOpenOrders()
            assert other.reqOpenOrders() == []  # reqOpenOrders: this client's orders only
            (done,) = other.reqCompletedOrders(apiOnly=True)
        finally:
            other.disconnect()
            ib.disconnect()
    order, status = working.order, working.orderStatus
    assert (order.orderRef, order.clientId, order.orderId, order.permId) == (
        "run:place:step:1",
        5,
        held.orderId,
        900001,
    )
    assert (working.contract.symbol, order.action, order.totalQuantity, order.lmtPrice, order.account) == (
        "SYM1", "BUY", 3.0, 49.5, "DU1",
    )  # fmt: skip
    assert (status.status, status.filled, status.remaining) == ("Submitted", 0.0, 3.0)
    order = done.order
    assert (order.orderRef, order.permId, order.filledQuantity, done.orderStatus.status) == (
        "run:place:step:2", 900002, 2.0, "Filled",
    )  # fmt: skip
    assert (done.contract.symbol, order.action, order.orderType) == ("SYM0", "SELL", "MKT")


def test_a_delayed_ack_leaves_the_order_accepted_and_filled_at_the_gateway():
    scenario = demo_scenario(holdings=1)
    scenario.order_ack_delay_ms = 600
    with GatewaySimulator(scenario=scenario) as gateway:
        ib = _connected(gateway, 5)
        try:
            trade = ib.placeOrder(ib_async.Stock("SYM0", "SMART", "USD"), ib_async.MarketOrder("BUY", 1))
            deadline = time.monotonic() + 10
            while [o.status for o in gateway.orders.orders.values()] != ["Filled"]:  # done there ...
                assert time.monotonic() < deadline, "the gateway never filled the order"
                ib.sleep(0.02)
            assert trade.orderStatus.status == "PendingSubmit"  # ... with no answer for 600 ms yet
            _until(ib, trade, status="Filled")
        finally:
            ib.disconnect()
