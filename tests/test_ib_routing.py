"""Routing: streaming lines for active contracts within the slot budget, batches for the rest."""

from __future__ import annotations

import threading

import pytest

from actors.ib import BatchScheduler, PositionRouter, Route, StreamSlots
from actors.runtime import build_broker
from storage import create_db_engine
from storage.ib_contracts import active_conids, register_active_contract, unregister_active_contract
from storage.ib_positions import NewRequest, queue_stats

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def broker(settings):
    return build_broker(settings)


@pytest.fixture
def engine(settings):
    engine = create_db_engine(settings.database_url)
    yield engine
    engine.dispose()


def test_concurrent_acquires_never_exceed_the_budget(broker, settings):
    slots = StreamSlots(client=broker.client, namespace=settings.namespace, budget=100)
    granted: list[int] = []

    def grab(first: int) -> None:
        for conid in range(first, first + 50):
            if slots.acquire(conid):
                granted.append(conid)

    threads = [threading.Thread(target=grab, args=(1 + 50 * i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 100 and len(slots.held()) == 100
    held = next(iter(slots.held()))
    assert slots.acquire(held)  # a contract with a line keeps it
    assert not slots.acquire(10_000)
    assert slots.release(held) and slots.acquire(10_000)
    assert len(slots.held()) == 100


def test_active_contracts_stream_within_budget_and_the_rest_batch(broker, settings, engine):
    for conid in range(1, 151):
        register_active_contract(engine, conid=conid, strategy="momentum")
    register_active_contract(engine, conid=1, strategy="mean-reversion")
    assert active_conids(engine) == set(range(1, 151))
    opened: list[int] = []
    slots = StreamSlots(client=broker.client, namespace=settings.namespace, budget=100)
    scheduler = BatchScheduler(broker=broker, namespace=settings.namespace, interval=60.0)
    router = PositionRouter(engine=engine, slots=slots, scheduler=scheduler, subscribe=opened.append)

    routed = router.route([NewRequest(conid=c) for c in range(1, 201)])
    streamed = [r.request.conid for r in routed if r.route is Route.STREAM]
    assert streamed == list(range(1, 101))
    assert opened == list(range(1, 101))
    assert queue_stats(engine).pending == 100  # 50 active beyond the budget + 50 inactive
    assert len(slots.held()) == 100

    again = router.route([NewRequest(conid=5), NewRequest(conid=120)])
    assert [r.route for r in again] == [Route.STREAM, Route.BATCH]
    assert len(opened) == 100  # the existing line is reused

    assert unregister_active_contract(engine, conid=5, strategy="momentum")
    assert [r.route for r in router.route([NewRequest(conid=5, account="DU1")])] == [Route.BATCH]


def test_registry_refuses_bad_input(engine):
    with pytest.raises(ValueError, match="conid must be a positive integer"):
        register_active_contract(engine, conid=-1, strategy="x")
    with pytest.raises(ValueError, match="strategy must not be empty"):
        register_active_contract(engine, conid=1, strategy="")


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_streams_open_once_in_the_owner_process_and_close(settings, request):
    import subprocess
    import sys
    import time

    import dramatiq
    from conftest import REPO_ROOT, settings_env

    from actors.ib import GatewaySimulator, Scenario, SimPosition

    if "postgresql" in request.node.callspec.params.get("database_url", ""):
        pytest.skip("worker process tests run once, on SQLite")
    scenario = Scenario(
        positions=[
            SimPosition(
                account="DU1", conid=conid, symbol=f"S{conid}", position=1, avg_cost=1.0, market_price=190.5
            )
            for conid in (101, 102)
        ]
    )
    with GatewaySimulator(scenario=scenario) as gateway:
        settings = settings.model_copy(update={"ib_port": gateway.port})
        broker = build_broker(settings)
        slots = StreamSlots(client=broker.client, namespace=settings.namespace, budget=2)
        assert slots.acquire(101) and slots.acquire(102)
        # two processes consume the stream queue: only the lease owner may subscribe
        workers = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "actors", "-p", "2", "-t", "1", "-Q", "ib_streams"],
            env=settings_env(settings), cwd=REPO_ROOT,
        )  # fmt: skip

        def send(actor_name: str, conid: int) -> None:
            options = {"queue_name": "ib_streams", "actor_name": actor_name, "kwargs": {}, "options": {}}
            broker.enqueue(dramatiq.Message(args=(conid,), **options))

        try:
            for conid in (101, 102, 101, 102, 101, 102):
                send("open_stream", conid)
            deadline = time.monotonic() + 60
            while gateway.request_counts["market_data"] < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3)  # resent duplicates have had time to arrive
            assert gateway.request_counts["market_data"] == 2  # one subscription per contract
            assert gateway.connection_count == 1  # only the owner process connected
            for conid in (101, 102):
                send("close_stream", conid)
            deadline = time.monotonic() + 30
            while slots.held() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert slots.held() == set()
        finally:
            workers.terminate()
            workers.wait(timeout=20)


def test_stream_reconciliation_reopens_lost_streams_and_closes_inactive_ones():
    from actors.ib import stream_changes

    to_open, to_close = stream_changes(held={1, 2, 3, 4}, active={1, 2, 3, 9}, open_here={1})
    assert (to_open, to_close) == ({2, 3}, {4})
    assert stream_changes(held=set(), active={1}, open_here=set()) == (set(), set())


def test_stream_owner_lease_is_renewed_and_taken_over_when_it_lapses(broker, settings):
    import time

    from actors.ib import StreamOwner

    key = f"{settings.namespace}:ib:stream-owner"
    first = StreamOwner(client=broker.client, key=key, ttl=0.6, name="first")
    second = StreamOwner(client=broker.client, key=key, ttl=0.6, name="second")
    assert first.claim() and not second.claim()
    time.sleep(1.5)  # more than two lifetimes: the renewer kept it
    assert first.holds() and not second.claim()
    first.release()
    time.sleep(1.2)
    assert second.claim() and not first.holds()
    second.release()
