"""The ib_positions queue end to end: real dramatiq worker processes, real Redis, the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import dramatiq
import pytest
from conftest import REPO_ROOT, children_of, settings_env

from actors.ib import BatchScheduler, GatewaySimulator, Scenario, SimPosition, request_position_updates
from actors.runtime import build_broker
from storage import create_db_engine
from storage.ib_models import PositionBatch
from storage.ib_positions import NewRequest, list_requests, queue_stats
from storage.position_updates import read_position_updates

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def sqlite_only(database_url, request):
    if "postgresql" in request.node.callspec.params.get("database_url", ""):
        pytest.skip("worker process tests run once, on SQLite")


def _workers(settings, processes: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "-p", str(processes), "-t", "2", "-Q", "ib_positions"],
        env=settings_env(settings),
        cwd=REPO_ROOT,
    )


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _positions(count: int) -> list[SimPosition]:
    return [
        SimPosition(
            account="DU1",
            conid=1000 + i,
            symbol=f"S{i}",
            position=i + 1,
            avg_cost=10.0 + i,
            market_price=11.0 + i,
        )
        for i in range(count)
    ]


def _batches(engine) -> list[PositionBatch]:
    from sqlmodel import Session, select

    with Session(engine) as session:
        return list(session.exec(select(PositionBatch)))


def test_a_trickle_waits_for_one_batch_and_idle_costs_nothing(settings, sqlite_only):
    with GatewaySimulator(scenario=Scenario(accounts=["DU1"], positions=_positions(3))) as gateway:
        settings = settings.model_copy(update={"ib_port": gateway.port, "ib_batch_interval_ms": 3_000})
        broker = build_broker(settings)
        scheduler = BatchScheduler(broker=broker, namespace=settings.namespace, interval=3.0, batch_size=50)
        engine = create_db_engine(settings.database_url)
        workers = _workers(settings, processes=1)
        try:
            # the first request comes as a message to the request_position_update actor
            message = dramatiq.Message(
                queue_name="ib_positions",
                actor_name="request_position_update",
                args=(1002, "DU1"),
                kwargs={"requested_by": "actor"},
                options={},
            )
            broker.enqueue(message)
            _wait_for(lambda: list_requests(engine), 60, "the request sent as a message")
            for conid in (1000, 1001, 1000):
                request_position_updates(engine, scheduler, [NewRequest(conid=conid, account="DU1")])
            _wait_for(lambda: queue_stats(engine).succeeded == 3, 60, "3 successful requests")
            positions_requests = gateway.request_counts["positions"]
            time.sleep(2.5)  # an idle queue must not run batches (no polling)
            assert gateway.request_counts["positions"] == positions_requests
        finally:
            _stop(workers)
    (batch,) = _batches(engine)
    assert (batch.size, batch.succeeded, batch.rows_written) == (3, 3, 3)
    first_request = min(r.created_at for r in list_requests(engine))
    # the batch waited for the interval to gather the trickle instead of running per request
    assert (batch.started_at - first_request).total_seconds() >= 2.5
    assert queue_stats(engine).coalesced == 1
    rows = read_position_updates(settings.delta_root).to_pylist()
    assert sorted((r["conid"], r["position"], r["avg_cost"], r["market_price"]) for r in rows) == [
        (1000, 1.0, 10.0, 11.0), (1001, 2.0, 11.0, 12.0), (1002, 3.0, 12.0, 13.0)
    ]  # fmt: skip


def test_a_backlog_drains_back_to_back_across_two_racing_workers(settings, sqlite_only):
    with GatewaySimulator(scenario=Scenario(accounts=["DU1"], positions=_positions(400))) as gateway:
        settings = settings.model_copy(update={"ib_port": gateway.port, "ib_batch_interval_ms": 60_000})
        broker = build_broker(settings)
        scheduler = BatchScheduler(broker=broker, namespace=settings.namespace, interval=60.0, batch_size=50)
        engine = create_db_engine(settings.database_url)
        requests = [NewRequest(conid=1000 + i, account="DU1") for i in range(400)]
        request_position_updates(engine, scheduler, [*requests, NewRequest(conid=5)])
        for _ in range(3):  # extra batch messages: the two processes race for the same requests
            scheduler.send_batch()
        workers = _workers(settings, processes=2)
        try:
            _wait_for(lambda: queue_stats(engine).processed == 401, 90, "401 finished requests")
        finally:
            _stop(workers)
    # the 60 s interval never elapsed: the backlog went without waiting for it
    stats = queue_stats(engine)
    assert (stats.succeeded, stats.failed) == (400, 1)
    batches = [b for b in _batches(engine) if b.size]
    assert sum(b.size for b in batches) == 401 and all(b.size <= 50 for b in batches)
    rows = read_position_updates(settings.delta_root)
    request_ids = rows.column("request_id").to_pylist()
    assert len(request_ids) == 400 and len(set(request_ids)) == 400
    assert sorted(rows.column("conid").to_pylist()) == list(range(1000, 1400))


def test_a_worker_killed_mid_batch_loses_nothing(settings, sqlite_only):
    import os
    import signal

    # every answer takes 3 s, so the kill lands while the batch waits for its positions
    scenario = Scenario(accounts=["DU1"], positions=_positions(20), latency_ms=3_000)
    with GatewaySimulator(scenario=scenario) as gateway:
        settings = settings.model_copy(
            update={"ib_port": gateway.port, "ib_lease_ms": 2_000, "heartbeat_timeout_ms": 3_000,
                    "maintenance_chance": 1_000_000,
                    "ib_timeout_ms": 30_000}
        )  # fmt: skip
        broker = build_broker(settings)
        scheduler = BatchScheduler(broker=broker, namespace=settings.namespace, interval=60.0, batch_size=20)
        engine = create_db_engine(settings.database_url)
        request_position_updates(
            engine, scheduler, [NewRequest(conid=1000 + i, account="DU1") for i in range(20)]
        )
        doomed = _workers(settings, processes=1)
        try:
            _wait_for(lambda: queue_stats(engine).processing == 20, 60, "the batch to claim its requests")
            for child in children_of(doomed.pid):
                os.kill(child, signal.SIGKILL)
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait(timeout=10)
            assert queue_stats(engine).processing == 20  # stuck with a dead worker's claim
            scenario.latency_ms = 0
            survivor = _workers(settings, processes=1)
            try:
                _wait_for(lambda: queue_stats(engine).succeeded == 20, 90, "the requests to be retried")
            finally:
                _stop(survivor)
        finally:
            if doomed.poll() is None:
                doomed.kill()
    (row, *_) = list_requests(engine)
    assert row.attempts == 2
    request_ids = read_position_updates(settings.delta_root).column("request_id").to_pylist()
    assert len(set(request_ids)) == 20


def test_importing_actors_never_loads_deltalake():
    # the dramatiq master imports ``actors`` and then forks: deltalake is not fork-safe
    code = "import sys, actors; sys.exit('deltalake' in sys.modules)"
    env = {**os.environ, "TRADEFLOW_DATABASE_URL": "sqlite:///:memory:", "PYTHONPATH": str(REPO_ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, timeout=60).returncode == 0


def test_gateway_down_then_up_in_worker_processes(settings, sqlite_only):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = settings.model_copy(
        update={
            "ib_port": port,
            "ib_batch_interval_ms": 200,
            "ib_reconnect_max_ms": 1_000,
            "ib_max_attempts": 100,
        }
    )
    broker = build_broker(settings)
    scheduler = BatchScheduler(broker=broker, namespace=settings.namespace, interval=0.2, batch_size=50)
    engine = create_db_engine(settings.database_url)
    workers = _workers(settings, processes=1)
    try:
        request_position_updates(
            engine, scheduler, [NewRequest(conid=1000 + i, account="DU1") for i in range(3)]
        )
        _wait_for(
            lambda: all(r.attempts >= 2 for r in list_requests(engine)),
            60,
            "retries while the gateway is down",
        )
        assert queue_stats(engine).succeeded == 0
        assert all("cannot connect to IB gateway" in r.reason for r in list_requests(engine))
        with GatewaySimulator(scenario=Scenario(accounts=["DU1"], positions=_positions(3)), port=port):
            _wait_for(lambda: queue_stats(engine).succeeded == 3, 60, "success once the gateway is up")
    finally:
        _stop(workers)
    assert len(read_position_updates(settings.delta_root)) == 3
    assert {r.status for r in list_requests(engine)} == {"success"}
