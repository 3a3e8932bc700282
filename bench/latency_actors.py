"""Actors of ``bench/latency.py``, run by its worker processes (``dramatiq actors latency_actors``)."""

import time

import dramatiq

#: Queue of the benchmark actors.
QUEUE = "bench"


def declare(broker: dramatiq.Broker) -> tuple[dramatiq.Actor, dramatiq.Actor]:
    """``stamp(sent)`` records its wait in ms; ``noop(index)`` counts runs.  Both on ``broker``."""
    client, namespace = broker.client, broker.namespace

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def stamp(sent: float) -> None:
        client.rpush(f"{namespace}:latency", (time.time() - sent) * 1000)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def noop(index: int) -> None:
        client.incr(f"{namespace}:done")

    return stamp, noop


stamp, noop = declare(dramatiq.get_broker())
