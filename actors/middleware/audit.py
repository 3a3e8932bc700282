"""Audit middleware: writes each message's lifecycle to the audit trail."""

from __future__ import annotations

import os
import socket
import time
import traceback

from dramatiq import Broker, Middleware
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message
from opentelemetry import trace

from actors.broker import AUDIT_SEQ_BASE, DUPLICATE, SKIP_REASON, SKIP_STATUS, hold_ack
from storage import AttemptEvent, AuditWriter, TaskEvent, TaskStatus, utc_from_millis, utc_now

from .errors import JobCancelled, missing_extra

#: Longest error text kept in an audit row, in characters.
MAX_ERROR_LENGTH = 4_000

#: Priority recorded for a message that names none.
DEFAULT_PRIORITY = "normal"

#: Longest traceback kept in an attempt row, in characters (its end: the innermost frames).
MAX_TRACEBACK_LENGTH = 8_000

#: The message option carrying the trace context (``saga.run_tracing.CONTEXT_OPTION``).
_TRACE_CONTEXT = "trace_context"

_HOSTNAME = socket.gethostname()
_worker_id = ("", -1)


def worker_id() -> str:
    """``host:pid`` of this process."""
    global _worker_id
    pid = os.getpid()
    if _worker_id[1] != pid:
        _worker_id = (f"{_HOSTNAME}:{pid}", pid)
    return _worker_id[0]


def describe_exception(exception: BaseException) -> str:
    text = f"{type(exception).__name__}: {exception}"
    return text[:MAX_ERROR_LENGTH]


def format_traceback(exception: BaseException) -> str | None:
    """The traceback of ``exception``, its last :data:`MAX_TRACEBACK_LENGTH` characters."""
    if exception.__traceback__ is None:
        return None
    text = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
    if len(text) > MAX_TRACEBACK_LENGTH:
        text = "…" + text[-MAX_TRACEBACK_LENGTH + 1 :]
    return text


