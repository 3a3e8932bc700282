"""The audit trail's writer: buffered, batched, ordered upserts of task events.

Every process that sends or runs messages owns one :class:`AuditWriter`.  Its
thread commits whatever events accumulated while the previous commit ran (a
group commit), so a busy worker pays one transaction for many messages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine, case, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import InterfaceError, OperationalError

from .db import sqlite_write_lock
from .models import AttemptRecord, TaskRecord

#: Longest pause between two attempts to write to an unreachable database, in seconds.
MAX_RETRY_BACKOFF = 5.0

#: First pause after a failed write, in seconds; it doubles up to MAX_RETRY_BACKOFF.
MIN_RETRY_BACKOFF = 0.05

#: Seconds between two attempts to replay the journal while the database (or the journal) fails.
JOURNAL_RETRY_INTERVAL = 5.0


def utc_from_millis(millis: int | float) -> datetime:
    """A naive UTC datetime from milliseconds since the epoch."""
    return datetime.fromtimestamp(millis / 1000, UTC).replace(tzinfo=None)


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(slots=True)
class AttemptEvent:
    """A change of one attempt's row (``task_attempts``).  ``None`` fields leave the row's value.

    ``number`` is the attempt's ``seq // 3`` (see :class:`storage.models.AttemptRecord`);
    ``seq`` is the event's own audit ``seq``: a start never overrides a finish.
    """

    task_id: str
    number: int
    seq: int
    status: str
    retry_count: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    worker_id: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    trace_id: str | None = None


@dataclass(slots=True)
class TaskEvent:
    """A change of one message's audit row.  ``None`` fields leave the row's value as it is."""

    task_id: str
    task_type: str
    queue: str
    status: str
    seq: int
    priority: str | None = "normal"
    args: dict[str, Any] | None = None
    user_id: str | None = None
    ip_address: str | None = None
    timeout: int | None = None
    max_retries: int | None = None
    retry_count: int = 0
    error_message: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    processing_time_ms: float | None = None
    worker_id: str | None = None
    trace_id: str | None = None
    #: The attempt this event starts or ends (its row in ``task_attempts``), if it ran.
    attempt: AttemptEvent | None = None


class AuditJournal(Protocol):
    """Durable storage outside the database for the events a closing writer could not write:
    the next writer replays them (``actors.middleware.RedisAuditJournal``)."""

    def spill(self, events: Sequence[TaskEvent]) -> None:
        """Keep ``events``; raises if they could not be kept."""

    def replay(self, write: Callable[[list[TaskEvent]], None], *, batch_size: int) -> bool:
        """``write`` the kept events in batches, forgetting each once written; True when none
        is left, False when another process is replaying.  Raises what ``write`` raises."""


_FIELDS = tuple(f.name for f in fields(TaskEvent) if f.name != "attempt")
_ATTEMPT_FIELDS = tuple(f.name for f in fields(AttemptEvent))
_ALWAYS_SET = ("status", "seq", "retry_count")


def _merge(older, newer, names: tuple[str, ...]):
    winner, other = (newer, older) if newer.seq >= older.seq else (older, newer)
    gaps = {name: getattr(other, name) for name in names if getattr(winner, name) is None}
    return replace(winner, **gaps) if gaps else winner


def merge_events(older: TaskEvent, newer: TaskEvent) -> TaskEvent:
    """Fold two events of one message: the higher ``seq`` wins, gaps are filled from the other
    (the attempt's too, when both are of one attempt)."""
    merged = _merge(older, newer, _FIELDS)
    attempts = older.attempt, newer.attempt
    if None not in attempts and attempts[0].number == attempts[1].number:
        attempt = _merge(attempts[0], attempts[1], _ATTEMPT_FIELDS)
    else:
        attempt = merged.attempt or older.attempt or newer.attempt
    return merged if attempt is merged.attempt else replace(merged, attempt=attempt)


def collapse_attempts(events: list[TaskEvent]) -> list[AttemptEvent]:
    """The attempts ``events`` carry, one per (task, number), sorted so concurrent writers lock
    rows in one order.  Taken before :func:`collapse`: two attempts of a message that finished
    within one batch are two rows."""
    merged: dict[tuple[str, int], AttemptEvent] = {}
    for event in events:
        attempt = event.attempt
        if attempt is None:
            continue
        key = (attempt.task_id, attempt.number)
        previous = merged.get(key)
        merged[key] = attempt if previous is None else _merge(previous, attempt, _ATTEMPT_FIELDS)
    return [merged[key] for key in sorted(merged)]


def collapse(events: list[TaskEvent]) -> list[TaskEvent]:
    """One event per task id, sorted by id so concurrent writers lock rows in one order."""
    merged: dict[str, TaskEvent] = {}
    for event in events:
        previous = merged.get(event.task_id)
        merged[event.task_id] = event if previous is None else merge_events(previous, event)
    return [merged[key] for key in sorted(merged)]


def upsert_statement(dialect_name: str, *, attempts: bool = False):
    """``INSERT .. ON CONFLICT DO UPDATE`` for the dialect, ordered by ``seq``: of ``tasks``, or
    (``attempts``) of ``task_attempts``.

    The event with the higher ``seq`` decides status, seq and retry count; any
    column that side leaves empty is filled from the other, so a late
    ``pending`` event still records the arguments and creation time.
    """
    table = (AttemptRecord if attempts else TaskRecord).__table__
    names, keys = (_ATTEMPT_FIELDS, ("task_id", "number")) if attempts else (_FIELDS, ("task_id",))
    insert = sqlite_insert if dialect_name == "sqlite" else pg_insert
    statement = insert(table)
    excluded = statement.excluded
    newer = table.c.seq <= excluded.seq
    updates = {}
    for name in names:
        if name in keys:
            continue
        if name in _ALWAYS_SET:
            updates[name] = case((newer, excluded[name]), else_=table.c[name])
        else:
            updates[name] = case(
                (newer, func.coalesce(excluded[name], table.c[name])),
                else_=func.coalesce(table.c[name], excluded[name]),
            )
    return statement.on_conflict_do_update(index_elements=[table.c[key] for key in keys], set_=updates)


class _ExecuteMany:
    """SQLite: the DBAPI's executemany, values converted as SQLAlchemy stores them."""

    def __init__(self, sql: str, order: tuple[str, ...]) -> None:
        self.sql = sql
        self.order = order

    def run(self, cursor, events: list[TaskEvent]) -> None:
        cursor.executemany(self.sql, [self._row(event) for event in events])

    def _row(self, event: TaskEvent) -> tuple:
        values = []
        for name in self.order:
            value = getattr(event, name)
            if isinstance(value, datetime):
                value = value.strftime("%Y-%m-%d %H:%M:%S.%f")
            elif isinstance(value, dict):
                value = json.dumps(value)
            values.append(value)
        return tuple(values)


class _MultiRowInsert:
    """PostgreSQL: one ``INSERT .. SELECT * FROM unnest(..) ON CONFLICT`` per batch, one array
    parameter per column.

    A statement per row cost the server more CPU than the worker spent on the message; one
    statement per batch is planned once.  Its text is the same for every batch size, so
    psycopg parses it once: a ``VALUES`` list of a placeholder per value (7,500 for 500 rows)
    is longer than psycopg caches, and parsing it again cost about 80 µs of the writer's
    CPU per row (``bench/api.py``'s bulk retry writes 100,000 rows).
    """

    _PARAM = re.compile(r"%\((\w+)\)s")

    def __init__(self, sql: str, types: dict[str, str]) -> None:
        head, rest = sql.split(" VALUES (", 1)
        values, tail = rest.split(") ON CONFLICT", 1)
        self.names = tuple(self._PARAM.findall(values))
        assert len(self._PARAM.findall(sql)) == len(self.names), "parameters outside VALUES"
        arrays = ", ".join(f"%s::{types[name]}[]" for name in self.names)
        self.sql = f"{head} SELECT * FROM unnest({arrays}) ON CONFLICT{tail}"

    def run(self, cursor, events: list[TaskEvent]) -> None:
        columns: list[list[Any]] = []
        for name in self.names:
            values = [getattr(event, name) for event in events]
            if any(isinstance(value, dict) for value in values):
                values = [json.dumps(value) if isinstance(value, dict) else value for value in values]
            columns.append(values)
        cursor.execute(self.sql, columns)


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: the database is unreachable, restarting or not migrated yet."""
    if isinstance(
        exc,
        (
            OperationalError,
            InterfaceError,
            sqlite3.OperationalError,
            psycopg.OperationalError,
            psycopg.InterfaceError,
        ),
    ):
        return True
    return "tradeflow db upgrade" in describe_database_error(exc)


def describe_database_error(exc: BaseException) -> str:
    """A one-line reason, with the fix where we know it."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "no such table" in text or ("does not exist" in text and "relation" in text):
        return f"the audit table is missing: run `tradeflow db upgrade` ({text})"
    return text


class AuditWriter:
    """Buffers task events and writes them in ordered batches from one thread.

    Parameters:
      engine: Where the ``tasks`` table lives.
      buffer_size: Most events held while the database is unreachable.  When
        full, the oldest not-yet-written event is dropped and counted in
        ``dropped`` (a later event of the same message carries its row).
      batch_size: Most events written in one transaction.
      commit_interval: Seconds the first event of a batch waits for others
        before the batch is written, unless someone waits for a commit
        (``submit(wait=True)``, :meth:`flush`, :meth:`wait_settled`) or the
        batch is full.  Fewer, larger transactions cost far less CPU than
        one per event.  Defaults to 0 (write at once).
      on_commit: Called from the writer's thread with the events of each committed
        batch (one per task, its latest): the live-events stream's feed.  Its errors
        are logged.  Defaults to None.
      journal(AuditJournal): Where :meth:`close` spills the events the database did
        not take in time (a worker stopping while the database is down: their messages
        are acked already), and whose events this writer replays once it starts.
        Defaults to None: such events are lost, and logged.

    Counters: ``written``; ``dropped`` (buffer full); ``rejected`` (refused by
    the database for their content: logged, not retried, the rest of their
    batch still written); ``failures`` (failed attempts, retried).

    Fork-safe: a child process that inherits a writer starts its own thread
    and connections on first use and forgets the parent's buffer.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        buffer_size: int = 100_000,
        batch_size: int = 500,
        commit_interval: float = 0.0,
        on_commit: Callable[[list[TaskEvent]], None] | None = None,
        journal: AuditJournal | None = None,
    ) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.on_commit = on_commit
        self.engine = engine
        self.journal = journal
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.commit_interval = commit_interval
        self._postgres = engine.dialect.name == "postgresql"
        # SQLite: queue with the other writers of the database (the saga engine) fairly.
        self._write_lock = sqlite_write_lock(engine) or nullcontext()
        self._statement = self._compile(attempts=False)
        self._attempts_statement = self._compile(attempts=True)
        self._reset()

    def _compile(self, *, attempts: bool):
        compiled = upsert_statement(self.engine.dialect.name, attempts=attempts).compile(
            dialect=self.engine.dialect
        )
        if self._postgres:
            table = (AttemptRecord if attempts else TaskRecord).__table__
            types = {column.name: column.type.compile(dialect=self.engine.dialect) for column in table.c}
            return _MultiRowInsert(str(compiled), types)
        return _ExecuteMany(str(compiled), tuple(compiled.positiontup))

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._committed_cv = threading.Condition(self._lock)
        self._buffer: deque[tuple[int, TaskEvent]] = deque()
        # task id -> (due, event); all share one delay, so insertion order is due order
        self._deferred: dict[str, tuple[float, TaskEvent]] = {}
        self._next_ticket = 1
        self._committed = 0
        self._in_flight = 0
        self._closing = False
        self._first_at = 0.0  # when the oldest unwritten event was queued
        self._urgent = 0  # callers blocked on a commit: no lingering for them
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._settle_callbacks: set[Callable[[], None]] = set()
        self.written = 0
        self.commits = 0
        self.dropped = 0
        self.rejected = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        """Events accepted but not yet committed."""
        return len(self._buffer) + len(self._deferred)

    def submit(
        self, event: TaskEvent, *, wait: bool = False, timeout: float | None = None, defer: float = 0.0
    ) -> bool:
        """Queue ``event``; with ``wait``, block until it is committed.

        With ``defer`` (seconds), the event is held that long first, and a later
        event of the same task absorbs it: a message that finishes quickly costs
        one row write instead of two.  Returns False only when ``wait`` timed
        out (the event stays queued).
        """
        self._ensure_started()
        with self._lock:
            event = self._absorb_deferred(event)
            if defer > 0 and not wait:
                # All share one delay: a new deferred event is never due before the
                # ones held already, so only the first needs to wake the writer.
                if not self._deferred and not self._buffer:
                    self._has_work.notify()
                self._deferred[event.task_id] = (time.monotonic() + defer, event)
                return True
            ticket = self._enqueue(event)
            if not wait:
                return True
            return ticket == 0 or self._wait_urgently(lambda: self._committed >= ticket, timeout)

    def track(self, event: TaskEvent) -> int:
        """Queue ``event`` without waiting; returns its ticket for :meth:`settled` (0: dropped)."""
        self._ensure_started()
        with self._lock:
            return self._enqueue(self._absorb_deferred(event))

    def _absorb_deferred(self, event: TaskEvent) -> TaskEvent:
        """``event`` merged with the held (deferred) event of its task, which is dropped (lock held)."""
        held = self._deferred.pop(event.task_id, None)
        if held is None:
            return event
        attempt = held[1].attempt
        if attempt is not None and (event.attempt is None or event.attempt.number != attempt.number):
            # another attempt's start: written as it is (its attempt row too), not folded away
            self._enqueue(held[1])
            return event
        return merge_events(held[1], event)

    def settled(self, ticket: int) -> bool:
        """Whether waiting for ``ticket`` is over: committed, or the database is failing."""
        return self._committed >= ticket or self.last_error is not None or self._pid != os.getpid()

    def wait_settled(self, ticket: int, timeout: float | None) -> bool:
        """Block until :meth:`settled` (``ticket``), for at most ``timeout`` seconds."""
        with self._lock:
            return self._wait_urgently(lambda: self.settled(ticket), timeout)

    def on_settle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, from the writer's thread, after its next commit or failure.

        Keep it short (set an event): it runs while the writer holds its lock.
        """
        with self._lock:
            self._settle_callbacks.add(callback)

    def _enqueue(self, event: TaskEvent) -> int:
        if len(self._buffer) >= self.buffer_size and not self._drop_oldest():
            self._count_drop()
            return 0
        ticket = self._next_ticket
        self._next_ticket += 1
        if not self._buffer:
            self._first_at = time.monotonic()
            self._has_work.notify()
        self._buffer.append((ticket, event))
        if len(self._buffer) == self.batch_size:
            self._has_work.notify()
        return ticket

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted so far is committed.  False on timeout."""
        with self._lock:
            if self._pid != os.getpid() or self._thread is None:
                return not self._buffer
            self._release_deferred(until=math.inf)
            target = self._next_ticket - 1
            return self._wait_urgently(lambda: self._committed >= target, timeout)

    def _wait_urgently(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait (lock held) for ``predicate``, with the writer committing at once meanwhile."""
        if predicate():
            return True
        self._urgent += 1
        self._has_work.notify()
        try:
            return self._committed_cv.wait_for(predicate, timeout)
        finally:
            self._urgent -= 1

    def close(self, timeout: float | None = 5.0) -> bool:
        """Flush for up to ``timeout`` seconds, then stop the thread.  False if events were left."""
        flushed = self.flush(timeout)
        with self._lock:
            self._closing = True
            self._stopping.set()
            self._has_work.notify_all()
            thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            thread.join(timeout)
        if not flushed:
            flushed = self._spill()
        return flushed

    def _spill(self) -> bool:
        """Hand the unwritten events to the journal; False if they are lost."""
        with self._lock:
            events = [event for _, event in self._buffer] + [event for _, event in self._deferred.values()]
        if self.journal is not None and events:
            try:
                self.journal.spill(events)
            except Exception as exc:
                self.logger.error("Audit journal refused %d events: %s", len(events), exc)
            else:
                self.logger.warning(
                    "Audit trail closed with %d events unwritten (%s): kept in the journal, "
                    "the next writer replays them.",
                    len(events),
                    self.last_error,
                )
                with self._lock:
                    self._buffer.clear()
                    self._deferred.clear()
                return True
        self.logger.error("Audit trail closed with %d events unwritten: %s", self.pending, self.last_error)
        return False

    def start(self) -> None:
        """Start the writer's thread now (and the journal's replay), not at the first event."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():
            self._reset()
            self.engine.dispose(close=False)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="tradeflow-audit", daemon=True)
                    self._thread.start()
                    if self.journal is not None:
                        name = "tradeflow-audit-journal"
                        threading.Thread(target=self._replay_journal, name=name, daemon=True).start()

    def _replay_journal(self) -> None:
        """Write what writers that closed with the database down left in the journal; until
        it is empty, or this writer closes."""
        while True:
            try:
                if self.journal.replay(self._write_batch, batch_size=self.batch_size):
                    return
            except Exception as exc:
                self.logger.warning("Audit journal not replayed yet: %s", describe_database_error(exc))
            if self._stopping.wait(JOURNAL_RETRY_INTERVAL):
                return

    def _drop_oldest(self) -> bool:
        if self._in_flight >= len(self._buffer):
            return False
        del self._buffer[self._in_flight]
        self._count_drop()
        return True

    def _count_drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            self.logger.error(
                "Audit buffer full (%d events): %d events dropped so far.", self.buffer_size, self.dropped
            )

    def _run(self) -> None:
        backoff = MIN_RETRY_BACKOFF
        while True:
            with self._lock:
                self._wait_for_work()
                if self._closing and (not self._buffer or self.last_error):
                    return
                batch = list(islice(self._buffer, self.batch_size))
                self._in_flight = len(batch)
            try:
                self._write_batch([event for _, event in batch])
            except Exception as exc:
                backoff = self._on_failure(exc, backoff)
                continue
            self._on_success(batch)
            backoff = MIN_RETRY_BACKOFF
            self._notify_commit(batch)

    def _notify_commit(self, batch: list[tuple[int, TaskEvent]]) -> None:
        if self.on_commit is None:
            return
        try:
            self.on_commit(collapse([event for _, event in batch]))
        except Exception:
            self.logger.exception("Audit commit hook failed.")

    def _write(self, events: list[TaskEvent]) -> None:
        # The DBAPI directly, with the statement compiled once: SQLAlchemy's
        # per-row bind processing cost more CPU than the rest of a message.
        if self._postgres:
            self._write_pipelined(events)
            return
        with self._write_lock, self.engine.begin() as connection:
            cursor = connection.connection.cursor()
            self._run_batch(cursor, events)

    def _run_batch(self, cursor, events: list[TaskEvent]) -> None:
        self._statement.run(cursor, collapse(events))
        # the attempts ride in the same transaction: one more statement per batch, not per message
        attempts = collapse_attempts(events)
        if attempts:
            self._attempts_statement.run(cursor, attempts)

    def _write_pipelined(self, events: list[TaskEvent]) -> None:
        """PostgreSQL: ``BEGIN``, the settings, the batch and ``COMMIT`` in one round trip
        (psycopg's pipeline mode) instead of four."""
        with self._write_lock, self.engine.connect() as connection:
            driver = connection.connection.driver_connection
            try:
                with driver.pipeline():
                    cursor = driver.cursor()
                    # Visible to every reader at commit, without waiting for the WAL
                    # flush: a worker's SIGKILL loses nothing; only a crash of
                    # PostgreSQL itself can lose the last few hundred ms of rows.
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
                    self._run_batch(cursor, events)
                    cursor.execute("COMMIT")  # queued too: ``driver.commit()`` would sync on its own
            except BaseException:
                if driver.closed:
                    connection.invalidate()
                else:
                    driver.rollback()
                raise

    def _wait_for_work(self) -> None:
        while True:
            now = time.monotonic()
            self._release_deferred(until=now)
            if self._closing:
                return
            if self._buffer:
                write_at = self._first_at + self.commit_interval
                if self._urgent or len(self._buffer) >= self.batch_size or now >= write_at:
                    return
                self._has_work.wait(write_at - now)
                continue
            first_due = next(iter(self._deferred.values()), (None,))[0]
            self._has_work.wait(None if first_due is None else max(0.0, first_due - now))

    def _release_deferred(self, *, until: float) -> None:
        while self._deferred:
            task_id, (due, event) = next(iter(self._deferred.items()))
            if due > until:
                return
            del self._deferred[task_id]
            self._enqueue(event)

    def _write_batch(self, events: list[TaskEvent]) -> None:
        """Write ``events``; if the database refuses their content, save every one it accepts."""
        try:
            self._write(events)
        except Exception as exc:
            if is_transient(exc):
                raise
            self._write_one_by_one(events, exc)

    def _write_one_by_one(self, events: list[TaskEvent], batch_error: BaseException) -> None:
        for event in collapse(events):
            try:
                self._write([event])
            except Exception as exc:
                if is_transient(exc):
                    raise
                self.rejected += 1
                self.logger.error(
                    "Audit event for %s rejected by the database: %s",
                    event.task_id,
                    describe_database_error(exc),
                )
        self.logger.warning("Audit batch written row by row after: %s", describe_database_error(batch_error))

    def _on_success(self, batch: list[tuple[int, TaskEvent]]) -> None:
        with self._lock:
            for _ in batch:
                self._buffer.popleft()
            self._first_at = time.monotonic()
            self._in_flight = 0
            self._committed = batch[-1][0]
            self.written += len(batch)
            self.commits += 1
            if self.last_error:
                self.logger.warning("Audit trail writes resumed; %d events waiting.", len(self._buffer))
            self.last_error = None
            self._committed_cv.notify_all()
            self._run_settle_callbacks()

    def _run_settle_callbacks(self) -> None:
        callbacks, self._settle_callbacks = self._settle_callbacks, set()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                self.logger.exception("Audit settle callback %r failed.", callback)

    def _on_failure(self, exc: BaseException, backoff: float) -> float:
        reason = describe_database_error(exc)
        with self._lock:
            self._in_flight = 0
            self.failures += 1
            if reason != self.last_error:
                self.logger.error(
                    "Audit trail write failed, will retry (%d events waiting): %s", len(self._buffer), reason
                )
            self.last_error = reason
            self._committed_cv.notify_all()
            self._run_settle_callbacks()
        self._stopping.wait(backoff)
        return min(backoff * 2, MAX_RETRY_BACKOFF)
