"""Deferred acks: a finished message is acked with its consumer's next fetch, after its hold
(the audit row's commit) is released, and a stopping worker sends every ack it still holds."""

from __future__ import annotations

import sqlite3
import threading
import time

import dramatiq
import pytest
import redis
from broker_support import running_worker, sqlite_settings, wait_until
from dramatiq.middleware import CurrentMessage
from tcp_proxy import proxied_redis

from actors import build_broker
from actors.broker import hold_ack
from storage import create_db_engine, get_task


class Gate:
    """An ack hold the test opens by hand."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.callbacks: list = []

    def released(self) -> bool:
        return self.open.is_set()

    def notify(self, callback) -> None:
        self.callbacks.append(callback)

    def wait(self, timeout: float) -> None:
        self.open.wait(timeout)

    def release(self) -> None:
        self.open.set()
        for callback in self.callbacks:
            callback()


def ack_sets(client: redis.Redis, namespace: str) -> list[bytes]:
    """The namespace's sets of in-flight messages (one per worker and queue)."""
    return list(client.scan_iter(match=f"{namespace}:__acks__.*", count=1000))


def unacked(client: redis.Redis, namespace: str, keys: list[bytes] | None = None) -> int:
    return sum(client.scard(key) for key in keys or ack_sets(client, namespace))


def stored(client: redis.Redis, namespace: str, queue: str) -> int:
    return client.hlen(f"{namespace}:{queue}.msgs")


@pytest.mark.timeout(60)
def test_ack_waits_for_its_hold_then_goes_out_at_once(redis_url, namespace, tmp_path):
    settings = sqlite_settings(redis_url, namespace, tmp_path, audit_enabled=False)
    broker = build_broker(settings)
    client = redis.Redis.from_url(redis_url)
    gate, ran = Gate(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="held", max_retries=0)
    def held() -> None:
        hold_ack(CurrentMessage.get_current_message(), gate)
        ran.set()

    with running_worker(broker):
        held.send()
        assert ran.wait(10)
        time.sleep(0.5)  # the consumer loops (and fetches) meanwhile: the ack must stay held
        keys = ack_sets(client, namespace)  # found once: a SCAN of a full database is slow
        assert unacked(client, namespace, keys) == 1
        assert stored(client, namespace, "held") == 1
        started = time.monotonic()
        gate.release()
        assert wait_until(lambda: unacked(client, namespace, keys) == 0, timeout=5)
        # released through the hold's callback, not the 1 s poll
        assert time.monotonic() - started < 0.5
        assert stored(client, namespace, "held") == 0


@pytest.mark.timeout(60)
def test_stopping_worker_sends_the_acks_it_holds(redis_url, namespace, tmp_path):
    settings = sqlite_settings(redis_url, namespace, tmp_path, audit_enabled=False)
    broker = build_broker(settings)
    client = redis.Redis.from_url(redis_url)
    gate, count = Gate(), 20
    done = []

    @dramatiq.actor(broker=broker, queue_name="held", max_retries=0)
    def held(i: int) -> None:
        hold_ack(CurrentMessage.get_current_message(), gate)
        done.append(i)

    with running_worker(broker, threads=4):
        for i in range(count):
            held.send(i)
        assert wait_until(lambda: len(done) == count, timeout=10)
        assert unacked(client, namespace) == count
        threading.Timer(0.3, gate.release).start()  # released while the worker is stopping
    assert unacked(client, namespace) == 0
    assert stored(client, namespace, "held") == 0
    assert client.llen(f"{namespace}:held") == 0  # acked, not requeued


@pytest.mark.timeout(90)
def test_message_is_not_acked_before_its_audit_row_commits(redis_url, namespace, tmp_path):
    settings = sqlite_settings(redis_url, namespace, tmp_path, audit_commit_wait_ms=20_000)
    broker = build_broker(settings)
    client = redis.Redis.from_url(redis_url)
    ran = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="audited", max_retries=0)
    def audited() -> None:
        ran.set()

    path = settings.database_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, timeout=30, isolation_level=None)
    with running_worker(broker):
        message = audited.send()
        blocker.execute("BEGIN IMMEDIATE")  # the audit writer cannot commit until this ends
        try:
            assert ran.wait(10)
            time.sleep(1.0)
            assert unacked(client, namespace) == 1, "acked before its audit row was committed"
        finally:
            blocker.execute("COMMIT")
        assert wait_until(lambda: unacked(client, namespace) == 0, timeout=15)
        assert get_task(create_db_engine(settings.database_url), message.message_id).status == "completed"


@pytest.mark.timeout(60)
def test_acks_a_lost_connection_kept_go_out_with_the_next_consumer(redis_url, namespace, tmp_path):
    """The acks a consumer could not send (its fetch, then its close, failed) are kept for the
    consumer Dramatiq starts once Redis is back: the messages are acked, not run again."""
    link, proxied = proxied_redis(redis_url)
    settings = sqlite_settings(proxied, namespace, tmp_path, audit_enabled=False)
    broker = build_broker(settings)
    client = redis.Redis.from_url(redis_url)
    gate, runs, count = Gate(), [], 10

    @dramatiq.actor(broker=broker, queue_name="held", max_retries=0)
    def held(i: int) -> None:
        hold_ack(CurrentMessage.get_current_message(), gate)
        runs.append(i)

    try:
        with running_worker(broker, threads=4):
            for i in range(count):
                held.send(i)
            assert wait_until(lambda: len(runs) == count, timeout=10)
            assert unacked(client, namespace) == count
            link.cut()
            gate.release()  # the acks are due while Redis is unreachable
            time.sleep(1.5)  # the consumer's fetch fails; Dramatiq closes it and restarts it
            assert unacked(client, namespace) == count, "nothing could be acked yet"
            link.restore()
            assert wait_until(lambda: unacked(client, namespace) == 0, timeout=20)
            assert stored(client, namespace, "held") == 0
    finally:
        link.close()
    assert sorted(runs) == list(range(count)), "no message ran again"
