"""Orders with prerequisites: the risk check of one order, fund reservations, and placing,
cancelling and awaiting an order through the gateway.  The ``orders`` queue's work.

An order is a JSON object: ``{"account": "DU1", "symbol": "AAPL", "action": "BUY",
"quantity": 10, "limit_price": 190.0, "fill_timeout_s": 30}`` (``account``: the first
managed account when empty; ``limit_price``: a market order when absent; ``fill_timeout_s``:
how long ``wait_for_fill`` waits, default :data:`FILL_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from actors.ib.session import GatewayUnavailable, IBSession
from storage.ib_models import PortfolioSnapshot

from .risk_limits import RiskLimits

#: Seconds ``wait_for_fill`` waits for an order's fill unless the order says otherwise.
FILL_TIMEOUT_S = 30.0

#: Seconds between two looks at the executions while waiting for a fill.
FILL_POLL_S = 0.2

#: Seconds ``place`` waits for the gateway's first status of a new order.
STATUS_TIMEOUT_S = 5.0

#: Redis hash (after the namespace) of an account's reservations: reservation id -> amount.
FUNDS_KEY = "funds:{account}"

#: Reserve ``ARGV[2]`` under ``ARGV[1]`` if the reservations stay within ``ARGV[3]`` (cash);
#: a reservation made before (a redelivered step) is returned as it is.
RESERVE_SCRIPT = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {1, existing} end
local total = 0
for _, amount in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(amount) end
if total + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return {0, tostring(total)} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, ARGV[2]}
"""

#: Seconds between two looks at the gateway while a cancel takes effect.
CANCEL_POLL_S = 0.1

#: Order statuses after which an order is no longer working.
DONE_STATUSES = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})

#: Statuses of an order that ended without (fully) filling.
CANCELLED_STATUSES = frozenset({"Cancelled", "ApiCancelled", "Inactive"})

logger = logging.getLogger(__name__)


class OrderRejected(Exception):
    """The order cannot go on: bad order, refused by risk, no funds, rejected by the gateway."""


class FillTimeout(Exception):
    """The order was not filled in time; the workflow compensates (cancel, release)."""


class OrderLookupFailed(GatewayUnavailable):
    """The gateway could not say whether the step's order exists, so nothing was placed; the
    step is retried (it looks again before it places)."""


class OrderUnconfirmed(GatewayUnavailable):
    """The order was sent but the gateway gave no status in time: it may or may not be there.
    The step is retried, and the retry looks the order up before it places."""


class CancelNotConfirmed(Exception):
    """The order still works at the gateway after the cancel; the compensation is retried."""


