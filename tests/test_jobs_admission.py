"""Admission at fetch time (tradeflow's broker): a message fetched and then cancelled before it
starts is still skipped, whether the worker heard the cancel or has to ask Redis; a message
fetched but requeued unstarted by a stopping worker is not counted as delivered."""

from __future__ import annotations

import threading

import dramatiq
import pytest
import redis
from broker_support import sqlite_settings, wait_until

from actors import build_broker
from actors.middleware import cancel_job


def queued_locally(client: redis.Redis, namespace: str, queue: str) -> int:
    """Messages of ``queue`` taken by a worker (in its ack set) and not acked yet."""
    keys = client.scan_iter(match=f"{namespace}:__acks__.*.{queue}", count=1000)
    return sum(client.scard(key) for key in keys)


@pytest.fixture
def one_slot(redis_url, namespace, tmp_path):
    """A broker whose worker (1 thread, prefetch 2) holds one blocked job and one fetched message."""
    settings = sqlite_settings(redis_url, namespace, tmp_path, broker_prefetch_scale=1, audit_enabled=False)
    broker = build_broker(settings)
    gate, ran = threading.Event(), []

    @dramatiq.actor(broker=broker, queue_name="slot", max_retries=0)
    def blocker() -> None:
        gate.wait(30)

    @dramatiq.actor(broker=broker, queue_name="slot", max_retries=0)
    def target(tag: str) -> None:
        ran.append(tag)

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    broker.test = (blocker, target, gate, ran, worker, redis.Redis.from_url(redis_url))
    yield broker
    gate.set()
    worker.stop(timeout=10_000)
    broker.close()


def _fetch_behind_blocker(broker) -> dramatiq.Message:
    blocker, target, _, _, worker, client = broker.test
    blocker.send()
    message = target.send("x")
    worker.start()
    assert wait_until(lambda: queued_locally(client, broker.namespace, "slot") == 2, timeout=10)
    assert client.llen(f"{broker.namespace}:slot") == 0  # both fetched, so both admitted
    return message


@pytest.mark.timeout(60)
def test_message_cancelled_after_its_fetch_is_skipped(one_slot):
    _, _, gate, ran, _, client = one_slot.test
    message = _fetch_behind_blocker(one_slot)
    assert wait_until(lambda: one_slot.listener.connected.is_set(), timeout=5)
    cancel_job(one_slot, message.message_id)
    assert wait_until(lambda: message.message_id in one_slot.listener.cancelled, timeout=5)
    gate.set()
    assert wait_until(lambda: queued_locally(client, one_slot.namespace, "slot") == 0, timeout=10)
    assert ran == []


@pytest.mark.timeout(60)
def test_cancel_the_listener_missed_is_read_from_redis(one_slot):
    _, _, gate, ran, _, client = one_slot.test
    message = _fetch_behind_blocker(one_slot)
    one_slot.listener.connected_at = float("inf")  # as if it reconnected after the fetch
    client.set(f"{one_slot.namespace}:cancel:{message.message_id}", "cancelled")  # no notification
    gate.set()
    assert wait_until(lambda: queued_locally(client, one_slot.namespace, "slot") == 0, timeout=10)
    assert ran == []


@pytest.mark.timeout(60)
def test_fetched_message_requeued_by_a_stopping_worker_is_not_counted_delivered(one_slot):
    _, _, gate, ran, worker, client = one_slot.test
    message = _fetch_behind_blocker(one_slot)
    (key,) = client.keys(f"{one_slot.namespace}:admit:{message.message_id}:*")
    assert client.hget(key, "deliveries") == b"1"
    threading.Timer(0.5, gate.set).start()
    worker.stop(timeout=10_000)  # the blocker finishes; the fetched target goes back unstarted
    assert ran == []
    assert client.llen(f"{one_slot.namespace}:slot") == 1
    assert client.hget(key, "deliveries") == b"0"
    worker = dramatiq.Worker(one_slot, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert wait_until(lambda: ran == ["x"], timeout=10)
        assert client.hget(key, "deliveries") == b"1"
    finally:
        worker.stop(timeout=10_000)
