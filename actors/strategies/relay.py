"""The bridge from the legacy ``strategy_queue`` Redis list to the strategy actors.

Producers in any language ``LPUSH strategy_queue <json>`` (see
``docs/strategy.md`` for the wire format).  The relay moves each document
atomically (``BLMOVE``) to a processing list, validates it, sends the
Dramatiq message, and only then removes it from the processing list.  A relay
that dies between the move and the send leaves the document there, and the
next relay start sends it (at-least-once: a document whose message was sent
just before the crash runs twice and writes the same result).

An invalid document gets an ``error`` result under its ``task_id`` (when it
has a usable one) and is kept on the ``:invalid`` list for inspection.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import redis
from dramatiq import Broker, Message
from dramatiq.logging import get_logger

from .results import TaskResultStore
from .wire import InvalidTask, StrategyTask, parse_task

#: Seconds one BLMOVE waits before the relay checks whether it should stop.
BLOCK_SECONDS = 1.0

#: Seconds between two attempts while Redis is unreachable.
RETRY_SECONDS = 1.0

#: Invalid documents kept for inspection, newest first.
INVALID_KEPT = 1_000

#: Queue and actor of each seed ``task_type`` (see :mod:`actors.strategy`).
QUEUE = "strategy"
ACTOR_OF_TYPE = {"backtest": "run_backtest", "screening": "run_screening"}

Dispatch = Callable[[StrategyTask], None]


class StrategyQueueRelay:
    """Moves tasks from the legacy list to the strategy actors without losing any.

    Parameters:
      client(redis.Redis): The Redis the producers push to.
      source(str): The list producers ``LPUSH`` to (``strategy_queue``).
      results(TaskResultStore): Where invalid tasks get their ``error`` result.
      dispatch(callable): Sends the Dramatiq message of a valid task.
      block_seconds(float): Longest wait of one ``BLMOVE``.  Defaults to 1.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        source: str,
        results: TaskResultStore,
        dispatch: Dispatch,
        block_seconds: float = BLOCK_SECONDS,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.source = source
        self.processing = f"{source}:processing"
        self.invalid = f"{source}:invalid"
        self.results = results
        self.dispatch = dispatch
        self.block_seconds = block_seconds

    def recover(self) -> int:
        """Send what a previous relay moved but did not finish; returns how many."""
        pending = self.client.lrange(self.processing, 0, -1)
        for raw in reversed(pending):  # oldest first: LMOVE pushes to the left
            self._handle(raw)
        if pending:
            self.logger.warning("Recovered %d task(s) left by a relay that stopped mid-way.", len(pending))
        return len(pending)

    def relay_one(self) -> bool:
        """Move and handle the oldest task, waiting up to ``block_seconds``; False if none came."""
        raw = self.client.blmove(self.source, self.processing, self.block_seconds, "RIGHT", "LEFT")
        if raw is None:
            return False
        self._handle(raw)
        return True

    def run(self, stop: threading.Event) -> None:
        """Recover, then relay until ``stop`` is set; waits out Redis outages (the lists keep the tasks)."""
        recovered = False
        while not stop.is_set():
            try:
                if not recovered:
                    self.recover()
                    recovered = True
                self.relay_one()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.logger.warning("Redis unreachable (%s); retrying in %.0fs.", exc, RETRY_SECONDS)
                stop.wait(RETRY_SECONDS)

    def _handle(self, raw: bytes) -> None:
        try:
            task = parse_task(raw)
        except InvalidTask as exc:
            self._reject(raw, exc)
        else:
            self.dispatch(task)
            self.logger.debug("Relayed %s task %s.", task.task_type, task.task_id)
        self.client.lrem(self.processing, 1, raw)

    def _reject(self, raw: bytes, exc: InvalidTask) -> None:
        self.logger.warning("Rejected a task from %s: %s", self.source, exc)
        if exc.task_id is not None:
            self.results.error(exc.task_id, str(exc))
        entry = json.dumps({"error": str(exc), "document": raw.decode(errors="replace")})
        self.client.pipeline().lpush(self.invalid, entry).ltrim(self.invalid, 0, INVALID_KEPT - 1).execute()


def dispatch_through(broker: Broker) -> Dispatch:
    """A dispatch that enqueues ``run_backtest`` / ``run_screening`` messages on ``broker``.

    Messages are addressed by actor name, so the relay needs no actor code.
    """

    def dispatch(task: StrategyTask) -> None:
        message = Message(
            queue_name=QUEUE,
            actor_name=ACTOR_OF_TYPE[task.task_type],
            args=(task.task_id, task.args),
            kwargs={},
            options={},
        )
        broker.enqueue(message)

    return dispatch
