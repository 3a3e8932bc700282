"""The waking consumer: sparse and delayed messages start at once, lost notifications are polled for,
and Dramatiq's recovery of a killed worker's messages still works."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time

import dramatiq
import pytest
import redis
from broker_support import (
    declare_slow,
    median,
    running_worker,
    sqlite_settings,
    start_latencies_ms,
    wait_until,
)
from conftest import REPO_ROOT, settings_env
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from tcp_proxy import proxied_redis

from actors import build_broker
from actors.broker import ACK_HOLD_ATTRIBUTE, ADMISSION_ATTRIBUTE, WakeupRedisBroker


@pytest.fixture
def broker_settings(redis_url, namespace, tmp_path):
    return sqlite_settings(redis_url, namespace, tmp_path)


def test_build_broker_uses_waking_broker_unless_stock_asked(broker_settings):
    assert isinstance(build_broker(broker_settings), WakeupRedisBroker)
    stock = build_broker(broker_settings.model_copy(update={"stock_broker": True}))
    assert type(stock) is RedisBroker


@pytest.mark.timeout(30)
def test_sending_and_receiving_take_no_attribute_fallback(broker_settings, monkeypatch):
    """``__getattr__`` runs only after Python 3.11 has raised an AttributeError: a MessageProxy forwards
    every field read through it, and Dramatiq's RedisBroker makes its ``do_<command>`` script calls
    with it.  The waking broker sends and fetches through a method, its consumer's messages hold
    their fields, and the per-delivery attributes tradeflow reads (ack hold, admission verdict)
    default to None."""
    broker = build_broker(broker_settings)

    @dramatiq.actor(broker=broker, queue_name="fields", max_retries=0)
    def work(x: int, *, tag: str) -> None:
        pass

    fallbacks: list[str] = []
    for owner in (MessageProxy, RedisBroker):
        forward = owner.__getattr__
        monkeypatch.setattr(
            owner,
            "__getattr__",
            lambda self, name, forward=forward: fallbacks.append(name) or forward(self, name),
        )
    sent = work.send_with_options(args=(7,), kwargs={"tag": "t"}, priority="high")
    consumer = broker.consume("fields", prefetch=1, timeout=200)
    try:
        received = None
        deadline = time.monotonic() + 10
        while received is None and time.monotonic() < deadline:
            received = next(consumer)
        assert isinstance(received, MessageProxy)
        fields = [field.name for field in dataclasses.fields(dramatiq.Message)]
        read = {name: getattr(received, name) for name in fields}
        assert read == {name: getattr(received._message, name) for name in fields}
        assert (read["message_id"], read["args"], read["kwargs"]) == (sent.message_id, (7,), {"tag": "t"})
        assert read["options"] is received._message.options and read["options"]["priority"] == "high"
        assert getattr(received, ACK_HOLD_ATTRIBUTE, None) is None
        getattr(received, ADMISSION_ATTRIBUTE, None)  # set or not, read without a fallback (next line)
        assert fallbacks == []
        assert received.copy(queue_name="other").queue_name == "other"  # the rest still forwards
        assert fallbacks == ["copy"]
        received.fail()
        assert received.failed and not getattr(received._message, "failed", False)
        consumer.ack(received)
    finally:
        consumer.close()


@pytest.mark.timeout(60)
def test_sparse_message_after_long_idle_starts_quickly(broker_settings):
    # After 1.5 s idle stock Dramatiq polls every 0.5-1 s: its median here is hundreds of ms.
    latencies = start_latencies_ms(
        broker_settings, lambda actor, now: actor.send(now), count=4, idle=1.5, gap=1.5
    )
    assert median(latencies) < 100, latencies


@pytest.mark.timeout(60)
def test_delayed_message_wakes_consumer_when_due(broker_settings):
    delay_ms = 600
    latencies = start_latencies_ms(
        broker_settings,
        lambda actor, now: actor.send_with_options(args=(now,), delay=delay_ms),
        count=3,
        idle=1.5,
        gap=0.1,
    )
    late = [latency - delay_ms for latency in latencies]
    assert all(lateness >= -5 for lateness in late), late  # never early
    assert median(late) < 150, late


@pytest.mark.timeout(60)
def test_message_without_notification_is_processed_by_polling(broker_settings, redis_url):
    """Stock Dramatiq's script enqueues without publishing: only the fallback poll can find it."""
    broker = build_broker(broker_settings)
    client = redis.Redis.from_url(redis_url)
    done = f"{broker_settings.namespace}:done"

    @dramatiq.actor(broker=broker, queue_name="polled", max_retries=0)
    def work(tag: str) -> None:
        client.rpush(done, tag)

    stock = RedisBroker(url=redis_url, namespace=broker_settings.namespace)
    with running_worker(broker):
        time.sleep(1.5)
        stock.enqueue(work.message("silent"))
        assert wait_until(lambda: client.lrange(done, 0, -1) == [b"silent"], timeout=5)


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_killed_worker_message_is_recovered_after_heartbeat_timeout(broker_settings, redis_url):
    settings = broker_settings.model_copy(
        update={"heartbeat_timeout_ms": 2_000, "maintenance_chance": 1_000_000}
    )
    env = settings_env(settings)
    env["PYTHONPATH"] += os.pathsep + str(REPO_ROOT / "tests")
    client = redis.Redis.from_url(redis_url)
    started, done = f"{settings.namespace}:started", f"{settings.namespace}:done"
    producer = build_broker(settings)
    slow = declare_slow(producer)

    def spawn() -> subprocess.Popen:
        command = [
            sys.executable,
            "-m",
            "dramatiq",
            "actors",
            "broker_worker_actors",
            "-p",
            "1",
            "-t",
            "2",
        ]
        # A session of its own: killing its group kills every process of the worker.
        return subprocess.Popen(command, env=env, cwd=REPO_ROOT, start_new_session=True)

    first = spawn()
    second = None
    try:
        slow.send_with_options(args=(3.0,), priority="high")
        assert wait_until(lambda: client.llen(started) == 1, timeout=30), "first worker never started it"
        victim = int(client.lindex(started, 0))
        os.kill(victim, signal.SIGKILL)  # the worker process running the message
        os.killpg(first.pid, signal.SIGKILL)  # and the rest of that worker, as when a host dies
        first.wait(10)
        killed_at = time.monotonic()
        second = spawn()
        assert wait_until(lambda: client.llen(done) == 1, timeout=45), "the killed worker's message was lost"
        assert time.monotonic() - killed_at >= settings.heartbeat_timeout_ms / 1000
        runs = [int(pid) for pid in client.lrange(started, 0, -1)]
        finisher = int(client.lindex(done, 0))
        assert runs == [victim, finisher] and finisher != victim
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(20)
            if process is not None:
                with contextlib.suppress(ProcessLookupError):  # forked helpers the master left
                    os.killpg(process.pid, signal.SIGKILL)
        producer.close()


