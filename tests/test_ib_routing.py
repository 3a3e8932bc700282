"""Routing: streaming lines for active contracts within the slot budget, batches for the rest."""

from __future__ import annotations

import threading

import pytest

from actors.broker import build_broker
from actors.ib_positions import BatchScheduler
from actors.ib_routing import PositionRouter, Route, StreamSlots
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
def test_streams_open_and_close_in_the_stream_worker(settings, request):
    import subprocess
    import sys
    import time

    import dramatiq
    from conftest import REPO_ROOT, settings_env
    from dramatiq.results import ResultMissing, Results

    from actors.ib_gateway_sim import GatewaySimulator, Scenario, SimPosition

    if "postgresql" in request.node.callspec.params.get("database_url", ""):
        pytest.skip("worker process tests run once, on SQLite")
    held = SimPosition(account="DU1", conid=101, symbol="AAPL", position=1, avg_cost=1.0, market_price=190.5)
    scenario = Scenario(positions=[held])
    with GatewaySimulator(scenario=scenario) as gateway:
        settings = settings.model_copy(update={"ib_port": gateway.port})
        broker = build_broker(settings)
        backend = next(m for m in broker.middleware if isinstance(m, Results)).backend
        slots = StreamSlots(client=broker.client, namespace=settings.namespace, budget=1)
        assert slots.acquire(101)
        worker = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "1", "-Q", "ib_streams"],
            env=settings_env(settings), cwd=REPO_ROOT,
        )  # fmt: skip
        try:

            def send(actor_name: str) -> dramatiq.Message:
                return broker.enqueue(dramatiq.Message(queue_name="ib_streams", actor_name=actor_name,
                                                       args=(101,), kwargs={}, options={}))  # fmt: skip

            opened = send("open_stream")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    mark = opened.get_result(backend=backend)
                    break
                except ResultMissing:
                    time.sleep(0.1)
            assert mark == 190.5
            assert gateway.request_counts["market_data"] == 1
            send("close_stream")
            deadline = time.monotonic() + 30
            while slots.held() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert slots.held() == set()
        finally:
            worker.terminate()
            worker.wait(timeout=20)
