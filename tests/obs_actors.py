"""Actors of the observability tests, declared on any broker (workers: the global one).

Worker processes load them with ``dramatiq actors tests.obs_worker``.
"""

from __future__ import annotations

import logging
import time

import dramatiq
from dramatiq.middleware import CurrentMessage
from opentelemetry import trace

#: Queue of the traced actors.
QUEUE = "obs"

#: Queue no test worker listens to, so its depth stays put.
IDLE_QUEUE = "obs_idle"

logger = logging.getLogger("tests.obs_actors")
tracer = trace.get_tracer("tests.obs_actors")


def obs_step(value: int) -> int:
    with tracer.start_as_current_span("obs_step work"):
        logger.warning("obs_step handling %s", value)
        time.sleep(0.02)  # long enough for every worker process to get a share
        return value + 1


def obs_flaky(value: int) -> int:
    """Fails on its first attempt, succeeds on the retry."""
    if CurrentMessage.get_current_message().options.get("retries", 0) == 0:
        raise RuntimeError(f"first attempt of {value} fails")
    return value


def obs_fail(value: int) -> None:
    raise ValueError(f"always fails ({value})")


def obs_idle() -> None:
    """Never runs in the tests: its queue has no worker."""


def declare(broker: dramatiq.Broker) -> dict[str, dramatiq.Actor]:
    """Declare the actors on ``broker``; by name."""
    return {
        "obs_step": dramatiq.actor(obs_step, broker=broker, queue_name=QUEUE, store_results=True),
        "obs_flaky": dramatiq.actor(obs_flaky, broker=broker, queue_name=QUEUE, store_results=True),
        "obs_fail": dramatiq.actor(obs_fail, broker=broker, queue_name=QUEUE, max_retries=0),
        "obs_idle": dramatiq.actor(obs_idle, broker=broker, queue_name=IDLE_QUEUE),
    }