@pytest.mark.timeout(60)
def test_wakeups_resume_after_the_listener_connection_is_killed(broker_settings, redis_url):
    broker = build_broker(broker_settings)
    client = redis.Redis.from_url(redis_url)
    key = f"{broker_settings.namespace}:latency"

    @dramatiq.actor(broker=broker, queue_name="killed", max_retries=0)
    def record(sent: float) -> None:
        client.rpush(key, (time.time() - sent) * 1000)

    def latencies_after_idle(count: int) -> list[float]:
        client.delete(key)
        for _ in range(count):
            time.sleep(1.2)  # long enough for a polling consumer to be at its slowest
            record.send(time.time())
        assert wait_until(lambda: client.llen(key) == count, timeout=10)
        return [float(value) for value in client.lrange(key, 0, -1)]

    with running_worker(broker):
        listener = broker.listener
        assert listener.connected.wait(5)
        host, port = listener._pubsub.connection._sock.getsockname()[:2]
        ours = [c for c in client.client_list() if c["addr"] == f"{host}:{port}"]
        assert len(ours) == 1 and ours[0]["name"] == "tradeflow-wakeup"
        client.client_kill_filter(_id=ours[0]["id"])  # only this test's own connection
        latencies_after_idle(1)  # found by polling or by the reconnected listener: never lost

        def reconnected() -> bool:
            sock = listener._pubsub.connection and listener._pubsub.connection._sock
            return listener.connected.is_set() and sock is not None and sock.getsockname()[1] != port

        assert wait_until(reconnected, timeout=10), "the listener did not reconnect"
        assert ours[0]["id"] not in {c["id"] for c in client.client_list()}
        assert median(latencies_after_idle(3)) < 100


@pytest.mark.timeout(90)
def test_worker_survives_a_redis_outage_and_wakeups_resume(redis_url, namespace, tmp_path):
    proxy, proxied = proxied_redis(redis_url)
    settings = sqlite_settings(proxied, namespace, tmp_path, audit_enabled=False)
    broker = build_broker(settings)
    client = redis.Redis.from_url(redis_url)  # the producer and the test talk to Redis directly
    producer = WakeupRedisBroker(url=redis_url, namespace=namespace)
    key = f"{namespace}:latency"

    @dramatiq.actor(broker=broker, queue_name="outage", max_retries=0)
    def record(sent: float) -> None:
        client.rpush(key, (time.time() - sent) * 1000)

    def send() -> None:
        producer.enqueue(record.message(time.time()))

    try:
        with running_worker(broker):
            assert broker.listener.connected.wait(5)
            proxy.cut()
            time.sleep(2)
            send()  # while the worker cannot reach Redis
            proxy.restore()
            assert wait_until(lambda: client.llen(key) == 1, timeout=30), "message lost in the outage"
            assert wait_until(broker.listener.connected.is_set, timeout=30), "wake-ups did not resume"
            client.delete(key)
            for _ in range(3):
                time.sleep(1.2)
                send()
            assert wait_until(lambda: client.llen(key) == 3, timeout=10)
            assert median([float(value) for value in client.lrange(key, 0, -1)]) < 100
    finally:
        proxy.close()
        producer.close()
