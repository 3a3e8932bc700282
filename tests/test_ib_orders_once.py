"""At most one order per workflow step, by ``orderRef``: ``place_once`` and ``cancel_once`` with
the real ib_async client (through :class:`IBSession`) against the simulator over a socket."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, run_cli, settings_env
from saga_helpers import fast, steps_of, wait_for_run

from actors.accounts.orders import (
    CancelNotConfirmed,
    Order,
    OrderLookupFailed,
    OrderRejected,
    OrderUnconfirmed,
    cancel_once,
    place_once,
)
from actors.ib import GatewaySimulator, GatewayUnavailable, IBSession, demo_scenario
from actors.orders import _gateway_down, place_order
from saga import idempotency_key
from storage import create_db_engine

pytestmark = pytest.mark.timeout(60)

#: One order as a workflow's inputs give it.
ORDER = Order(account="DU1", symbol="SYM1", action="BUY", quantity=5, limit_price=51.0)

_client_ids = itertools.count(100)


def _session(port: int) -> IBSession:
    """A worker process's session: a fresh clientId for each connection, as in production."""
    return IBSession(host="127.0.0.1", port=port, next_client_id=_client_ids.__next__, timeout=3.0)


@pytest.fixture
def gateway():
    with GatewaySimulator(scenario=demo_scenario(holdings=2)) as running:
        yield running


@pytest.mark.parametrize("fills", ["fill", "hold"])
def test_placing_twice_with_one_order_ref_places_one_order(gateway, fills):
    # "fill": the second delivery finds it among the completed orders; "hold": among the open ones.
    gateway.scenario.order_fills = fills
    first, second = _session(gateway.port), _session(gateway.port)  # a redelivery in another process
    try:
        placed = place_once(first, ORDER, reference="run1:place:step:1")
        again = place_once(second, ORDER, reference="run1:place:step:1")
        other = place_once(second, ORDER, reference="run2:place:step:1")
    finally:
        first.close()
        second.close()
    assert gateway.request_counts["place_order"] == 2  # run1 once, run2 once
    by_ref = {}
    for order in gateway.orders.orders.values():
        by_ref.setdefault(order.order_ref, []).append(order)
    assert {ref: len(orders) for ref, orders in by_ref.items()} == {
        "run1:place:step:1": 1,
        "run2:place:step:1": 1,
    }
    status = "Filled" if fills == "fill" else "Submitted"
    assert (placed["adopted"], again["adopted"], other["adopted"]) == (False, True, False)
    assert again["perm_id"] == placed["perm_id"] == by_ref["run1:place:step:1"][0].perm_id
    assert (again["status"], again["order_ref"], again["filled"]) == (
        status,
        "run1:place:step:1",
        placed["filled"],
    )
    assert other["perm_id"] != placed["perm_id"]


def test_an_adopted_order_that_was_rejected_fails_the_step(gateway):
    gateway.scenario.order_fills = "reject"
    session = _session(gateway.port)
    try:
        with pytest.raises(OrderRejected, match="did not accept"):
            place_once(session, ORDER, reference="run1:place:step:1")
        with pytest.raises(
            OrderRejected, match=r"placed earlier with orderRef 'run1:place:step:1' .* is Inactive"
        ):
            place_once(session, ORDER, reference="run1:place:step:1")
    finally:
        session.close()
    assert gateway.request_counts["place_order"] == 1


def test_a_lookup_that_fails_places_nothing_and_says_the_step_is_retried(gateway):
    down = _session(_closed_port())  # the gateway is down
    try:
        with pytest.raises(OrderLookupFailed, match="no order was placed") as refused:
            place_once(down, ORDER, reference="run1:place:step:1")
    finally:
        down.close()
    assert isinstance(refused.value, GatewayUnavailable) and _gateway_down(0, refused.value)
    assert place_order.options["retry_when"] is _gateway_down
    assert not isinstance(refused.value, place_order.options["throws"])
    assert not _gateway_down(0, OrderRejected("no")) and not _gateway_down(5, refused.value)

    # Up, but the connection drops in the middle of the lookup: still nothing placed blind.
    gateway.scenario.disconnect_on = {"open_orders": 1}
    session = _session(gateway.port)
    try:
        with pytest.raises(OrderLookupFailed, match="gateway connection lost"):
            place_once(session, ORDER, reference="run1:place:step:1")
        assert gateway.request_counts["place_order"] == 0
        time.sleep(_retry_in(session))
        placed = place_once(session, ORDER, reference="run1:place:step:1")  # the retry looks again
    finally:
        session.close()
    assert placed["adopted"] is False and gateway.request_counts["place_order"] == 1


def test_an_order_the_gateway_does_not_confirm_in_time_is_looked_up_by_the_retry(gateway, monkeypatch):
    import actors.accounts.orders as orders

    monkeypatch.setattr(orders, "STATUS_TIMEOUT_S", 0.3)
    gateway.scenario.order_ack_delay_ms = 1_000
    session = _session(gateway.port)
    try:
        with pytest.raises(
            OrderUnconfirmed, match="did not confirm the order with orderRef 'run1:place:step:1'"
        ):
            place_once(session, ORDER, reference="run1:place:step:1")
        again = place_once(session, ORDER, reference="run1:place:step:1")  # the retry
    finally:
        session.close()
    assert _gateway_down(0, OrderUnconfirmed("x", retry_in=0.0))
    assert gateway.request_counts["place_order"] == 1
    assert again["adopted"] is True and again["perm_id"] == next(iter(gateway.orders.orders.values())).perm_id


