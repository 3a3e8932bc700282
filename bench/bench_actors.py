"""Actors shared by both sides of a benchmark, declared on the broker each side builds."""

import os
import time
from typing import NamedTuple

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage
from opentelemetry import trace

#: Queue of the benchmark actors.
QUEUE = "bench"

_client = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def noop() -> None:
    pass


def burn(microseconds: int) -> None:
    """Spend ``microseconds`` of this thread's CPU time: a message that does some work."""
    deadline = time.thread_time() + microseconds / 1e6
    while time.thread_time() < deadline:
        pass


def latency_probe(sent_at: float, key: str) -> None:
    """Push how long after ``sent_at`` (time.time()) this message started, in ms."""
    assert CurrentMessage.get_current_message() is not None
    _redis().rpush(key, (time.time() - sent_at) * 1000)


def flush_spans() -> None:
    """Export the spans this worker process still holds (a no-op without a tracer provider)."""
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush()


class BenchActors(NamedTuple):
    noop: dramatiq.Actor
    burn: dramatiq.Actor
    latency_probe: dramatiq.Actor
    flush_spans: dramatiq.Actor


def declare(broker: dramatiq.Broker) -> BenchActors:
    """The bench actors, declared on ``broker`` (never on Dramatiq's implicit default broker)."""
    return BenchActors(
        *(
            dramatiq.actor(function, broker=broker, queue_name=QUEUE, max_retries=0)
            for function in (noop, burn, latency_probe, flush_spans)
        )
    )


class LatencyActors(NamedTuple):
    """``bench/latency.py``'s actors: ``stamp(sent)`` records its wait in ms, ``noop(index)``
    counts runs, ``busy(seconds)`` counts starts and sleeps."""

    stamp: dramatiq.Actor
    noop: dramatiq.Actor
    busy: dramatiq.Actor


def declare_latency(broker: dramatiq.Broker) -> LatencyActors:
    """``bench/latency.py``'s actors on ``broker``, a tradeflow broker (``client``, ``namespace``)."""
    client, namespace = broker.client, broker.namespace

    def stamp(sent: float) -> None:
        client.rpush(f"{namespace}:latency", (time.time() - sent) * 1000)

    def noop(index: int) -> None:
        client.incr(f"{namespace}:done")

    def busy(seconds: float) -> None:
        client.incr(f"{namespace}:busy")
        time.sleep(seconds)

    return LatencyActors(
        *(
            dramatiq.actor(function, broker=broker, queue_name=QUEUE, max_retries=0)
            for function in (stamp, noop, busy)
        )
    )
