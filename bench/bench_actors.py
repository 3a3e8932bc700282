"""Actors shared by both sides of a benchmark, declared on whichever broker is global."""

import os
import time

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage

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
def latency_probe(sent_at: float, key: str) -> None:
    """Push how long after ``sent_at`` (time.time()) this message started, in ms."""
    assert CurrentMessage.get_current_message() is not None
    _redis().rpush(key, (time.time() - sent_at) * 1000)
