"""Helpers of the broker tests: a SQLite-backed settings, an in-process worker, polling waits."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dramatiq
import redis

from actors import build_broker
from actors.settings import Settings
from storage import create_db_engine, upgrade


def sqlite_settings(redis_url: str, namespace: str, tmp_path: Path, **overrides) -> Settings:
    """Settings of one test on a migrated SQLite file (the broker tests are about Redis)."""
    url = f"sqlite:///{tmp_path / 'tradeflow.db'}"
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    return Settings(redis_url=redis_url, namespace=namespace, database_url=url, **overrides)


@contextmanager
def running_worker(broker: dramatiq.Broker, *, threads: int = 2) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, worker_threads=threads)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        broker.close()


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def start_latencies_ms(
    settings: Settings, send: Callable[[dramatiq.Actor, float], None], *, count: int, idle: float, gap: float
) -> list[float]:
    """Milliseconds from send to start of ``count`` messages, ``gap`` s apart, after ``idle`` s."""
    broker = build_broker(settings)
    client = redis.Redis.from_url(settings.effective_redis_url)
    key = f"{settings.namespace}:started"

    @dramatiq.actor(broker=broker, queue_name="sparse", max_retries=0)
    def record(sent: float) -> None:
        client.rpush(key, (time.time() - sent) * 1000)

    with running_worker(broker):
        time.sleep(idle)
        for _ in range(count):
            send(record, time.time())
            time.sleep(gap)
        assert wait_until(lambda: client.llen(key) == count, timeout=10), "not every message ran"
    return [float(value) for value in client.lrange(key, 0, -1)]


def median(values: list[float]) -> float:
    return statistics.median(values)


#: Queue of the actors real worker processes run.
E2E_QUEUE = "broker-e2e"


def declare_slow(broker: dramatiq.Broker) -> dramatiq.Actor:
    """``slow(seconds)`` on ``broker``: records in Redis the pid that started and that finished each run."""
    client = broker.client
    namespace = broker.namespace

    @dramatiq.actor(broker=broker, queue_name=E2E_QUEUE, max_retries=0, actor_name="broker_slow")
    def slow(seconds: float) -> None:
        client.rpush(f"{namespace}:started", os.getpid())
        time.sleep(seconds)
        client.rpush(f"{namespace}:done", os.getpid())

    return slow
