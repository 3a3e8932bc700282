"""Actors shared by both sides of a benchmark, declared on whichever broker is global."""

import os
import time

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage
from opentelemetry import trace

_client = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop() -> None:
    pass


@dramatiq.actor(queue_name="bench", max_retries=0)
def burn(microseconds: int) -> None:
    """Spend ``microseconds`` of this thread's CPU time: a message that does some work."""
    deadline = time.thread_time() + microseconds / 1e6
    while time.thread_time() < deadline:
        pass


@dramatiq.actor(queue_name="bench", max_retries=0)
def latency_probe(sent_at: float, key: str) -> None:
    """Push how long after ``sent_at`` (time.time()) this message started, in ms."""
    assert CurrentMessage.get_current_message() is not None
    _redis().rpush(key, (time.time() - sent_at) * 1000)


@dramatiq.actor(queue_name="bench", max_retries=0)
def flush_spans() -> None:
    """Export the spans this worker process still holds (a no-op without a tracer provider)."""
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush()