def _retry_in(session: IBSession) -> float:
    """Seconds until the session dials again after its last failure."""
    return max(0.0, session._next_attempt - session._loop.time()) + 0.05


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cancel_says_what_happened_and_never_strands_the_compensation(gateway):
    session = _session(gateway.port)
    try:
        gateway.scenario.order_fills = "hold"
        held = place_once(session, ORDER, reference="run1:place:step:1")
        cancelled = cancel_once(session, held)
        assert (cancelled["cancelled"], cancelled["status"], cancelled["reason"]) == (
            True,
            "Cancelled",
            "cancelled",
        )
        again = cancel_once(session, held)  # a redelivered compensation
        assert (again["cancelled"], again["status"], again["reason"]) == (
            False,
            "Cancelled",
            "already cancelled",
        )

        gateway.scenario.order_fills = "fill"
        filled = place_once(session, ORDER, reference="run2:place:step:1")
        done = cancel_once(session, filled)
        assert (done["cancelled"], done["status"], done["reason"], done["filled"]) == (
            False,
            "Filled",
            "already filled",
            5.0,
        )

        unknown = cancel_once(session, {"order_id": 7, "perm_id": 1, "order_ref": "never:placed"})
        assert unknown["cancelled"] is False and unknown["status"] is None
        assert "does not list the order" in unknown["reason"]
    finally:
        session.close()
    assert gateway.request_counts["cancel_order"] == 1  # only the working order was sent a cancel
    assert [o.status for o in gateway.orders.orders.values()] == ["Cancelled", "Filled"]


def test_a_cancel_the_gateway_does_not_carry_out_is_retried(gateway, monkeypatch):
    import actors.accounts.orders as orders

    gateway.scenario.order_fills = "hold"
    monkeypatch.setattr(orders, "STATUS_TIMEOUT_S", 0.5)
    session = _session(gateway.port)
    try:
        held = place_once(session, ORDER, reference="run1:place:step:1")
        gateway.scenario.errors = {"cancel_order": (10147, "OrderId that needs to be cancelled is not found")}
        with pytest.raises(CancelNotConfirmed, match=r"still Submitted 0.5s after its cancel"):
            cancel_once(session, held)
    finally:
        session.close()
    assert [o.status for o in gateway.orders.orders.values()] == ["Submitted"]


def _orders_worker(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "2", "-Q", "orders"],
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.e2e
def test_a_worker_killed_after_the_gateway_took_the_order_does_not_place_it_twice(settings, request):
    if "postgresql" in request.node.callspec.params.get("database_url", ""):
        pytest.skip("worker process tests run once, on SQLite")
    scenario = demo_scenario(holdings=3)
    scenario.order_ack_delay_ms = 2_000  # the gateway takes (and fills) the order, its ack waits
    with GatewaySimulator(scenario=scenario) as gateway:
        settings = fast(
            settings,
            ib_port=gateway.port,
            ib_account="DU1",
            ib_timeout_ms=3_000,
            risk_max_position_value=50_000.0,
            heartbeat_timeout_ms=2_000,
            maintenance_chance=1_000_000,
        )
        env = settings_env(settings)
        workers = [_orders_worker(env)]
        db = create_db_engine(settings.database_url)
        try:
            order = {"symbol": "SYM1", "action": "BUY", "quantity": 5}
            started = run_cli(
                "workflow",
                "start",
                "order_with_prerequisites",
                "--args",
                json.dumps({"order": order}),
                env=env,
            )
            assert started.returncode == 0, started.stdout + started.stderr
            run_id = started.stdout.split()[0]
            deadline = time.monotonic() + 15
            while not gateway.request_counts["place_order"]:
                assert time.monotonic() < deadline, "the worker never placed the order"
                time.sleep(0.02)
            os.killpg(workers[0].pid, signal.SIGKILL)  # before the step's outcome is recorded
            workers[0].wait(10)
            assert steps_of(db, run_id)["place"].status == "running"
            workers.append(_orders_worker(env))
            run = wait_for_run(db, run_id, timeout=30)
            steps = steps_of(db, run_id)
        finally:
            for worker in workers:  # the run is over: nothing to drain, no graceful stop to wait for
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait(10)
            db.dispose()
    assert run.status == "succeeded", (run.error, {n: (s.status, s.error) for n, s in steps.items()})
    assert gateway.request_counts["place_order"] == 1
    (placed,) = gateway.orders.orders.values()
    assert (placed.symbol, placed.quantity, placed.status, placed.order_ref) == (
        "SYM1",
        5,
        "Filled",
        idempotency_key(run_id, "place", "step", 1),
    )
    place = steps["place"]
    assert place.attempts >= 2 and place.result["adopted"] is True
    assert place.result["perm_id"] == placed.perm_id and steps["fill"].result["shares"] == 5
