"""Cancelling jobs: a waiting one never starts, a running one is interrupted, neither is retried.

:func:`cancel_job` sets ``<ns>:cancel:<message id>`` in Redis.  A message that
has not started is skipped by :class:`actors.broker.admission.Admission` when its
turn comes (its audit row turns ``cancelled`` at once); a running one gets
:class:`JobCancelled` raised in its thread by :class:`CancelWatcher` within one
poll interval.  The saga engine, which must not import actors, is handed a
:data:`Canceller` made by :func:`canceller`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from dramatiq import Broker, Middleware
from dramatiq.brokers.redis import RedisBroker
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.threading import raise_thread_exception
from sqlalchemy import Engine

from actors.broker import cancel_channel, cancel_key, routes_of
from storage import TERMINAL_STATUSES, cancel_waiting_task, get_task

from .errors import JobCancelled

#: How long a cancellation is kept by default: longer than the longest delay (7 days).
DEFAULT_CANCEL_TTL = 8 * 86_400_000


class CancelState(StrEnum):
    """What :func:`cancel_job` found."""

    #: Waiting (pending, delayed or between retries): it will never start.
    CANCELLED = "cancelled"
    #: Running: its worker interrupts it within a poll interval.
    CANCELLING = "cancelling"
    #: Already finished: nothing to cancel.
    FINISHED = "finished"
    #: No audit row: the cancellation is recorded and applies if the job turns up.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """The job, what was done, and its audit status when it was found (``None``: no row)."""

    message_id: str
    state: CancelState
    status: str | None


def cancel_job(
    broker: RedisBroker,
    message_id: str,
    *,
    engine: Engine | None = None,
    ttl: int = DEFAULT_CANCEL_TTL,
    reason: str = "cancelled",
) -> CancelOutcome:
    """Cancel the job ``message_id``; with ``engine``, its audit row tells what state it was in."""
    if not message_id:
        raise ValueError("cancel_job needs a message id")
    row = get_task(engine, message_id) if engine is not None else None
    if row is not None and row.status in TERMINAL_STATUSES:
        return CancelOutcome(message_id, CancelState.FINISHED, row.status)
    # the flag first: a worker admitting the job from now on skips it; the
    # notification reaches workers that admitted it already but have not started it
    # on every Redis: the id does not say which queue (so which Redis) holds the job
    for client in routes_of(broker).clients():
        pipeline = client.pipeline(transaction=False)
        pipeline.set(cancel_key(broker.namespace, message_id), reason, px=ttl)
        pipeline.publish(cancel_channel(broker.namespace), message_id)
        pipeline.execute()
    if row is None:
        return CancelOutcome(message_id, CancelState.UNKNOWN, None)
    if cancel_waiting_task(engine, message_id, reason=reason):
        return CancelOutcome(message_id, CancelState.CANCELLED, row.status)
    row = get_task(engine, message_id)
    if row.status in TERMINAL_STATUSES and row.status != "cancelled":
        for client in routes_of(broker).clients():  # it finished meanwhile
            client.delete(cancel_key(broker.namespace, message_id))
        return CancelOutcome(message_id, CancelState.FINISHED, row.status)
    return CancelOutcome(message_id, CancelState.CANCELLING, row.status)


#: What the saga engine is given to cancel a job by message id (it never imports actors).
Canceller = Callable[[str], CancelOutcome]


def canceller(broker: RedisBroker, *, engine: Engine | None, ttl: int = DEFAULT_CANCEL_TTL) -> Canceller:
    """``cancel_job`` bound to a broker and database: the function orchestration hands to the saga engine."""
    return functools.partial(cancel_job, broker, engine=engine, ttl=ttl)


class CancelWatcher(Middleware):
    """Interrupts running jobs whose cancellation flag appears.

    Parameters:
      interval(int): Milliseconds between two checks of this process's running
        jobs (one ``MGET``, only while jobs run).  Defaults to 500.
    """

    def __init__(self, *, interval: int = 500) -> None:
        self.logger = get_logger(__name__, type(self))
        self.interval = interval / 1000
        self._running: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def after_worker_boot(self, broker: Broker, worker) -> None:
        self._stopping.clear()
        threading.Thread(target=self._watch, args=(broker,), name="tradeflow-cancel", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker) -> None:
        self._stopping.set()

    def before_process_message(self, broker: Broker, message: Message) -> None:
        with self._lock:
            self._running[threading.get_ident()] = message.message_id

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        with self._lock:
            self._running.pop(threading.get_ident(), None)

    after_skip_message = after_process_message

    def _watch(self, broker: Broker) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self._interrupt_cancelled(broker)
            except Exception as exc:  # Redis away: try again next interval
                self.logger.warning("Could not check for cancelled jobs: %s", exc)

    def _interrupt_cancelled(self, broker: Broker) -> None:
        with self._lock:
            running = list(self._running.items())
        if not running:
            return
        # cancel_job sets the flag on every Redis: the default one answers for all queues
        flags = broker.client.mget([cancel_key(broker.namespace, message_id) for _, message_id in running])
        for (thread_id, message_id), flag in zip(running, flags, strict=True):
            if flag is None:
                continue
            with self._lock:
                if self._running.get(thread_id) != message_id:
                    continue  # finished meanwhile
                del self._running[thread_id]
            self.logger.info("Interrupting cancelled job %r.", message_id)
            raise_thread_exception(thread_id, JobCancelled)
