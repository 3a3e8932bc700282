"""Actors of ``bench/latency.py``, run by its worker processes (``dramatiq actors latency_actors``)."""

import time

import dramatiq

#: Queue of the benchmark actors.
QUEUE = "bench"


def declare(broker: dramatiq.Broker) -> tuple[dramatiq.Actor, dramatiq.Actor, dramatiq.Actor]:
    """On ``broker``: ``stamp(sent)`` records its wait in ms, ``noop(index)`` counts runs,
    ``busy(seconds)`` counts starts and sleeps."""
    client, namespace = broker.client, broker.namespace

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def stamp(sent: float) -> None:
        client.rpush(f"{namespace}:latency", (time.time() - sent) * 1000)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def noop(index: int) -> None:
        client.incr(f"{namespace}:done")

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def busy(seconds: float) -> None:
        client.incr(f"{namespace}:busy")
        time.sleep(seconds)

    return stamp, noop, busy


stamp, noop, busy = declare(dramatiq.get_broker())
