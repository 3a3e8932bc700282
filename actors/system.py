"""The ``system`` queue: health checks that prove a deployment works end to end."""

from __future__ import annotations

import time

import dramatiq

from actors.middleware import worker_id

#: Queue of the system actors.
QUEUE = "system"


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0, time_limit=10_000)
def ping(payload: object = None) -> dict:
    """Answer with who handled the message and when; ``payload`` is echoed back."""
    return {"pong": True, "payload": payload, "worker": worker_id(), "at": time.time()}


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0, time_limit=10_000)
def health_check() -> dict:
    """Check this worker can reach Redis; the result says what answered."""
    broker = dramatiq.get_broker()
    started = time.perf_counter()
    broker.client.ping()
    return {"redis_ms": round((time.perf_counter() - started) * 1000, 3), "worker": worker_id()}
