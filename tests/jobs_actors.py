"""Actors the job-control tests run in real worker processes (``dramatiq actors tests.jobs_actors``).

Each leaves marks in Redis under the key it is given, so the test can see what ran.
"""

import os
import signal
import time

import dramatiq


def _client():
    return dramatiq.get_broker().client


@dramatiq.actor(queue_name="crashing", max_retries=3)
def crash(key: str) -> None:
    """Kill this worker process, like a segfault or the OOM killer would."""
    _client().incr(f"{key}:starts")
    os.kill(os.getpid(), signal.SIGKILL)


@dramatiq.actor(queue_name="crashing", max_retries=0)
def healthy(key: str) -> None:
    _client().incr(f"{key}:done")


@dramatiq.actor(queue_name="idle", max_retries=0, time_limit=120_000)
def slow(key: str, seconds: float) -> None:
    """Mark each start with its time, then work for ``seconds``."""
    _client().rpush(f"{key}:starts", time.time())
    time.sleep(seconds)
    _client().incr(f"{key}:done")


@dramatiq.actor(queue_name="orders", max_retries=0)
def order_placed(key: str, order_id: int) -> None:
    """Count runs per order: a duplicate would show as 2."""
    _client().hincrby(f"{key}:runs", str(order_id), 1)


@dramatiq.actor(queue_name="idle", max_retries=3, min_backoff=10, time_limit=120_000)
def stepwise(key: str, seconds: float) -> None:
    """Work for ``seconds`` in short steps (a cancellation lands between two of them)."""
    _client().rpush(f"{key}:starts", time.time())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
    _client().incr(f"{key}:done")


@dramatiq.actor(queue_name="delayed", max_retries=0)
def delayed_once(key: str) -> None:
    _client().rpush(f"{key}:runs", os.getpid())


class KillDuringDelayMove(dramatiq.Middleware):
    """Reproduces Dramatiq's non-atomic delay move for ``delayed_once``: counts each move of the
    message to its queue, and, when ``<key>:kill`` is set, dies between the move and the ack
    of the delay-queue entry, so that entry is recovered and moved a second time."""

    def after_enqueue(self, broker, message, delay):
        if message.actor_name == "delayed_once" and delay is None:
            broker.client.incr(f"{message.args[0]}:moves")

    def before_ack(self, broker, message):
        moving = message.actor_name == "delayed_once" and message.queue_name.endswith(".DQ")
        if moving and broker.client.getdel(f"{message.args[0]}:kill"):
            os.kill(os.getpid(), signal.SIGKILL)


dramatiq.get_broker().add_middleware(KillDuringDelayMove())
