"""The ``orders`` queue: the steps of ``order_with_prerequisites`` and their compensations.

``check_risk`` (the order against the risk limits and the account's latest snapshot, synced
from the gateway first when there is none), ``reserve_funds`` / ``release_funds`` (cash set
aside in Redis), ``place_order`` / ``cancel_order`` (through the process's ib_async session)
and ``wait_for_fill`` (the gateway's executions).  Domain code: :mod:`actors.accounts.orders`.
A bad order, a refusal or a timeout raises an error in ``throws``: the step fails at once and
the workflow compensates in reverse order.  ``place_order`` places at most one order per step
(by ``orderRef``, see :func:`actors.accounts.orders.place_once`) and is retried while the
gateway is unavailable; ``cancel_order`` leaves an order already filled or cancelled alone.
"""

from __future__ import annotations

import time

import dramatiq

from actors.accounts import FillTimeout, FundReservations, Order, OrderRejected, check_order
from actors.accounts import orders as domain
from actors.ib import GatewayUnavailable, runtime
from actors.portfolio import account_of, portfolio_service
from saga import current_step
from storage.portfolio import latest_snapshot

#: Queue of the order actors.
QUEUE = "orders"

_OPTIONS = {"queue_name": QUEUE, "max_retries": 0, "throws": (OrderRejected, FillTimeout)}

#: Retries of ``place_order`` while the gateway is unavailable, and the longest backoff (ms)
#: between two tries of ``place_order`` or ``cancel_order``.
GATEWAY_RETRIES, GATEWAY_BACKOFF_MS = 5, 30_000


def _reservations() -> FundReservations:
    broker = dramatiq.get_broker()
    return FundReservations(client=broker.client, namespace=runtime().settings.namespace)


def _reference() -> str:
    """The id of this step's effect (a reservation, an order's ``orderRef``): the step's
    idempotency key, the same for every delivery of one dispatch, so a redelivery finds what
    the first one did."""
    step = current_step()
    if step is None:
        raise OrderRejected("the order actors run as workflow steps (order_with_prerequisites)")
    return step.idempotency_key


def _order(data: dict) -> Order:
    order = Order.of(data)
    return order if order.account else Order(**{**vars(order), "account": account_of(None)})


@dramatiq.actor(**_OPTIONS, time_limit=120_000)
def check_risk(order: dict) -> dict:
    """The order against the configured risk limits and the account's latest snapshot."""
    service = portfolio_service()
    request = _order(order)
    snapshot = latest_snapshot(service.engine, request.account) or service.sync(request.account)
    return check_order(service.limits, snapshot, request)


@dramatiq.actor(**_OPTIONS, time_limit=30_000)
def reserve_funds(order: dict, risk: dict | None = None) -> dict:
    """Set the order's notional aside (a BUY; a SELL reserves nothing) within the account's cash."""
    request = _order(order)
    amount = risk["notional"] if risk and request.action == "BUY" else 0.0
    cash = (risk or {}).get("cash") or 0.0
    reservation = _reference()
    _reservations().reserve(request.account, reservation, amount, cash=cash)
    return {"reservation": reservation, "account": request.account, "amount": amount}


@dramatiq.actor(queue_name=QUEUE, max_retries=3, time_limit=30_000)
def release_funds(order: dict, risk: dict | None = None, *, result: dict) -> dict:
    """Compensation of ``reserve_funds``: give the reservation back."""
    released = _reservations().release(result["account"], result["reservation"])
    return {"released": released, "reservation": result["reservation"]}


def _gateway_down(retries: int, exception: BaseException) -> bool:
    """Retry ``place_order`` while the gateway cannot be asked (it looks again, then places);
    any other failure is final."""
    return isinstance(exception, GatewayUnavailable) and retries < GATEWAY_RETRIES


@dramatiq.actor(
    **_OPTIONS, retry_when=_gateway_down, min_backoff=1_000, max_backoff=GATEWAY_BACKOFF_MS, time_limit=60_000
)
def place_order(order: dict, reservation: dict | None = None) -> dict:
    """Send the order to the gateway, at most once per step: its ``orderRef`` is the step's
    idempotency key, and a redelivery that finds an order with it at the gateway adopts that
    order.  Returns its ids, ``order_ref``, status and whether it was ``adopted``."""
    request, reference = _order(order), _reference()
    return domain.place_once(portfolio_service().session, request, reference=reference)


@dramatiq.actor(
    queue_name=QUEUE, max_retries=3, min_backoff=1_000, max_backoff=GATEWAY_BACKOFF_MS, time_limit=60_000
)
def cancel_order(order: dict, reservation: dict | None = None, *, result: dict) -> dict:
    """Compensation of ``place_order``: cancel the order if it still works at the gateway; the
    result says what happened (``cancelled``, ``status``, ``reason``: already filled, cancelled...)."""
    return domain.cancel_once(portfolio_service().session, result)


@dramatiq.actor(**_OPTIONS, time_limit=600_000)
def wait_for_fill(order: dict, placed: dict, reservation: dict | None = None) -> dict:
    """Wait (up to the order's ``fill_timeout_s``) until the gateway reports the order's fill;
    the fill settles the ``reservation`` (the cash is spent: the next snapshot shows it)."""
    request = _order(order)
    session = portfolio_service().session
    deadline = time.monotonic() + request.fill_timeout_s
    while True:
        fill = session.call(lambda ib: domain.filled(ib, request.account, placed))
        if fill is not None:
            if reservation:
                _reservations().release(reservation["account"], reservation["reservation"])
            return fill
        if time.monotonic() >= deadline:
            raise FillTimeout(f"order {placed['order_id']} not filled within {request.fill_timeout_s:.0f}s")
        time.sleep(domain.FILL_POLL_S)
