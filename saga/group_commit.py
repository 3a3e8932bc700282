"""Group commit: the write transactions of a process's concurrent threads, run as one.

Each step of a workflow costs a claim and an outcome transaction.  Alone, a
transaction pays for its ``BEGIN``, its ``COMMIT`` (a WAL write) and, on
SQLite, an acquisition of the database's single write lock, which every
worker process contends for.  Under load many worker threads of a process
wait for a transaction at the same time: here they share one, and the messages
their operations produce go out together once it committed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from dramatiq.logging import get_logger

T = TypeVar("T")

#: Most operations one shared transaction carries.
MAX_BATCH = 64

#: Opens a transaction: a context manager yielding a connection.
Opener = Callable[[], AbstractContextManager[Any]]

#: An operation: runs its statements on the connection it is given, inside a transaction
#: it neither opens nor ends, and returns a value for its caller.
Operation = Callable[[Any], T]

#: Sends the messages of committed operations, in one go: ``dispatch(messages)``.
Dispatch = Callable[[list[Any]], None]


@dataclass(slots=True)
class _Pending:
    operation: Operation
    order: str
    sends: bool = False
    deferred: bool = False
    done: bool = False
    value: Any = None
    error: BaseException | None = None


class GroupCommit:
    """Runs the operations of concurrent threads in one shared transaction.

    A thread that finds no batch in progress becomes the leader: it takes
    every operation queued so far (its own included), runs them one after
    another in one transaction and commits.  Threads that arrive meanwhile
    queue up, and the next leader takes them together; a thread alone runs
    its operation at once, at the cost of a plain transaction.

    An operation run with ``sends=True`` returns ``(value, messages)``: once
    the transaction committed, the leader hands the messages of all such
    operations of the batch to ``dispatch`` in one call (one Redis round trip
    instead of one per thread, and consumers fetch them together).  A message
    whose send fails was committed all the same: recovery sends it again.

    If an operation raises, the shared transaction is rolled back (nothing of
    the batch happened) and every operation of the batch runs again in a
    transaction of its own, so a stale delivery or a failing write reaches
    only its own caller.  Operations must therefore do nothing outside the
    database that cannot be done twice: messages are sent by the callers,
    after :meth:`run` returns.

    Parameters:
      transaction(callable): Opens a write transaction: a context manager
        yielding the connection operations run on.
      max_batch(int): Most operations per shared transaction.  Defaults to
        :data:`MAX_BATCH`.
      dispatch(callable): Sends the messages of committed operations run with
        ``sends=True``; its errors are logged, not raised (the transaction is
        committed).  Defaults to None: such messages are dropped (a caller
        that passes ``sends=True`` must give one).
    """

    def __init__(
        self,
        *,
        transaction: Opener,
        max_batch: int = MAX_BATCH,
        dispatch: Dispatch | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.transaction = transaction
        self.max_batch = max_batch
        self.dispatch = dispatch
        self._queue: deque[_Pending] = deque()
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()
        self._leader_thread: int | None = None
        #: Shared transactions committed, and operations they carried (for benchmarks).
        self.batches = 0
        self.operations = 0

    def run(
        self, operation: Operation[T], *, order: str = "", sends: bool = False, deferred: bool = False
    ) -> T:
        """Run ``operation`` in a transaction, shared with other threads' when they wait too.

        A shared transaction runs its operations sorted by ``order`` (e.g. the id of the row
        each locks first), so the transactions of two processes take their row locks in one
        order and cannot deadlock each other (PostgreSQL would abort one after a second).
        With ``sends``, ``operation`` returns ``(value, messages)``; ``value`` is returned and
        the messages go to ``dispatch`` after the commit (see the class).  With ``deferred``,
        ``operation`` returns a function called once the transaction committed, which returns
        what ``operation`` would have (for a pipelined transaction, whose results are read at
        its commit).
        """
        if self._leader_thread == threading.get_ident():
            raise RuntimeError("an operation of a group commit started another one: it would wait for itself")
        pending = _Pending(operation, order, sends, deferred)
        with self._queue_lock:
            self._queue.append(pending)
        while not pending.done:
            outgoing = None
            with self._leader:
                if not pending.done:
                    outgoing = self._lead(pending)
            if outgoing:  # outside the leader's lock: the next batch need not wait for Redis
                self._dispatch(outgoing)
        if pending.error is not None:
            raise pending.error
        return pending.value

    def _dispatch(self, messages: list[Any]) -> None:
        try:
            if self.dispatch is None:
                raise RuntimeError("a group commit without dispatch was given messages to send")
            self.dispatch(messages)
        except Exception:
            # Committed all the same: the recovery sweep sends them again.
            self.logger.exception("Sending %d message(s) failed; recovery will resend.", len(messages))

    def _lead(self, own: _Pending) -> list[Any]:
        """Run a batch; the messages its committed operations produced."""
        with self._queue_lock:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
        self._leader_thread = threading.get_ident()
        outgoing: list[Any] = []
        try:
            if len(batch) == 1 or not self._run_shared(batch, outgoing):
                for pending in batch:
                    self._run_alone(pending, outgoing)
            return outgoing
        except BaseException:
            if outgoing:  # committed: sent here, as the caller cannot
                self._dispatch(outgoing)
            # Interrupted (an exception raised into this thread): the other threads' operations
            # it did not settle go back to the front of the queue for the next leader.
            unsettled = [pending for pending in batch if not pending.done and pending is not own]
            with self._queue_lock:
                if own in self._queue:  # beyond max_batch: its caller is gone, it must not run
                    self._queue.remove(own)
                self._queue.extendleft(reversed(unsettled))
            raise
        finally:
            self._leader_thread = None

    def _run_shared(self, batch: list[_Pending], outgoing: list[Any]) -> bool:
        """Run ``batch`` in one transaction; False (and nothing committed) if any operation raised."""
        try:
            with self.transaction() as connection:
                values = {id(p): p.operation(connection) for p in sorted(batch, key=_order)}
        except Exception as exc:
            self.logger.debug(
                "A shared transaction of %d operations failed (%s); one by one.", len(batch), exc
            )
            return False
        for pending in batch:
            _settle(pending, values[id(pending)], outgoing)
        self.batches += 1
        self.operations += len(batch)
        return True

    def _run_alone(self, pending: _Pending, outgoing: list[Any]) -> None:
        try:
            with self.transaction() as connection:
                value = pending.operation(connection)
            self.batches += 1
            self.operations += 1
        except Exception as exc:
            pending.error = exc
            pending.done = True
            return
        _settle(pending, value, outgoing)


def _settle(pending: _Pending, value: Any, outgoing: list[Any]) -> None:
    """``pending`` committed with ``value``: its result, its messages added to ``outgoing``."""
    if pending.deferred:
        try:
            value = value()
        except Exception as exc:  # committed: the caller learns what reading the outcome raised
            pending.error = exc
            pending.done = True
            return
    if pending.sends:
        value, messages = value
        outgoing += messages
    pending.value = value
    pending.done = True


def _order(pending: _Pending) -> str:
    return pending.order