@dataclass(frozen=True)
class Order:
    """An order as a workflow's inputs give it (see the module's docstring)."""

    account: str
    symbol: str
    action: str
    quantity: float
    limit_price: float | None = None
    fill_timeout_s: float = FILL_TIMEOUT_S

    @classmethod
    def of(cls, data: Any) -> Order:
        if not isinstance(data, dict):
            raise OrderRejected(f"an order is a JSON object, not {data!r}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise OrderRejected(f"unknown order field(s) {unknown}")
        action = str(data.get("action", "")).upper()
        if action not in ("BUY", "SELL"):
            raise OrderRejected(f"action must be BUY or SELL (got {data.get('action')!r})")
        if not data.get("symbol"):
            raise OrderRejected("the order needs a symbol")
        try:
            quantity = float(data.get("quantity", 0))
            limit = data.get("limit_price")
            limit = float(limit) if limit is not None else None
            timeout = float(data.get("fill_timeout_s", FILL_TIMEOUT_S))
        except (TypeError, ValueError) as exc:
            raise OrderRejected(f"bad number in the order: {exc}") from None
        if quantity <= 0 or (limit is not None and limit <= 0) or timeout <= 0:
            raise OrderRejected("quantity, limit_price and fill_timeout_s must be positive")
        account, symbol = str(data.get("account") or ""), str(data["symbol"]).upper()
        return cls(account, symbol, action, quantity, limit, timeout)


def check_order(limits: RiskLimits, snapshot: PortfolioSnapshot, order: Order) -> dict[str, Any]:
    """Whether ``order`` keeps the account within ``limits`` after it fills: ``approved``,
    the ``reasons`` it is not, the ``price`` assumed (limit, else the position's mark) and
    the ``notional``."""
    held = next((p for p in snapshot.positions if p.get("symbol") == order.symbol), None)
    price = order.limit_price or (held or {}).get("market_price")
    reasons = []
    if not price:
        reasons.append(f"no price for {order.symbol}: give a limit_price")
        price = 0.0
    notional = order.quantity * price
    signed = order.quantity if order.action == "BUY" else -order.quantity
    position_value = abs(((held or {}).get("position") or 0.0) + signed) * price
    if limits.max_position_value is not None and position_value > limits.max_position_value:
        reasons.append(f"position value {position_value:.2f} > limit {limits.max_position_value:.2f}")
    net = snapshot.net_liquidation
    if limits.max_concentration_pct is not None and net:
        share = 100 * position_value / net
        if share > limits.max_concentration_pct:
            reasons.append(f"concentration {share:.1f}% > limit {limits.max_concentration_pct:.1f}%")
    gross = snapshot.gross_exposure + (notional if order.action == "BUY" else 0.0)
    if limits.max_gross_exposure is not None and gross > limits.max_gross_exposure:
        reasons.append(f"gross exposure {gross:.2f} > limit {limits.max_gross_exposure:.2f}")
    return {
        "approved": not reasons,
        "reasons": reasons,
        "account": snapshot.account,
        "price": price,
        "notional": round(notional, 6),
        "cash": snapshot.total_cash,
    }


class FundReservations:
    """Cash set aside for orders in flight, per account, in Redis.

    Parameters:
      client: Redis client.
      namespace: Key prefix.
    """

    def __init__(self, *, client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._reserve = client.register_script(RESERVE_SCRIPT)

    def key(self, account: str) -> str:
        return f"{self.namespace}:{FUNDS_KEY.format(account=account)}"

    def reserve(self, account: str, reservation: str, amount: float, *, cash: float) -> float:
        """Reserve ``amount`` (once per ``reservation`` id); raises :class:`OrderRejected` when
        the account's reservations would exceed ``cash``."""
        done, value = self._reserve(keys=[self.key(account)], args=[reservation, amount, cash])
        if not done:
            raise OrderRejected(
                f"insufficient funds on {account}: {amount:.2f} wanted, {cash - float(value):.2f} free"
            )
        return float(value)

    def release(self, account: str, reservation: str) -> bool:
        return bool(self.client.hdel(self.key(account), reservation))

    def reserved(self, account: str) -> dict[str, float]:
        raw = self.client.hgetall(self.key(account))
        return {key.decode(): float(value) for key, value in raw.items()}


def place_once(session: IBSession, order: Order, *, reference: str) -> dict[str, Any]:
    """Place ``order`` with ``orderRef`` ``reference`` unless the gateway already has an order
    with that reference (placed by an earlier delivery of the step that died before its outcome
    was recorded): that one is adopted instead, never doubled.

    Raises :class:`OrderLookupFailed` when the gateway cannot be asked (nothing is placed
    blind), :class:`OrderUnconfirmed` when a new order got no status in time (both retried) and
    :class:`OrderRejected` when the order (new or adopted) was refused or cancelled.
    """
    try:
        found = session.call(lambda ib: find(ib, reference=reference))
    except GatewayUnavailable as exc:
        raise OrderLookupFailed(
            f"cannot look up orderRef {reference!r} at the gateway, so no order was placed "
            f"(the step is retried): {exc.reason}",
            retry_in=exc.retry_in,
        ) from exc
    if found:
        return _adopt(found, reference)
    return session.call(lambda ib: place(ib, order, reference=reference))


def cancel_once(session: IBSession, placed: dict[str, Any]) -> dict[str, Any]:
    """Cancel the order ``place_once`` returned, as the gateway knows it now: an order already
    filled, cancelled or unknown there is left alone and the result says so (``cancelled``
    False, ``status``, ``reason``).  Raises :class:`CancelNotConfirmed` when the order still
    works after :data:`STATUS_TIMEOUT_S`, and ``GatewayUnavailable`` when the gateway cannot be
    asked (both retried by the compensation)."""
    reference, perm_id = placed.get("order_ref"), placed.get("perm_id")
    found = session.call(lambda ib: find(ib, reference=reference, perm_id=perm_id))
    if not found:
        return _cancel_result(
            placed, None, "the gateway does not list the order (not today's, or never placed)"
        )
    trade = found[0]
    if trade.orderStatus.status in DONE_STATUSES:
        return _cancel_result(placed, trade, f"already {trade.orderStatus.status.lower()}")
    # the order id is the placing client's: a gateway lets only that client cancel it
    session.call(lambda ib: _send_cancel(ib, trade.order.orderId))
    deadline = time.monotonic() + STATUS_TIMEOUT_S
    while trade.orderStatus.status not in DONE_STATUSES:
        if time.monotonic() >= deadline:
            raise CancelNotConfirmed(
                f"order {trade.order.permId} (orderRef {trade.order.orderRef!r}) is still "
                f"{trade.orderStatus.status} {STATUS_TIMEOUT_S:g}s after its cancel"
            )
        time.sleep(CANCEL_POLL_S)
        found = session.call(lambda ib: find(ib, reference=reference, perm_id=perm_id)) or found
        trade = found[0]
    status = trade.orderStatus.status
    if status in CANCELLED_STATUSES:
        return {**_cancel_result(placed, trade, "cancelled"), "cancelled": True}
    return _cancel_result(placed, trade, f"{status.lower()} before the cancel took effect")


async def find(ib, *, reference: str | None, perm_id: int | None = None) -> list:
    """The gateway's orders (ib_async ``Trade``) with ``orderRef`` ``reference`` or permId
    ``perm_id``, whichever client placed them: the working ones (``reqAllOpenOrders``), then
    the completed ones (``reqCompletedOrders``), one per permId, oldest first."""
    # open orders first: an order completing between the two answers is then in one of them
    working = await ib.reqAllOpenOrdersAsync()
    completed = await ib.reqCompletedOrdersAsync(apiOnly=True)
    found = {}
    for trade in [*working, *completed]:  # a completed record replaces a stale open one
        order = trade.order
        if (reference and order.orderRef == reference) or (perm_id and order.permId == perm_id):
            found[order.permId] = trade
    return [found[key] for key in sorted(found)]


async def place(ib, order: Order, *, reference: str) -> dict[str, Any]:
    """Place ``order`` (``reference``: its ``orderRef``) and wait for the gateway's status;
    :func:`place_once` looks for an earlier one first."""
    import ib_async

    contract = ib_async.Stock(order.symbol, "SMART", "USD")
    if order.limit_price is None:
        request = ib_async.MarketOrder(order.action, order.quantity)
    else:
        request = ib_async.LimitOrder(order.action, order.quantity, order.limit_price)
    request.account, request.orderRef = order.account, reference
    trade = ib.placeOrder(contract, request)
    deadline = time.monotonic() + STATUS_TIMEOUT_S
    while trade.orderStatus.status in ("PendingSubmit", "ApiPending", "") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    status = trade.orderStatus
    if status.status in ("PendingSubmit", "ApiPending", ""):
        raise OrderUnconfirmed(
            f"the gateway did not confirm the order with orderRef {reference!r} within "
            f"{STATUS_TIMEOUT_S:g}s (the step is retried and looks it up before placing)",
            retry_in=0.0,
        )
    if status.status in CANCELLED_STATUSES:
        errors = "; ".join(f"{e.errorCode} {e.message}" for e in trade.log if e.errorCode) or status.status
        raise OrderRejected(f"the gateway did not accept the order: {errors}")
    return {
        "order_id": request.orderId,
        "perm_id": status.permId,
        "client_id": ib.client.clientId,
        "order_ref": reference,
        "status": status.status,
        "filled": status.filled,
        "avg_price": status.avgFillPrice,
        "adopted": False,
    }


def _adopt(found: list, reference: str) -> dict[str, Any]:
    """The result of an order an earlier delivery placed (the oldest, should there be more)."""
    trade = found[0]
    order, status = trade.order, trade.orderStatus
    if len(found) > 1:
        logger.error(
            "%d orders carry orderRef %r at the gateway; adopting permId %d",
            len(found),
            reference,
            order.permId,
        )
    if status.status in CANCELLED_STATUSES:
        raise OrderRejected(
            f"the order placed earlier with orderRef {reference!r} (permId {order.permId}) is {status.status}"
        )
    logger.warning(
        "orderRef %r is at the gateway already (permId %d, %s): adopted, not placed again",
        reference,
        order.permId,
        status.status,
    )
    return {
        "order_id": order.orderId,  # 0 for a completed order: the gateway does not list it
        "perm_id": order.permId,
        "client_id": order.clientId,
        "order_ref": reference,
        "status": status.status,
        "filled": _filled(trade),
        "avg_price": status.avgFillPrice,
        "adopted": True,
    }


def _filled(trade) -> float:
    """Shares filled: an open order's status says it, a completed order its ``filledQuantity``."""
    from ib_async.util import UNSET_DOUBLE

    listed = float(trade.order.filledQuantity)
    return trade.orderStatus.filled or (listed if listed < UNSET_DOUBLE else 0.0)


async def _send_cancel(ib, order_id: int) -> None:
    ib.client.cancelOrder(order_id, "")


def _cancel_result(placed: dict[str, Any], trade, reason: str) -> dict[str, Any]:
    return {
        "cancelled": False,
        "order_id": placed.get("order_id"),
        "perm_id": trade.order.permId if trade else placed.get("perm_id"),
        "order_ref": placed.get("order_ref"),
        "status": trade.orderStatus.status if trade else None,
        "filled": _filled(trade) if trade else 0.0,
        "reason": reason,
    }


async def filled(ib, account: str, placed: dict[str, Any]) -> dict[str, Any] | None:
    """The fill of the order ``place`` returned, if the gateway reports it (any connection
    sees it through ``reqExecutions``)."""
    import ib_async

    fills = await ib.reqExecutionsAsync(ib_async.ExecutionFilter(acctCode=account))
    mine = [f for f in fills if f.execution.permId == placed.get("perm_id")]
    if not mine:
        return None
    shares = sum(f.execution.shares for f in mine)
    value = sum(f.execution.shares * f.execution.price for f in mine)
    return {"shares": shares, "avg_price": value / shares, "executions": [f.execution.execId for f in mine]}