def trace_id_of(message: Message) -> str | None:
    """The trace id of ``message``'s processing, 32 hex digits: the current span's (the
    ``Tracing`` middleware's process span), else the one its ``traceparent`` carries."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return trace.format_trace_id(span_context.trace_id)
    carrier = message.options.get(_TRACE_CONTEXT)
    value = carrier.get("traceparent") if isinstance(carrier, dict) else None
    parts = value.split("-") if isinstance(value, str) else ()
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1]
    return None


class CommitHold:
    """Holds a message's ack until its audit row is committed.

    Released early when the database is failing (the row is retried; waiting
    would only stall the queue) or after ``wait`` seconds, with a warning.

    Parameters:
      writer(AuditWriter): The writer the row went to.
      ticket(int): The row's ticket from :meth:`AuditWriter.track`.
      wait(float): Longest hold, in seconds.
    """

    __slots__ = ("_expired", "deadline", "ticket", "writer")

    def __init__(self, *, writer: AuditWriter, ticket: int, wait: float) -> None:
        self.writer = writer
        self.ticket = ticket
        self.deadline = time.monotonic() + wait
        self._expired = False

    def released(self) -> bool:
        if self.writer.settled(self.ticket):
            return True
        if time.monotonic() < self.deadline:
            return False
        if not self._expired:
            self._expired = True
            get_logger(__name__, type(self)).warning(
                "Audit row not committed in time (%s); acking anyway, the write is retried.",
                self.writer.last_error or "writer busy",
            )
        return True

    def notify(self, callback) -> None:
        self.writer.on_settle(callback)

    def wait(self, timeout: float) -> None:
        self.writer.wait_settled(self.ticket, min(timeout, max(0.0, self.deadline - time.monotonic())))


class Audit(Middleware):
    """Records enqueue -> pending, start -> running, failure with retries left ->
    retrying, success -> completed, retries exhausted -> dead_letter, an
    expected (``throws``) error -> failed, a cancelled job -> cancelled, one row
    per message id.  A message skipped by ``Admission`` is recorded with the
    status and reason it set (a duplicate delivery is not recorded at all); a
    retry from the dead letters continues the row with a higher ``seq``.

    A finished message is acked only after its row is committed (or after
    ``commit_wait``), so a SIGKILL can never leave a row ``running`` for a
    message that completed.  On a broker that defers acks
    (:mod:`actors.broker.acks`) the worker thread does not wait for that: the
    message carries a :class:`CommitHold` its consumer honours.  Must come
    before ``Retries`` in the middleware list: ``after_*`` hooks run in
    reverse order, and this one needs the retry decision.

    Parameters:
      writer(AuditWriter): Where events go.
      default_max_retries(int): Recorded when neither message nor actor sets one.
      default_time_limit(int): Likewise, in milliseconds.
      commit_wait(float): Seconds a finished message waits for its row to be
        committed before the worker acks it anyway.  Defaults to 5.
      running_delay(float): Seconds a ``running`` event is held before it is
        written; a message that finishes sooner costs one row write, not two.
        Defaults to 0.2.
    """

    def __init__(
        self,
        *,
        writer: AuditWriter,
        default_max_retries: int | None = None,
        default_time_limit: int | None = None,
        commit_wait: float = 5.0,
        running_delay: float = 0.2,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.writer = writer
        self.default_max_retries = default_max_retries
        self.default_time_limit = default_time_limit
        self.commit_wait = commit_wait
        self.running_delay = running_delay
        self._started: dict[str, tuple[float, int]] = {}

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        if message.options.get("retries"):
            return  # a retry's re-enqueue: after_process_message already recorded it
        self.writer.submit(self._event(broker, message, TaskStatus.PENDING, seq=0))

    def before_process_message(self, broker: Broker, message: Message) -> None:
        attempt = message.options.get("retries", 0)
        event = self._event(broker, message, TaskStatus.RUNNING, seq=attempt * 3 + 1)
        event.started_at = utc_now()
        event.worker_id = worker_id()
        event.trace_id = trace_id = trace_id_of(message)
        self._started[message.message_id] = (time.perf_counter(), attempt, event.started_at, trace_id)
        if event.seq // 3:  # a first attempt gets a row only if it fails: its task's row says the rest
            event.attempt = self._attempt(event)
        self.writer.submit(event, defer=self.running_delay)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        started, attempt, started_at, trace_id = self._started.pop(
            message.message_id, (None, message.options.get("retries", 0), None, None)
        )
        if exception is None:
            status, retry_count = TaskStatus.COMPLETED, attempt
        elif isinstance(exception, JobCancelled):
            status, retry_count = TaskStatus.CANCELLED, attempt
        elif not message.failed:
            status, retry_count = TaskStatus.RETRYING, attempt + 1
        elif self._is_expected(broker, message, exception):
            status, retry_count = TaskStatus.FAILED, attempt
        else:
            status, retry_count = TaskStatus.DEAD_LETTER, attempt
        event = self._outcome(message, status, seq=attempt * 3 + 2)
        event.retry_count = retry_count
        event.worker_id = worker_id()
        if exception is not None:
            extra = missing_extra(exception)
            event.error_message = describe_exception(exception) + (f": {extra}" if extra else "")
        if status is not TaskStatus.RETRYING:
            event.completed_at = utc_now()
        if started is not None:
            event.processing_time_ms = (time.perf_counter() - started) * 1000
        event.trace_id = trace_id or trace_id_of(message)
        if exception is None and not event.seq // 3:
            # the common case, a first attempt that succeeded: the task's row holds all of it
            # (storage.get_attempts reads it so), and the writer spares a second row
            self._commit(broker, message, event)
            return
        record = event.attempt = self._attempt(event)
        record.retry_count = attempt  # the attempt's own number within its budget, not the next one's
        record.started_at = started_at
        record.finished_at = event.completed_at or utc_now()
        record.duration_ms = event.processing_time_ms
        if exception is not None:
            record.error_type = type(exception).__name__
            record.error_message = event.error_message
            record.traceback = format_traceback(exception)
        self._commit(broker, message, event)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        if message.options.get(SKIP_STATUS) == DUPLICATE:
            return  # the original delivery (maybe running here now) owns the row
        attempt = self._started.pop(message.message_id, (None, message.options.get("retries", 0)))[1]
        status = TaskStatus.FAILED if message.failed else TaskStatus.CANCELLED
        status = TaskStatus(message.options.get(SKIP_STATUS, status))
        # a skipped message may never have had a row: write all it says about itself
        event = self._event(broker, message, status, seq=attempt * 3 + 2)
        event.retry_count = attempt
        event.worker_id = worker_id()
        event.completed_at = utc_now()
        default_reason = "skipped before running (message too old)" if message.failed else "skipped"
        event.error_message = message.options.get(SKIP_REASON, default_reason)
        self._commit(broker, message, event)

    def after_worker_boot(self, broker: Broker, worker) -> None:
        self.writer.start()  # replays what a worker that stopped with the database down left

    def after_nack(self, broker: Broker, message: Message) -> None:
        if message.actor_name in broker.actors:
            return  # it ran (or was skipped) here: that hook recorded it
        # Dramatiq dead-letters a message for an actor this worker does not
        # have without running any middleware: the row says so (raw producers).
        attempt = message.options.get("retries", 0)
        event = self._event(broker, message, TaskStatus.DEAD_LETTER, seq=attempt * 3 + 2)
        event.worker_id = worker_id()
        event.completed_at = utc_now()
        event.error_message = f"ActorNotFound: no actor named {message.actor_name!r} in this worker"
        self.writer.submit(event)

    def after_worker_shutdown(self, broker: Broker, worker) -> None:
        self.writer.close(self.commit_wait)

    def _commit(self, broker: Broker, message: Message, event: TaskEvent) -> None:
        if self.commit_wait > 0 and getattr(broker, "defers_acks", False):
            # The worker thread moves on; the consumer acks once the row is in.
            ticket = self.writer.track(event)
            hold_ack(message, CommitHold(writer=self.writer, ticket=ticket, wait=self.commit_wait))
            return
        # While the database is known to be down, waiting would only slow
        # every message by commit_wait: queue the event and move on.
        wait = self.commit_wait > 0 and self.writer.last_error is None
        if not self.writer.submit(event, wait=wait, timeout=self.commit_wait) and wait:
            self.logger.warning(
                "Audit row of %s not committed within %.1fs (%s); acking anyway, the write is retried.",
                event.task_id,
                self.commit_wait,
                self.writer.last_error,
            )

    @staticmethod
    def _attempt(event: TaskEvent) -> AttemptEvent:
        """The row of the attempt ``event`` starts or ends (its number: the attempt's ``seq // 3``)."""
        return AttemptEvent(
            task_id=event.task_id,
            number=event.seq // 3,
            seq=event.seq,
            status=event.status,
            retry_count=event.retry_count,
            started_at=event.started_at,
            worker_id=event.worker_id,
            trace_id=event.trace_id,
        )

    def _is_expected(self, broker: Broker, message: Message, exception: BaseException) -> bool:
        actor = broker.actors.get(message.actor_name)
        throws = message.options.get("throws") or (actor.options.get("throws") if actor else None)
        return bool(throws) and isinstance(exception, throws)

    def _outcome(self, message: Message, status: TaskStatus, *, seq: int) -> TaskEvent:
        """An event with only what changes when a delivery ends: the rest of the row is already there."""
        return TaskEvent(
            task_id=message.message_id,
            task_type=message.actor_name,
            queue=q_name(message.queue_name),
            status=status.value,
            seq=message.options.get(AUDIT_SEQ_BASE, 0) + seq,
            priority=None,
        )

    def _event(self, broker: Broker, message: Message, status: TaskStatus, *, seq: int) -> TaskEvent:
        """An event carrying everything the message says about itself, for a row that may not exist yet."""
        event = self._outcome(message, status, seq=seq)
        options = message.options
        actor = broker.actors.get(message.actor_name)
        actor_options = actor.options if actor else {}
        priority = options.get("priority")
        event.priority = priority if isinstance(priority, str) else DEFAULT_PRIORITY
        event.args = {"args": list(message.args), "kwargs": dict(message.kwargs)}
        event.user_id = options.get("user_id")
        event.ip_address = options.get("ip_address")
        event.timeout = options.get("time_limit", actor_options.get("time_limit", self.default_time_limit))
        event.max_retries = options.get(
            "max_retries", actor_options.get("max_retries", self.default_max_retries)
        )
        event.retry_count = options.get("retries", 0)
        event.created_at = utc_from_millis(message.message_timestamp)
        return event
