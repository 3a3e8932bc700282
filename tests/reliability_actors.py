"""Actors of the reliability tests.  Each leaves marks in Redis under the key prefix it is
given, so a test sees what ran, how often, and with which idempotency key.  Worker processes
run them with ``dramatiq tests.reliability_worker``."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import dramatiq

from saga import current_step

#: The queue of every actor here.
QUEUE = "reliable"

#: Milliseconds before ``fail_later`` is retried.
RETRY_BACKOFF_MS = 3_000

#: Seconds the first run of ``slow_undo`` takes.
FIRST_UNDO_SECONDS = 30


def declare_actors(broker) -> SimpleNamespace:
    """Declare the actors on ``broker``."""
    client = broker.client

    def mark(prefix: str, what: str) -> int:
        client.rpush(f"{prefix}:log", what)
        return client.hincrby(f"{prefix}:count", what, 1)

    def actor(**options):
        return lambda fn: dramatiq.actor(fn, broker=broker, queue_name=QUEUE, **{"max_retries": 0, **options})

    @actor()
    def hold(prefix: str) -> str:
        """A step that succeeds at once and records its idempotency key."""
        mark(prefix, "hold")
        client.rpush(f"{prefix}:keys", current_step().idempotency_key)
        return "held"

    @actor()
    def slow_undo(prefix: str, result=None) -> None:
        """A compensation that takes :data:`FIRST_UNDO_SECONDS` the first time it runs (a test
        kills its worker meanwhile), and records its key."""
        client.rpush(f"{prefix}:keys", current_step().idempotency_key)
        client.rpush(f"{prefix}:masters", os.getppid())  # the dramatiq process a test kills
        if mark(prefix, "undo-start") == 1:
            time.sleep(FIRST_UNDO_SECONDS)
        mark(prefix, "undo-done")

    @actor()
    def slow_step(prefix: str, seconds: float) -> str:
        """A step that takes ``seconds`` the first time it runs."""
        if mark(prefix, "step-start") == 1:
            time.sleep(seconds)
        mark(prefix, "step-done")
        return "done"

    @actor()
    def refuse(prefix: str) -> None:
        """A step that fails for good."""
        mark(prefix, "refuse")
        raise RuntimeError("refused on purpose")

    @actor(max_retries=3, min_backoff=RETRY_BACKOFF_MS, max_backoff=RETRY_BACKOFF_MS, jitter=0)
    def fail_later(prefix: str, seconds: float) -> None:
        """A step that fails after ``seconds`` with retries left (:data:`RETRY_BACKOFF_MS` away)."""
        time.sleep(seconds)
        mark(prefix, "fail-later")
        raise RuntimeError("failed with retries left")

    @actor()
    def kill_worker(prefix: str) -> None:
        """A poison message: kills the worker process running it."""
        mark(prefix, "kill")
        os.kill(os.getpid(), signal.SIGKILL)

    @actor()
    def note(prefix: str, label: str, seconds: float = 0.0) -> None:
        """An ordinary job, taking ``seconds``."""
        mark(prefix, f"start:{label}")
        time.sleep(seconds)
        mark(prefix, label)

    declared = (hold, slow_undo, slow_step, refuse, fail_later, kill_worker, note)
    return SimpleNamespace(**{a.actor_name: a for a in declared})
