"""Transactional outbox: a job exists iff its transaction commits; the relay's resends run once."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import uuid

import dramatiq
import pytest
import redis
from conftest import REPO_ROOT, run_cli, settings_env
from jobs_support import cuttable_redis, queued_messages, wait_for
from sqlalchemy import text

from actors import audit_writer_of, build_broker
from actors.broker.outbox import OutboxRelay, _message, enqueue_in_transaction
from storage import add_to_outbox, claim_unsent, create_db_engine, unsent_count


@pytest.fixture
def broker(settings):
    broker = build_broker(settings)
    yield broker
    audit_writer_of(broker).close(5)


@pytest.fixture
def engine(settings):
    engine = create_db_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, symbol VARCHAR(10))"))
    yield engine
    engine.dispose()


def _declare_order_placed(broker):
    @dramatiq.actor(broker=broker, queue_name="orders", max_retries=0, actor_name="order_placed")
    def order_placed(key: str, order_id: int) -> None:
        broker.client.hincrby(f"{key}:runs", str(order_id), 1)

    return order_placed


def _place_order(engine, actor, key: str, order_id: int, *, fail: bool = False) -> None:
    """A service call: the order row and its job in one transaction."""
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO orders (id, symbol) VALUES (:id, 'AAPL')"), {"id": order_id})
        enqueue_in_transaction(connection, actor, key, order_id)
        if fail:
            raise RuntimeError("the service failed after writing")


def test_job_is_sent_only_if_the_transaction_commits(broker, engine, settings, namespace):
    actor = _declare_order_placed(broker)
    _place_order(engine, actor, "k", 1)
    with pytest.raises(RuntimeError):
        _place_order(engine, actor, "k", 2, fail=True)
    assert unsent_count(engine) == 1
    status = run_cli("outbox", "status", "--json", env=settings_env(settings))
    assert json.loads(status.stdout) == {"unsent": 1}, status.stderr
    relay = OutboxRelay(broker=broker, engine=engine)
    assert relay.relay_once() == 1
    assert relay.relay_once() == 0 and unsent_count(engine) == 0
    [message] = queued_messages(broker.client, namespace, "orders")
    assert message.args == ("k", 1)


def test_resend_after_a_relay_crash_runs_once(broker, engine, settings):
    actor = _declare_order_placed(broker)
    key = f"{settings.namespace}:orders"
    _place_order(engine, actor, key, 7)
    with engine.begin() as connection:  # a relay enqueued the batch, then died before its commit
        [row] = claim_unsent(connection, limit=10)
        broker.enqueue(_message(row))
        connection.rollback()
    assert OutboxRelay(broker=broker, engine=engine).relay_once() == 1  # so it is sent again
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        broker.join("orders", timeout=20_000)
    finally:
        worker.stop(timeout=10_000)
    assert broker.client.hgetall(f"{key}:runs") == {b"7": b"1"}


@pytest.mark.timeout(60)
def test_relay_keeps_messages_through_a_redis_outage(settings, engine, namespace):
    with cuttable_redis(settings) as (proxy, proxied):
        broker = build_broker(proxied)
        broker.client.connection_pool.connection_kwargs.update(socket_timeout=1, socket_connect_timeout=1)
        actor = _declare_order_placed(broker)
        _place_order(engine, actor, "k", 1)
        relay = OutboxRelay(broker=broker, engine=engine)
        proxy.cut()
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            relay.relay_once()
        assert unsent_count(engine) == 1  # the claim rolled back: still waiting
        proxy.restore()
        assert relay.relay_once() == 1 and unsent_count(engine) == 0
        assert [m.args for m in queued_messages(broker.client, namespace, "orders")] == [("k", 1)]
        audit_writer_of(broker).close(5)


def test_bad_outbox_call_is_refused(engine):
    with (
        engine.begin() as connection,
        pytest.raises(ValueError, match="needs a queue_name and an actor_name"),
    ):
        add_to_outbox(connection, queue_name="", actor_name="x")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_relay_process_delivers_committed_jobs_once_to_a_worker_process(broker, engine, settings):
    actor = _declare_order_placed(broker)
    key = f"{settings.namespace}:{uuid.uuid4().hex[:6]}"
    env = settings_env(settings)
    relay = subprocess.Popen([sys.executable, "-m", "api.cli", "outbox", "relay"], env=env, cwd=REPO_ROOT)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "actors",
            "tests.jobs_actors",
            "-p",
            "1",
            "-t",
            "2",
            "-Q",
            "orders",
        ],
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        for order_id in range(1, 26):
            with contextlib.suppress(RuntimeError):
                _place_order(engine, actor, key, order_id, fail=order_id % 5 == 0)
        client = redis.Redis.from_url(settings.redis_url)
        runs = wait_for(
            lambda: len(got := client.hgetall(f"{key}:runs")) >= 20 and got, timeout=90, what="20 orders"
        )
    finally:
        relay.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        worker.wait(30)
    committed = {str(i).encode() for i in range(1, 26) if i % 5}
    assert set(runs) == committed and set(runs.values()) == {b"1"}
    assert unsent_count(engine) == 0
