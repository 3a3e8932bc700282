"""Orders on the IB Gateway simulator: ``placeOrder``, ``cancelOrder``, order status and fills.

Kept apart from :mod:`actors.ib.gateway_sim` (which routes messages 3 and 4 here) so the
simulator's other handlers change independently.  What an order does is the scenario's
``order_fills``:

- ``fill`` (default): ``Submitted``, then at once an execution (``execDetails`` with its
  commission report) and ``Filled`` at the limit price, else the mark of a position in the
  symbol, else ``order_default_price``;
- ``hold``: ``Submitted`` and nothing more until it is cancelled (``Cancelled``);
- ``reject``: TWS error 201 and ``Inactive``.

An order keeps its ``orderRef``.  ``reqOpenOrders`` (this client's) and ``reqAllOpenOrders``
(every client's) list the working orders (``openOrder`` and ``orderStatus`` each, then
``openOrderEnd``); ``reqCompletedOrders`` lists the filled, cancelled and rejected ones
(``completedOrder`` each, then ``completedOrdersEnd``), encoded as the real gateway does for
server version 178 (the layout ib_async 2.1.0's decoder reads).

Each fill is also added to the scenario's ``executions``, with its order id, so a later
``reqExecutions`` (from any connection) reports it: that is how a process other than the one
that placed the order sees the fill.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

#: Outgoing message ids (TWS API ``IN`` ids) of order status and executions.
ORDER_STATUS, ERR_MSG, EXECUTION_DATA, COMMISSION_REPORT = 3, 4, 11, 59

#: Outgoing message ids of the order listings.
OPEN_ORDER, OPEN_ORDER_END, COMPLETED_ORDER, COMPLETED_ORDERS_END = 5, 53, 101, 102

#: Statuses of a working order (listed by ``reqAllOpenOrders``; the others are completed).
OPEN_STATUSES = frozenset({"PreSubmitted", "Submitted"})

#: TWS error code of a rejected order, and of a cancel of an order that is not open.
ORDER_REJECTED, ORDER_NOT_CANCELLABLE = 201, 161

#: Values of ``Scenario.order_fills``.
ORDER_FILLS = ("fill", "hold", "reject")

#: Commission the simulator charges per fill, in the order's currency.
COMMISSION = 1.0

#: Positions of the fields of a ``placeOrder`` message (server version 178) the simulator reads.
ORDER_ID, CONID, SYMBOL, CURRENCY, ACTION, QUANTITY, ORDER_TYPE, LIMIT_PRICE = 1, 2, 3, 11, 16, 17, 18, 19
ACCOUNT, ORDER_REF = 23, 26


@dataclass
class SimOrder:
    """One order the simulator received (``order_id`` is the placing client's)."""

    client_id: int
    order_id: int
    perm_id: int
    account: str
    symbol: str
    action: str
    quantity: float
    order_type: str
    limit_price: float | None
    conid: int = 0
    currency: str = "USD"
    order_ref: str = ""
    status: str = "Submitted"
    filled: float = 0.0
    fill_price: float = 0.0
    completed_time: str = ""


class OrderDesk:
    """The simulator's order book; its handlers yield framed answers (``frame`` from the simulator).

    Parameters:
      scenario: The simulator's scenario (``order_fills``, ``order_default_price``, marks, and
        ``executions`` that fills are added to).
      frame: The simulator's message framing function.
      execution: The simulator's execution record type (``SimExecution``).
    """

    def __init__(self, *, scenario, frame, execution) -> None:
        self.scenario = scenario
        self.frame = frame
        self.execution = execution
        self.orders: dict[tuple[int, int], SimOrder] = {}
        self._perm_ids = itertools.count(900_001)
        self._exec_ids = itertools.count(1)

    def place(self, fields: list[str], client_id: int) -> Iterator[bytes]:
        order = SimOrder(
            client_id=client_id,
            order_id=int(fields[ORDER_ID]),
            perm_id=next(self._perm_ids),
            account=fields[ACCOUNT] or self.scenario.accounts[0],
            symbol=fields[SYMBOL],
            action=fields[ACTION],
            quantity=float(fields[QUANTITY] or 0),
            order_type=fields[ORDER_TYPE],
            limit_price=float(fields[LIMIT_PRICE]) if fields[LIMIT_PRICE] else None,
            conid=int(fields[CONID] or 0),
            currency=fields[CURRENCY] or "USD",
            order_ref=fields[ORDER_REF],
        )
        self.orders[(client_id, order.order_id)] = order
        mode = self.scenario.order_fills
        if mode == "reject":
            self._complete(order, "Inactive")
            text = "Order rejected by the simulator"
            yield self.frame(ERR_MSG, 2, order.order_id, ORDER_REJECTED, text, "")
            yield self._status(order)
            return
        yield self._status(order)
        if mode == "fill":
            yield from self._fill(order)

    def cancel(self, fields: list[str], client_id: int) -> Iterator[bytes]:
        order_id = int(fields[2])
        order = self.orders.get((client_id, order_id)) or next(
            (o for o in self.orders.values() if o.order_id == order_id), None
        )
        if order is None or order.status not in OPEN_STATUSES:
            text = f"Cannot cancel the order {order_id}: it is not open"
            yield self.frame(ERR_MSG, 2, order_id, ORDER_NOT_CANCELLABLE, text, "")
            return
        self._complete(order, "Cancelled")
        yield self._status(order)

    def open_orders(self, _fields: list[str], client_id: int, *, all_clients: bool) -> Iterator[bytes]:
        """``reqOpenOrders`` (``all_clients`` False: the orders of ``client_id``) or
        ``reqAllOpenOrders``: each working order, then the end."""
        for order in list(self.orders.values()):
            if order.status in OPEN_STATUSES and (all_clients or order.client_id == client_id):
                yield self._open_order(order)
                yield self._status(order)
        yield self.frame(OPEN_ORDER_END, 1)

    def completed_orders(self, _fields: list[str], _client_id: int) -> Iterator[bytes]:
        """``reqCompletedOrders``: each filled, cancelled or rejected order, then the end (every
        order here is an API order, so ``apiOnly`` changes nothing)."""
        for order in list(self.orders.values()):
            if order.status not in OPEN_STATUSES:
                yield self._completed_order(order)
        yield self.frame(COMPLETED_ORDERS_END)

    def _complete(self, order: SimOrder, status: str) -> None:
        order.status = status
        order.completed_time = time.strftime("%Y%m%d %H:%M:%S UTC", time.gmtime())

    def _fill(self, order: SimOrder) -> Iterator[bytes]:
        currency = order.currency
        price = order.limit_price or self._mark(order.symbol) or self.scenario.order_default_price
        self._complete(order, "Filled")
        order.filled, order.fill_price = order.quantity, price
        exec_id = f"sim.{next(self._exec_ids):06d}"
        stamp = time.strftime("%Y%m%d %H:%M:%S", time.gmtime())
        side = "BOT" if order.action == "BUY" else "SLD"
        yield self.frame(
            EXECUTION_DATA, -1, order.order_id, 0, order.symbol, "STK", "", 0.0, "", "", "SMART", currency,
            order.symbol, order.symbol, exec_id, f"{stamp} UTC", order.account, "SMART", side,
            order.quantity, price, order.perm_id, order.client_id, 0, order.quantity, price, "", "", "",
            "", 0, 0,
        )  # fmt: skip
        yield self.frame(COMMISSION_REPORT, 1, exec_id, COMMISSION, currency, 0.0, "", "")
        yield self._status(order)
        self.scenario.executions.append(
            self.execution(
                exec_id=exec_id, account=order.account, conid=0, symbol=order.symbol, side=side,
                shares=order.quantity, price=price, time=stamp, commission=COMMISSION,
                currency=currency, order_id=order.order_id, perm_id=order.perm_id,
            )
        )  # fmt: skip

    def _status(self, order: SimOrder) -> bytes:
        remaining = order.quantity - order.filled
        return self.frame(
            ORDER_STATUS, order.order_id, order.status, order.filled, remaining, order.fill_price,
            order.perm_id, 0, order.fill_price, order.client_id, "", 0.0,
        )  # fmt: skip

    def _open_order(self, o: SimOrder) -> bytes:
        """``openOrder`` for server version 178: no version field; empty fields decode to
        ib_async's defaults (unset prices, no legs, conditions, algo or delta-neutral parts)."""
        return self.frame(
            OPEN_ORDER, o.order_id, *self._contract(o),
            o.action, o.quantity, o.order_type, _price(o.limit_price), "", "DAY", "", o.account, "O", 0,
            o.order_ref, o.client_id, o.perm_id, 0, 0, 0.0, "", "", "", "", "",  # .. faPercentage
            *[""] * 29,  # modelCode .. deltaNeutralAuxPrice (no delta-neutral order type)
            *[""] * 7,  # continuousUpdate .. comboLegsDescrip
            0, 0, 0,  # combo legs, order combo legs, smart combo routing params
            "", "", "", "",  # scale init / subs level size, price increment (unset), hedge type
            "", "", "", 0, 0,  # optOutSmartRouting, clearing account / intent, notHeld, no dnc
            "", 0, 0, o.status,  # algo strategy, solicited, whatIf, the order state's status
            *[""] * 14, 0, 0,  # margins, commissions, currency, warning; randomize size / price
            0,  # conditions
            *[""] * 16,  # adjustedOrderType .. usePriceMgmtAlgo
            "", "", "",  # duration (159), postToAts (160), autoCancelParent (162)
            *[""] * 5,  # minTradeQty .. midOffsetAtHalf (170)
        )  # fmt: skip

    def _completed_order(self, o: SimOrder) -> bytes:
        """``completedOrder`` for server version 178 (no version field, no order or client id)."""
        return self.frame(
            COMPLETED_ORDER, *self._contract(o),
            o.action, o.quantity, o.order_type, _price(o.limit_price), "", "DAY", "", o.account, "O", 0,
            o.order_ref, o.perm_id, 0, 0, 0.0, "", "", "", "",  # .. faPercentage
            *[""] * 23,  # modelCode .. deltaNeutralAuxPrice
            *[""] * 5,  # continuousUpdate .. comboLegsDescrip
            0, 0, 0,  # combo legs, order combo legs, smart combo routing params
            "", "", "", "",  # scale init / subs level size, price increment (unset), hedge type
            "", "", "", 0,  # clearing account / intent, notHeld, no dnc
            "", 0, o.status, 0, 0,  # algo strategy, solicited, status, randomize size / price
            0,  # conditions
            "", "", "", "", "", "", o.filled, "", "", "", "", "", "",  # trailStopPrice .. parentPermId
            o.completed_time, o.status,  # completedTime, completedStatus
            *[""] * 5,  # minTradeQty .. midOffsetAtHalf (170)
        )  # fmt: skip

    @staticmethod
    def _contract(o: SimOrder) -> tuple:
        """conId, symbol, secType, expiry, strike, right, multiplier, exchange, currency,
        localSymbol, tradingClass."""
        return (o.conid, o.symbol, "STK", "", 0.0, "", "", "SMART", o.currency, o.symbol, o.symbol)

    def _mark(self, symbol: str) -> float | None:
        marks = [p.market_price for p in self.scenario.positions if p.symbol == symbol and p.market_price]
        return marks[0] if marks else None


def _price(value: float | None) -> float | str:
    return "" if value is None else value
