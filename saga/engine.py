"""The saga engine: durable run and step state, and every transition between states.

Each transition is one SQL transaction holding the run's row lock (an
``UPDATE .. RETURNING`` of the run row; on SQLite, ``BEGIN IMMEDIATE`` holds
the database) and changing rows only through conditional updates (``.. WHERE status = 'running' AND
claim = :claim``), so a duplicate delivery or a stale worker changes nothing,
and a dependent's ``remaining_deps`` reaches zero exactly once.  A step is
claimed in the transaction that dispatches it, for its message, whose first
delivery then only reads (:meth:`SagaEngine.claim`).  Messages are sent after
the commit; a crash in between leaves the step claimed and the recovery sweep
(:meth:`SagaEngine.recover`) sends it again once the lease ran out.  The hottest
transitions (claims on SQLite, step successes, starts) of concurrent threads
share a transaction (:mod:`saga.group_commit`), each still made of the same
conditional statements.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from dramatiq import Message
from dramatiq.logging import get_logger
from opentelemetry.trace import TracerProvider
from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from storage import (
    DONE_STEP_STATUSES,
    FINAL_RUN_STATUSES,
    RunStatus,
    StepStatus,
    WorkflowSignal,
    sqlite_write_lock,
    utc_now,
)

from . import children, transitions, waits
from . import history as log
from . import statements as sql
from .definition import Workflow, step_rows
from .driver import DriverStatement
from .group_commit import GroupCommit
from .leases import ConcurrencyLeases, ConcurrencyLimitExceeded
from .run_tracing import LINKS_OPTION, address, end_run_span, fan_out_links, run_root_span, sender_carrier
from .values import MissingValue, call_arguments, conditions_hold, referenced_steps

RUNS, STEPS = sql.RUNS, sql.STEPS
SIGNALS = WorkflowSignal.__table__

T = TypeVar("T")

#: Namespace of the deterministic message ids of step dispatches.
MESSAGE_ID_NAMESPACE = uuid.UUID("6f1d4c8e-2f4b-4f43-9d0e-5a3c1b7e9a10")

#: Message option that marks a message as a workflow step: ``{run, step, kind, epoch}``.
SAGA_OPTION = "saga"

#: Key of the ``saga`` option holding when a waiting step's message is due (epoch milliseconds):
#: :func:`dispatch` sends it through the broker's delay queue.
DUE_KEY = "due_ms"

#: Kinds of saga messages.
STEP, COMPENSATE = "step", "compensate"

#: Steps inserted by one statement (PostgreSQL takes at most 65,535 parameters, 28 per step).
INSERT_CHUNK = 1_000

#: Statuses that end a run's trace with an end span (``compensation_failed`` waits for an
#: operator, but the run has stopped).
ENDED_RUN_STATUSES = FINAL_RUN_STATUSES | {RunStatus.COMPENSATION_FAILED}

#: Seconds a SQLite read waits for a lock (in WAL mode only while the log is reset).
SQLITE_READ_TIMEOUT = 30.0

#: Error of a dispatched step whose run stopped before a worker started it.
NOT_STARTED = "not started: the run was stopping"

#: Longest error text kept on a step or run, in characters.
MAX_ERROR_LENGTH = 4_000


#: ``on_run_status(run_id, workflow, status, error)``: told of each committed change of a run's status
#: (the live-events stream's feed, given by ``actors.broker``).
RunStatusHook = Callable[[str, str, str, "str | None"], None]


class Unchanged(Exception):
    """Raised inside a locked block to roll it back: the delivery was stale."""


class WorkflowError(RuntimeError):
    """An operation on a run is not possible; the message says why."""


class _RunNotRunning(Exception):
    """Raised inside a pipelined success to roll it back: the run is unwinding."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What a worker learns when it claims a step delivery."""

    run_id: str
    step: str
    kind: str
    token: str
    attempt: int
    checkpoint: Any
    progress: float | None
    #: The step's dependents (static), known from the claim so that recording the success
    #: can release them without first reading the step; None when unknown.
    dependents: tuple[str, ...] | None = None
    #: When this delivery started (recorded with the outcome: a step claimed at its
    #: dispatch has no start time until then).
    started_at: datetime | None = None
    #: On PostgreSQL, what the claim's read learnt for recording the success in one statement
    #: (the run's ``inputs``, the eligible dependents as ``successors``: see
    #: :mod:`saga.transitions`); None when unknown.
    advance: dict[str, Any] | None = None


def describe(exception: BaseException) -> str:
    return f"{type(exception).__name__}: {exception}"[:MAX_ERROR_LENGTH]


def message_id(run_id: str, step: str, kind: str, epoch: int) -> str:
    """The same id for every send of one dispatch, so duplicates are recognisable in the audit trail."""
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{run_id}/{step}/{kind}/{epoch}"))


#: Withdraws queued messages no worker has taken: ``withdraw(broker, message_ids)`` returns those
#: that will now never start (``actors.broker.admission.withdraw_unstarted``).
Withdraw = Callable[[Any, Sequence[str]], set[str]]

#: Marks a message sent again as a copy the broker's admission counts on its own, not as a
#: duplicate of the first (``actors.broker.admission.readmit``): returns it.
Readmit = Callable[[Message], Message]

#: Sends built messages in one go: ``send_many(broker, messages)`` (``actors.broker.batch.enqueue_messages``).
SendMany = Callable[[Any, Sequence[Message]], Any]


def dispatch(broker, messages: Sequence[Message], *, send_many: SendMany | None = None) -> None:
    """Send step messages: the one place every step and compensation message goes through.

    Several messages (a fan-out) go through ``send_many`` when one is given, in one round trip
    on a broker that batches; a single message, or every message without ``send_many``, goes
    through ``broker.enqueue``.
    """
    delayed = [m for m in messages if m.options.get(SAGA_OPTION, {}).get(DUE_KEY)]
    if delayed:
        messages = [m for m in messages if not m.options.get(SAGA_OPTION, {}).get(DUE_KEY)]
        for message in delayed:  # a timer or a signal's timeout: due later, from the delay queue
            delay = message.options[SAGA_OPTION][DUE_KEY] - waits.now_ms()
            broker.enqueue(message, delay=delay if delay > 0 else None)
    if send_many is not None and len(messages) > 1:
        send_many(broker, messages)
        return
    for message in messages:
        broker.enqueue(message)


def _reconnecting(operation: Callable[..., T]) -> Callable[..., T]:
    """Run ``operation`` again once if its database connection turned out dead (the engine's
    pool does not pre-ping).  Safe: a transaction cut that way was rolled back."""

    @functools.wraps(operation)
    def wrapper(*args, **kwargs):
        try:
            return operation(*args, **kwargs)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            return operation(*args, **kwargs)

    return wrapper


class SagaEngine:
    """Starts runs and moves them forward as steps finish.

    Parameters:
      database(Engine): Where ``workflow_runs`` and ``workflow_steps`` live.
      broker: The Dramatiq broker steps are sent through (a ``RedisBroker``:
        its client also holds the concurrency leases).
      lease_ms(int): How long a claimed step is trusted without a heartbeat
        from its worker, in milliseconds.  Defaults to 60 seconds.
      recovery_after_ms(int): A step not picked up for this long (``ready``, or
        dispatched and its lease run out) is sent again by :meth:`recover`, in
        milliseconds.  Defaults to 60 seconds.
      concurrency_lease_ms(int): Lifetime of a concurrency-key lease unless
        renewed by the run's activity.  Defaults to 10 minutes.
      send_many(callable): ``send_many(broker, messages)`` enqueues several
        messages at once (a fan-out); see :func:`dispatch`.  Defaults to None:
        one ``broker.enqueue`` per message.
      tracer_provider(TracerProvider): Where a run's root span goes
        (:func:`saga.run_tracing.run_root_span`).  Defaults to None: the global one.
      withdraw(callable): ``withdraw(broker, message_ids)``: see :data:`Withdraw`.
        A run that stops withdraws the messages of its dispatched steps that no
        worker took, and counts those steps cancelled at once.  Defaults to None:
        each such step is settled when its message is delivered.
      readmit(callable): ``readmit(message)``: see :data:`Readmit`.  What
        :meth:`recover` sends again goes through it, so a copy admitted and then
        lost earlier cannot make the broker drop the new one.  Defaults to None.
    """

    def __init__(
        self,
        *,
        database: Engine,
        broker,
        lease_ms: int = 60_000,
        recovery_after_ms: int = 60_000,
        concurrency_lease_ms: int = 600_000,
        send_many: SendMany | None = None,
        tracer_provider: TracerProvider | None = None,
        withdraw: Withdraw | None = None,
        on_run_status: RunStatusHook | None = None,
        readmit: Readmit | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.on_run_status = on_run_status
        self.database = database
        self.broker = broker
        self.send_many = send_many
        self.withdraw = withdraw
        self.readmit = readmit
        self.tracer_provider = tracer_provider
        self.lease = timedelta(milliseconds=lease_ms)
        self.recovery_after = timedelta(milliseconds=recovery_after_ms)
        self.leases = ConcurrencyLeases(
            broker.client, namespace=broker.namespace, ttl_ms=concurrency_lease_ms
        )
        self._sqlite = database.dialect.name == "sqlite"
        self._write_lock = sqlite_write_lock(database) or nullcontext()
        self._writer, self._writer_pid = None, 0
        self._readers = threading.local()  # SQLite: one kept-open read connection per thread
        self._autocommit = database.execution_options(isolation_level="AUTOCOMMIT")
        self._hot = HotStatements(database.dialect)
        self._history = log.History(database.dialect)
        self._driver_error = database.dialect.loaded_dbapi.Error
        # Concurrent step successes (and on SQLite claims) share transactions, and the
        # successes' next steps go out together; so do starts, in transactions of their own
        # that, on PostgreSQL, are pipelined (they read nothing).
        self._group = GroupCommit(transaction=self._transaction, dispatch=self._dispatch)
        self._starts = GroupCommit(transaction=functools.partial(self._transaction, pipelined=True))
        # On PostgreSQL, successes recorded in one statement each (saga.transitions) share a
        # pipelined transaction: BEGIN, every thread's statement and COMMIT in one round trip.
        self._advancing = GroupCommit(
            transaction=functools.partial(self._transaction, pipelined=True), dispatch=self._dispatch
        )

    # -- starting runs -------------------------------------------------------------------------

    @_reconnecting
    def start(
        self,
        workflow: Workflow,
        inputs: Any = None,
        *,
        idempotency_key: str | None = None,
        deadline: datetime | timedelta | None = None,
    ) -> str:
        """Start a run of ``workflow`` and return its id.

        With an ``idempotency_key`` already used, nothing starts and the
        existing run's id is returned.  ``deadline`` (a naive UTC time or a
        duration from now) overrides the workflow's.
        """
        workflow.check_actors(self.broker.actors)
        _check_json(inputs, "the run's inputs")
        if idempotency_key and (existing := self._run_with_key(idempotency_key)):
            return existing
        now = utc_now()
        deadline = deadline if deadline is not None else workflow.deadline
        if isinstance(deadline, timedelta):
            deadline = now + deadline
        steps = step_rows(workflow.definition())
        run = {
            "run_id": uuid.uuid4().hex,
            "workflow": workflow.name,
            "workflow_version": workflow.version,
            "inputs": inputs,
            "idempotency_key": idempotency_key,
            "on_failure": workflow.on_failure,
            "concurrency_key": _concurrency_key(workflow, inputs),
            "concurrency_limit": workflow.concurrency_limit,
            "deadline_at": deadline,
        }
        try:
            return self._create(run, steps, done={})
        except (IntegrityError, self.database.dialect.loaded_dbapi.IntegrityError):
            existing = self._run_with_key(idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return existing

    @_reconnecting
    def fork(self, run_id: str, *, inputs: Any = None) -> str:
        """A new run of the same steps that reuses the results of ``run_id``'s succeeded steps."""
        with self.database.connect() as connection:
            source = connection.execute(select(RUNS).where(RUNS.c.run_id == run_id)).mappings().first()
            if source is None:
                raise WorkflowError(f"no run with id {run_id!r}")
            rows = connection.execute(
                select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.position)
            ).mappings()
            rows = [dict(row) for row in rows]
        keep = ("name", "position", "actor", "spec", "depends_on", "dependents", "group_name", "group_limit")
        steps = [{key: row[key] for key in keep} for row in rows]
        done = {row["name"]: row for row in rows if row["status"] == StepStatus.SUCCEEDED}
        self._refuse_unknown_actors("fork", run_id, [row for row in rows if row["name"] not in done])
        run = {
            "run_id": uuid.uuid4().hex,
            "workflow": source["workflow"],
            "workflow_version": source["workflow_version"],
            "inputs": source["inputs"] if inputs is None else inputs,
            "on_failure": source["on_failure"],
            "concurrency_key": source["concurrency_key"],
            "concurrency_limit": source["concurrency_limit"],
            "forked_from": run_id,
        }
        return self._create(run, steps, done=done)

    def _run_with_key(self, idempotency_key: str) -> str | None:
        with self.database.connect() as connection:
            query = select(RUNS.c.run_id).where(RUNS.c.idempotency_key == idempotency_key)
            return connection.execute(query).scalar()

    def _create(self, run: dict[str, Any], steps: list[dict[str, Any]], *, done: dict[str, dict]) -> str:
        """Insert a run and its steps (``done``: steps already succeeded, by name) and dispatch the roots."""
        with run_root_span(run["workflow"], run["run_id"], tracer_provider=self.tracer_provider):
            return self._create_traced(run, steps, done=done)

    def _create_traced(
        self, run: dict[str, Any], steps: list[dict[str, Any]], *, done: dict[str, dict]
    ) -> str:
        run_id = run["run_id"]
        self._acquire_slot(run)
        state, rows = self._rows(run, steps, done)
        outgoing = None if done else self._ready_roots(state, rows)
        try:
            if outgoing is not None:
                self._starts.run(functools.partial(self._insert_ready, run=state, steps=rows))
                self._trace_end(state, None)  # a new run: its status is news
                self._send(outgoing)
                return run_id
            with self._transaction() as connection:
                outgoing = self._insert_new(connection, state, rows, done)
        except Exception:
            self._release_slot(run)
            raise
        self._trace_end(state, None)  # a new run: its status is news
        self._send(outgoing)
        return run_id

    def _rows(
        self, run: dict[str, Any], steps: list[dict[str, Any]], done: dict[str, dict]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The rows of a new run and its steps (``done``: steps already succeeded, by name)."""
        now = utc_now()
        run.update(
            status=RunStatus.RUNNING, created_at=now, updated_at=now, open_steps=len(steps) - len(done)
        )
        run["completions"] = max((row["completion_seq"] or 0 for row in done.values()), default=0)
        for step in steps:
            finished = done.get(step["name"])
            step["run_id"] = run["run_id"]
            step["remaining_deps"] = sum(1 for d in step["depends_on"] if d not in done)
            step["status"] = StepStatus.SUCCEEDED if finished else StepStatus.PENDING
            if finished:
                for key in ("call_args", "result", "completion_seq", "attempts", "started_at", "finished_at"):
                    step[key] = finished[key]
        return _run_defaults(run), [_step_defaults(step) for step in steps]

    def _insert_new(
        self, connection, state: dict[str, Any], rows: list[dict[str, Any]], done: dict[str, dict]
    ) -> list[Message]:
        """Insert a new run and its steps in ``connection``'s transaction and admit its roots;
        the messages to send once it committed."""
        # Nobody else knows the run yet: no lock, and the rows in hand are current.
        connection.execute(insert(RUNS).values(state))
        self._history.write(connection, [_started(state)])
        for first in range(0, len(rows), INSERT_CHUNK):
            # One multi-row INSERT per chunk: one round trip, not one per row.
            connection.execute(insert(STEPS).values(rows[first : first + INSERT_CHUNK]))
        snapshot = dict(state)
        roots = [row for row in rows if row["remaining_deps"] == 0 and row["name"] not in done]
        outgoing = self._admit(connection, state, roots)
        self._finish_if_done(connection, state)
        self._save(connection, state, snapshot)
        return outgoing

    def _insert_ready(self, connection, *, run: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """Insert a run whose roots are ready in ``steps``: two statements, no result read
        (so on PostgreSQL, BEGIN, the inserts and COMMIT go out in one round trip)."""
        self._hot.insert_run.executemany(connection, [run])
        self._hot.insert_steps.executemany(connection, steps)
        dispatched = [
            log.event(
                run["run_id"], log.DISPATCHED, step=step["name"], attempt=step["epoch"], at=run["created_at"]
            )
            for step in steps
            if step["epoch"]
        ]
        self._history.write(connection, [_started(run), *dispatched])

    def _ready_roots(self, run: dict[str, Any], rows: list[dict[str, Any]]) -> list[Message] | None:
        """Make the roots of a new run ready in its rows before they are inserted (what
        :meth:`_admit` would do after the insert); None when a root needs more than that
        (it is skipped, or cannot be dispatched): then the rows are left untouched."""
        roots = [row for row in rows if row["remaining_deps"] == 0]
        ready: dict[str, dict[str, Any]] = {}
        in_group: dict[str, int] = {}
        for step in roots:
            # A root's conditions and references can only read the inputs.
            if step["spec"].get("wait") or not conditions_hold(
                step["spec"], results={}, inputs=run["inputs"]
            ):
                return None
            if step["group_name"] and step["group_limit"]:
                if in_group.get(step["group_name"], 0) >= step["group_limit"]:
                    continue  # stays pending with no dependency left: its group admits it later
                in_group[step["group_name"]] = in_group.get(step["group_name"], 0) + 1
            try:
                call_args = call_arguments(step["spec"], results={}, inputs=run["inputs"])
                self._check_declared(step["actor"])
            except (MissingValue, WorkflowError):
                return None
            ready[step["name"]] = call_args
        now = run["created_at"]
        outgoing = []
        for step in roots:
            if step["name"] in ready:
                token = uuid.uuid4().hex
                step.update(
                    call_args=ready[step["name"]], epoch=1, ready_at=now, **self._dispatch_claim(token, now)
                )
                outgoing.append(self._message(run, step, STEP, token=token))
        return outgoing

    def _dispatch_claim(self, token: str, now: datetime) -> dict[str, Any]:
        """The columns of a step claimed at its dispatch (see ``statements.DISPATCH_STEP``)."""
        return {
            "status": StepStatus.RUNNING,
            "claim": token,
            "claimed_retry": 0,
            "lease_until": now + self.lease,
            "attempts": 1,
        }

    # -- claims, from the saga middleware -----------------------------------------------------

    def claim(
        self,
        *,
        run_id: str,
        step: str,
        kind: str,
        epoch: int,
        retry: int,
        worker: str,
        concurrency_key: str | None = None,
        dispatch: str | None = None,
        first_delivery: bool | None = None,
    ) -> Claim | None:
        """Take a delivery of a step (or of its compensation); None if it must not run.

        It must not run when the step finished already, another live delivery
        holds it, the dispatch is stale (older epoch, or a retry already
        superseded), or the run is no longer in the matching phase.

        ``dispatch`` is the claim a step's dispatch took, carried by its message;
        ``first_delivery`` whether the broker's admission counted this delivery as
        the message's first (None: unknown).  A first delivery of a step still
        held by its dispatch claim only reads: no other delivery of the message
        can run, and the claim is already written.  A retry (``retry`` > 0) always
        claims: it may arrive before its failed attempt was recorded.
        """
        now = utc_now()
        step_kind = kind == STEP
        token, rows = dispatch, []
        if step_kind and dispatch and first_delivery and retry == 0:  # a retry claims: see ``_claim``
            rows = self._dispatched(run_id, step, epoch, dispatch, now)
        if not rows:
            token = uuid.uuid4().hex
            params = {
                "b_run": run_id,
                "b_step": step,
                "b_epoch": epoch,
                "b_retry": retry,
                "b_now": now,
                "b_token": token,
                "b_lease_until": now + self.lease,
                "b_worker": worker,
                "b_phase": sql.PHASES[step_kind],
                # A redelivery must wait for the lease: the first delivery may still be running.
                "b_dispatch": dispatch if first_delivery is not False else None,
            }
            statement = self._hot.claim_step if step_kind else self._hot.claim_compensation
            if self._sqlite:
                rows = self._group.run(functools.partial(statement.rows, params=params), order=run_id)
            else:
                # One autocommit round trip each: in a shared transaction a claim would cost the
                # same round trip, plus BEGIN and COMMIT, to save a commit.
                with self._single_statement() as connection:
                    rows = statement.rows(connection, params)
            if not rows:
                self._refused(run_id, step, params["b_dispatch"] if step_kind else None)
                return None
        if concurrency_key:
            self.leases.renew(concurrency_key, run_id)
        row = rows[0]
        attempt = row["attempts"] if step_kind else retry + 1
        dependents = tuple(row["dependents"] or ())
        advance = None
        if "successors" in row:
            advance = {"inputs": row["run_inputs"], "successors": row["successors"]}
        return Claim(
            run_id, step, kind, token, attempt, row["checkpoint"], row["progress"], dependents, now, advance
        )

    def _refused(self, run_id: str, step: str, dispatch: str | None) -> None:
        """A delivery could not claim: a run past its deadline fails; and a step whose run stopped
        while its message (presenting ``dispatch``) waited never starts, so the run unwinds now
        instead of waiting for the dispatch claim's lease."""
        run = self._run(run_id, missing_ok=True)
        if run is None or self._running_after_deadline_check(run) or not dispatch:
            return
        row = {"run_id": run_id, "name": step, "claim": dispatch, "attempts": None}
        self._abandon(row, error=NOT_STARTED, only_if_stopped=True)

    def _dispatched(
        self, run_id: str, step: str, epoch: int, dispatch: str, now: datetime
    ) -> list[dict[str, Any]]:
        """The row of a first delivery's step if its dispatch claim still holds it, read
        without writing (none: take a claim as any delivery does).  A lease with less than
        half its length left is renewed by a written claim instead, so the first heartbeat
        comes in time."""
        params = {"b_run": run_id, "b_step": step, "b_epoch": epoch, "b_dispatch": dispatch}
        params.update(b_lease_floor=now + self.lease / 2, b_now=now)
        # On PostgreSQL the same read also brings what recording the success in one statement needs.
        return self._read(self._hot.dispatched_successors or self._hot.dispatched_step, params)

    def lease_left_ms(self, *, run_id: str, step: str, kind: str, epoch: int) -> int | None:
        """Milliseconds until the live claim on this dispatch of a step (or compensation) runs
        out; None when no live claim holds it.  A redelivery refused while a claim holds is
        postponed that long: the claim may be a dead worker's."""
        now = utc_now()
        query = select(STEPS.c.lease_until).where(
            STEPS.c.run_id == run_id,
            STEPS.c.name == step,
            STEPS.c.epoch == epoch,
            STEPS.c.status == (StepStatus.RUNNING if kind == STEP else StepStatus.COMPENSATING),
            STEPS.c.claim.is_not(None),
            STEPS.c.lease_until >= now,
        )
        with self.database.connect() as connection:
            lease_until = connection.execute(query).scalar()
        return None if lease_until is None else int((lease_until - now).total_seconds() * 1000) + 1

    def expire_claims(self, *, workers: Sequence[str], tokens: Sequence[str]) -> int:
        """End now the leases of the claims of worker processes ``workers`` (``host:pid``) and
        of the claims ``tokens`` (dispatch claims their messages carry): their supervisor saw
        those processes die.  How many."""
        if not workers and not tokens:
            return 0
        now = utc_now()
        statement = (
            update(STEPS)
            .where(
                or_(STEPS.c.worker_id.in_(list(workers)), STEPS.c.claim.in_(list(tokens))),
                STEPS.c.claim.is_not(None),
                STEPS.c.lease_until > now,
            )
            .values(lease_until=now)
        )
        with self._single_statement() as connection:
            return connection.execute(statement).rowcount

    def quarantined(self, *, run_id: str, step: str, kind: str, epoch: int, error: str) -> None:
        """A delivery of this dispatch killed its worker too often and was dead-lettered: the
        step (or compensation) failed for good, whoever's claim holds it."""
        with self.database.connect() as connection:
            token = connection.execute(
                select(STEPS.c.claim).where(
                    STEPS.c.run_id == run_id, STEPS.c.name == step, STEPS.c.epoch == epoch
                )
            ).scalar()
        try:
            with self._locked(run_id) as (connection, run):
                if token is None:
                    # Not claimed (a queued compensation, a step waiting for its retry): claim it here.
                    token = uuid.uuid4().hex
                    values = {"claim": token, "status": _claimed(kind)}
                    if not self._set_step(connection, run, step, _unclaimed_status(kind), **values):
                        raise Unchanged
                claim = Claim(run_id, step, kind, token, 0, None, None)
                outgoing = self._record_failure(connection, run, claim, error, None, utc_now(), False)
        except Unchanged:
            return
        self._send(outgoing)

    def save_checkpoint(self, claim: Claim, *, progress: float | None, payload: Any) -> bool:
        """Record a running step's progress and checkpoint; False if the claim was lost."""
        _check_json(payload, f"checkpoint of step {claim.step!r}")
        with self._single_statement() as connection:
            statement = (
                update(STEPS)
                .where(
                    STEPS.c.run_id == claim.run_id, STEPS.c.name == claim.step, STEPS.c.claim == claim.token
                )
                .values(progress=progress, checkpoint=payload)
            )
            return connection.execute(statement).rowcount == 1

    def renew(self, tokens: list[str]) -> set[str]:
        """Extend the leases of claims still running; return the tokens whose run wants them aborted."""
        if not tokens:
            return set()
        with self._transaction() as connection:
            connection.execute(
                update(STEPS).where(STEPS.c.claim.in_(tokens)).values(lease_until=utc_now() + self.lease)
            )
            query = (
                select(
                    STEPS.c.claim,
                    STEPS.c.status,
                    RUNS.c.run_id,
                    RUNS.c.abort_requested,
                    RUNS.c.concurrency_key,
                )
                .join(RUNS, RUNS.c.run_id == STEPS.c.run_id)
                .where(STEPS.c.claim.in_(tokens))
            )
            rows = connection.execute(query).all()
        for key, run_id in {(row.concurrency_key, row.run_id) for row in rows if row.concurrency_key}:
            self.leases.renew(key, run_id)
        return {row.claim for row in rows if row.abort_requested and row.status == StepStatus.RUNNING}

    # -- step outcomes ---------------------------------------------------------------------------

    def succeeded(self, claim: Claim, result: Any) -> None:
        """The delivery holding ``claim`` returned ``result``."""
        try:
            _check_json(result, f"result of step {claim.step!r}")
        except WorkflowError as exc:
            self.failed(claim, str(exc), retry=None)
            return
        try:
            if claim.kind == COMPENSATE:
                with self._locked(claim.run_id) as (connection, run):
                    outgoing = self._record_compensated(connection, run, claim)
            elif claim.advance is not None and self._record_success_advancing(claim, result):
                return  # recorded, and its next steps sent, by one statement
            elif claim.dependents is not None:
                try:
                    self._record_success_pipelined(claim, result)
                    return  # its next steps went out with the shared transaction's
                except _RunNotRunning:
                    with self._locked(claim.run_id, for_success=True) as (connection, run):
                        outgoing = self._record_success(connection, run, claim, result)
            else:
                with self._locked(claim.run_id, for_success=True) as (connection, run):
                    outgoing = self._record_success(connection, run, claim, result)
        except Unchanged:
            return
        self._send(outgoing)

    def _record_compensated(self, connection, run: dict, claim: Claim) -> list[Message]:
        if not self._update_claimed(
            connection, claim, StepStatus.COMPENSATING, status=StepStatus.COMPENSATED
        ):
            raise Unchanged
        self._history.write(connection, _outcome(claim, log.COMPENSATED))
        return self._unwind(connection, run)

    def failed(
        self, claim: Claim, error: str, *, retry: int | None, retry_delay_ms: int = 0, aborted: bool = False
    ) -> bool:
        """The delivery holding ``claim`` raised ``error``; ``retry`` is the retry number
        Dramatiq scheduled (due within ``retry_delay_ms``), or None when the failure is final.
        An ``aborted`` step (its run is stopping) ends ``cancelled``.  True when a scheduled
        retry will not run: the run stopped, the step's failure is final."""
        retry_due = utc_now() + timedelta(milliseconds=retry_delay_ms)
        with self._locked(claim.run_id) as (connection, run):
            refused = retry is not None and claim.kind == STEP and run["status"] != RunStatus.RUNNING
            outgoing = self._record_failure(connection, run, claim, error, retry, retry_due, aborted)
        self._send(outgoing)
        return refused

    def release(self, claim: Claim) -> None:
        """Give a claim back unfinished (the message was skipped after the claim)."""
        with self._single_statement() as connection:
            connection.execute(
                update(STEPS)
                .where(
                    STEPS.c.run_id == claim.run_id, STEPS.c.name == claim.step, STEPS.c.claim == claim.token
                )
                .values(claim=None, lease_until=None, status=_unclaimed_status(claim.kind))
            )

    def _record_success(self, connection, run: dict, claim: Claim, result: Any) -> list[Message]:
        """The run was locked with ``completions + 1`` and ``open_steps - 1`` already applied."""
        params = {
            "b_run": claim.run_id,
            "b_step": claim.step,
            "b_token": claim.token,
            "b_result": result,
            "b_seq": run["completions"],
            "b_now": utc_now(),
            "b_started": claim.started_at,
        }
        steps = self._hot.succeed_step.rows(connection, params)
        if not steps:
            raise Unchanged  # a stale delivery: roll the counters back
        step = steps[0]
        self._history.write(connection, _outcome(claim, log.SUCCEEDED))
        return self._finished(connection, run, step)

    def _record_success_pipelined(self, claim: Claim, result: Any) -> None:
        """:meth:`_record_success` with the step's dependents known in advance: locking the run,
        recording the step and releasing its dependents go out together (on PostgreSQL in one
        pipelined round trip instead of three), then the graph advances as usual, all in the
        transaction this process's concurrent successes share (group commit), whose leader
        sends the next steps of all of them at once.  Raises :class:`_RunNotRunning` (nothing
        recorded) when the run is no longer running: that case takes the general path."""
        operation = functools.partial(
            self._record_success_on, claim=claim, result=result, sender=sender_carrier()
        )
        run, status = self._group.run(operation, order=claim.run_id, sends=True)
        self._trace_end(run, status)

    def _record_success_advancing(self, claim: Claim, result: Any) -> bool:
        """Record a success with one statement (:data:`saga.transitions.SUCCEED_AND_ADVANCE`) if
        the claim's read showed everything it decides can be planned here; in a transaction
        shared with this process's concurrent successes, whose leader sends all their next steps
        at once.  False (nothing recorded) when the general path must do it: a dependent that
        needs it, a stale delivery, a run no longer running, a statement that failed."""
        plan = transitions.plan_dependents(
            step=claim.step,
            result=result,
            dependents=claim.dependents or (),
            advance=claim.advance,
            declared=self.broker.actors.__contains__,
        )
        if plan is None:
            return False
        now = utc_now()
        tokens = [uuid.uuid4().hex for _ in plan]
        params = {"b_run": claim.run_id, "b_step": claim.step, "b_token": claim.token, "b_result": result}
        params.update(b_now=now, b_started=claim.started_at, b_attempt=claim.attempt)
        params.update(
            b_names=[step["name"] for step in plan],
            b_args=[json.dumps(step["call_args"]) for step in plan],
            b_tokens=tokens,
            b_lease_until=now + self.lease,
        )
        statement, sender = self._hot.succeed_and_advance, sender_carrier()
        positions = {step["name"]: index for index, step in enumerate(plan)}

        def operation(connection):
            cursor = statement.send(connection, params)  # queued: read once the commit synced

            def settle() -> tuple[dict[str, Any] | None, list[Message]]:
                rows = statement.fetch(cursor)
                if not rows:
                    return None, []
                run = rows[0]
                outgoing = []
                for row in run.pop("dispatched") or ():
                    index = positions[row["name"]]
                    step = {**plan[index], "epoch": row["epoch"]}
                    outgoing.append(self._message(run, step, STEP, token=tokens[index]))
                address(outgoing, sender)
                return run, outgoing

            return settle

        try:
            run = self._advancing.run(operation, order=claim.run_id, sends=True, deferred=True)
        except Exception as exc:  # the general path records it (or raises what the database says)
            self.logger.debug("A one-statement success failed (%s); the general path records it.", exc)
            return False
        if run is None:
            return False
        if run["status"] != RunStatus.RUNNING:
            self._release_slot(run)  # its last step: the run succeeded
        self._trace_end(run, RunStatus.RUNNING)
        return True

    def _record_success_on(
        self, connection, *, claim: Claim, result: Any, sender: dict[str, str] | None
    ) -> tuple[tuple[dict[str, Any], str], list[Message]]:
        """The body of :meth:`_record_success_pipelined`, in the caller's transaction: the run
        and its status before, and the messages to send, addressed to the span of ``sender``
        (the caller's: another thread may send them)."""
        run_id, now = claim.run_id, utc_now()
        hot = self._hot
        with self._pipeline(connection):
            lock = hot.lock_run_for_success.send(connection, {"b_run": run_id, "b_now": now})
            params = {"b_run": run_id, "b_step": claim.step, "b_token": claim.token}
            params.update(b_result=result, b_now=now, b_started=claim.started_at)
            record = hot.succeed_step_pipelined.send(connection, params)
            releases = [
                hot.release_dependent.send(connection, {"b_run": run_id, "b_step": name, "b_skipped": 0})
                for name in claim.dependents
            ]
            # Rolled back with the rest when the delivery turns out stale.
            self._history.write(connection, _outcome(claim, log.SUCCEEDED))
        runs, steps = hot.lock_run_for_success.fetch(lock), hot.succeed_step_pipelined.fetch(record)
        released = [row for cursor in releases for row in hot.release_dependent.fetch(cursor)]
        if not runs:
            raise WorkflowError(f"no run with id {run_id!r}")
        if not steps:
            raise Unchanged  # a stale delivery: roll the counters back
        run = runs[0]
        if run["status"] != RunStatus.RUNNING:
            raise _RunNotRunning  # its dependents must not be released: roll back
        snapshot = dict(run)
        outgoing = self._finished(connection, run, steps[0], released=released)
        self._save(connection, run, snapshot)
        address(outgoing, sender)
        return (run, snapshot["status"]), outgoing

    def _pipeline(self, connection):
        """psycopg's pipeline mode on PostgreSQL (statements queue until the block ends);
        nothing on SQLite, where a statement costs no round trip."""
        if self._sqlite:
            return nullcontext()
        return connection.connection.driver_connection.pipeline()

    def _record_failure(
        self,
        connection,
        run: dict,
        claim: Claim,
        error: str,
        retry: int | None,
        retry_due: datetime,
        aborted: bool,
    ) -> list[Message]:
        expected = StepStatus.RUNNING if claim.kind == STEP else StepStatus.COMPENSATING
        error_column = "error" if claim.kind == STEP else "compensation_error"
        if retry is not None and (claim.kind == COMPENSATE or run["status"] == RunStatus.RUNNING):
            status = _unclaimed_status(claim.kind)
            # The sweep sends a step again only once its retry is overdue.
            values = {"status": status, "min_retry": retry, error_column: error, "ready_at": retry_due}
            if self._update_claimed(connection, claim, expected, finish=False, **values):
                detail = f"retry {retry} due {retry_due.isoformat(timespec='milliseconds')}: {error}"
                self._history.write(connection, _outcome(claim, log.RETRYING, detail))
            return []
        if claim.kind == COMPENSATE:
            values = {error_column: error}
            if self._update_claimed(connection, claim, expected, finish=False, **values):
                run.update(
                    status=RunStatus.COMPENSATION_FAILED, error=f"compensation of {claim.step!r}: {error}"
                )
                self._history.write(connection, _outcome(claim, log.COMPENSATION_FAILED, error))
            return []
        status = StepStatus.CANCELLED if aborted else StepStatus.FAILED
        if not self._update_claimed(connection, claim, expected, status=status, error=error):
            return []
        self._history.write(connection, _outcome(claim, log.STEP_CANCELLED if aborted else log.FAILED, error))
        return self._stopped(connection, run, f"step {claim.step!r} failed: {error}")

    def _stopped(self, connection, run: dict, reason: str) -> list[Message]:
        """A step ended without succeeding: the run stops starting steps and unwinds."""
        run["open_steps"] -= 1
        if run["status"] == RunStatus.RUNNING:
            return self._begin_unwinding(connection, run, reason, abort=run["on_failure"] == "cancel")
        if run["status"] == RunStatus.COMPENSATING:
            return self._unwind(connection, run)
        return []

    def _update_claimed(
        self, connection, claim: Claim, expected: str, *, finish: bool = True, **values
    ) -> dict[str, Any] | None:
        """Apply ``values`` to the step if ``claim`` still holds it in status ``expected``;
        returns the step's name, status, dependents and group, or None."""
        values.update(claim=None, lease_until=None)
        # A compensation leaves the step's own timings alone: they say how long the step ran.
        if finish and claim.kind == STEP:
            values["finished_at"] = utc_now()
        if claim.started_at is not None and claim.kind == STEP:
            values["started_at"] = func.coalesce(STEPS.c.started_at, claim.started_at)
        statement = (
            update(STEPS)
            .where(
                STEPS.c.run_id == claim.run_id,
                STEPS.c.name == claim.step,
                STEPS.c.claim == claim.token,
                STEPS.c.status == expected,
            )
            .values(**values)
            .returning(STEPS.c.name, STEPS.c.status, STEPS.c.dependents, STEPS.c.group_name)
        )
        row = connection.execute(statement).mappings().first()
        return dict(row) if row else None

    # -- advancing the graph (inside a locked transaction) --------------------------------------

    def _finished(
        self, connection, run: dict, step: dict[str, Any], *, released: list[dict] | None = None
    ) -> list[Message]:
        """A step is done (succeeded or skipped; ``open_steps`` already counts it): release its
        dependents and its group slot.  ``step`` holds its name, status, dependents and group;
        ``released``: the dependents' rows if the caller released them already."""
        outgoing: list[Message] = []
        if run["status"] == RunStatus.RUNNING:
            candidates: list[dict[str, Any]] = []
            if released is not None:
                candidates += released
            elif step["dependents"]:
                skipped = int(step["status"] == StepStatus.SKIPPED)
                for name in step["dependents"]:
                    params = {"b_run": run["run_id"], "b_step": name, "b_skipped": skipped}
                    candidates += self._hot.release_dependent.rows(connection, params)
            if step["group_name"]:
                candidates += self._waiting_in_group(connection, run["run_id"], step["group_name"])
            outgoing = self._admit(connection, run, candidates)
        elif run["status"] == RunStatus.COMPENSATING:
            outgoing = self._unwind(connection, run)
        self._finish_if_done(connection, run)
        return outgoing

    def _admit(self, connection, run: dict, candidates: Iterable[dict[str, Any]]) -> list[Message]:
        """Make ready every candidate (a step row) whose dependencies are done; skip those whose
        dependencies were all skipped or whose conditions fail."""
        outgoing: list[Message] = []
        for step in {row["name"]: row for row in candidates}.values():
            if step["status"] != StepStatus.PENDING or step["remaining_deps"] != 0:
                continue
            results = self._results(connection, run["run_id"], step)
            deps = step["depends_on"]
            only_skipped_deps = bool(deps) and step["skipped_deps"] == len(deps)
            if only_skipped_deps or not conditions_hold(step["spec"], results=results, inputs=run["inputs"]):
                outgoing += self._skip(connection, run, step)
            elif not self._group_has_room(connection, run["run_id"], step):
                continue
            else:
                outgoing += self._dispatch_step(connection, run, step, results)
        return outgoing

    def _dispatch_step(self, connection, run: dict, step: dict, results: dict) -> list[Message]:
        """Dispatch a step whose dependencies are done: it is claimed for its message
        (``running``), whose first delivery then runs it without a write of its own."""
        try:
            call_args = call_arguments(step["spec"], results=results, inputs=run["inputs"])
            self._check_declared(step["actor"])
        except (MissingValue, WorkflowError) as exc:
            error = f"cannot dispatch: {exc}"
            self._set_step(
                connection, run, step["name"], StepStatus.PENDING, status=StepStatus.FAILED, error=error
            )
            self._history.write(
                connection, [log.event(run["run_id"], log.FAILED, step=step["name"], detail=error)]
            )
            return self._stopped(connection, run, f"step {step['name']!r} failed: {error}")
        values, now, token = {"call_args": call_args, "epoch": step["epoch"] + 1}, utc_now(), uuid.uuid4().hex
        plan = self._wait_plan(connection, run, step, now)
        started: list[Message] = []
        if plan is not None:
            call_args[1].update(plan.kwargs)
            if step["spec"]["wait"]["kind"] == children.CHILD:
                child_id, started = self._start_child(connection, run, step, call_args[1], values["epoch"])
                call_args[1]["run_id"] = child_id
        params = {"b_run": run["run_id"], "b_step": step["name"], "b_call_args": call_args}
        lease_until = plan.lease_until if plan is not None else now + self.lease
        params.update(b_epoch=values["epoch"], b_now=now, b_token=token, b_lease_until=lease_until)
        if self._hot.dispatch_step.rowcount(connection, params) != 1:
            return []
        step.update(values)
        event = log.event(run["run_id"], log.DISPATCHED, step=step["name"], attempt=values["epoch"], at=now)
        self._history.write(connection, [event])
        if plan is not None and not plan.send:
            return started  # the signal, or the child's end, sends the step's message
        message = self._message(run, step, STEP, token=token)
        if plan is not None and plan.due is not None:
            message.options[SAGA_OPTION][DUE_KEY] = waits.epoch_ms(plan.due)
        return [message]

    def _wait_plan(self, connection, run: dict, step: dict, now: datetime) -> waits.WaitPlan | None:
        """How a waiting step (timer, signal: :mod:`saga.waits`) is dispatched; None for others."""
        wait = step["spec"].get("wait")
        if not wait:
            return None
        if wait["kind"] == children.CHILD:
            return waits.WaitPlan(now + waits.NO_TIMEOUT_LEASE, None, False, {})
        signalled = wait["kind"] == waits.SIGNAL and self._signal(connection, run["run_id"], wait["signal"])
        return waits.plan(wait, now=now, lease=self.lease, signalled=bool(signalled))

    def _start_child(
        self, connection, run: dict, step: dict, kwargs: dict[str, Any], epoch: int
    ) -> tuple[str, list[Message]]:
        """Start the child run of ``step`` (a :func:`saga.children.child` step) in the parent's
        transaction; its id and the messages of its first steps."""
        wait = step["spec"]["wait"]
        definition = wait["definition"]
        inputs = kwargs.pop("inputs", None)
        child = {
            "run_id": children.child_run_id(run["run_id"], step["name"], epoch),
            "workflow": wait["workflow"],
            "workflow_version": wait["version"],
            "inputs": inputs,
            "on_failure": definition["on_failure"],
            "concurrency_key": None,
            "concurrency_limit": definition["concurrency_limit"],
            "parent_run_id": run["run_id"],
            "parent_step": step["name"],
        }
        if definition.get("deadline_s") is not None:
            child["deadline_at"] = utc_now() + timedelta(seconds=definition["deadline_s"])
        state, rows = self._rows(child, step_rows(definition), {})
        outgoing = self._insert_new(connection, state, rows, {})
        entry = log.event(run["run_id"], log.CHILD_STARTED, step=step["name"], detail=child["run_id"])
        self._history.write(connection, [entry])
        return child["run_id"], outgoing

    def child_outcome(self, run_id: str) -> dict[str, Any]:
        """What a child step returns: the child run's id, status and its steps' results; raises
        :class:`saga.children.ChildWorkflowFailed` when it did not succeed."""
        run = self._run(run_id)
        if run["status"] != RunStatus.SUCCEEDED:
            raise children.ChildWorkflowFailed(
                f"child run {run_id} ({run['workflow']}) is {run['status']}: {run['error'] or 'no error'}"
            )
        with self.database.connect() as connection:
            rows = self._steps(connection, run_id, None)
        results = {name: row["result"] for name, row in rows.items() if row["status"] == StepStatus.SUCCEEDED}
        return {"run_id": run_id, "status": str(run["status"]), "results": results}

    def _wake_parent(self, child: dict[str, Any]) -> None:
        """A child run ended: send its parent's waiting step (which reads the outcome)."""
        parent_id, name = child.get("parent_run_id"), child.get("parent_step")
        if not parent_id:
            return
        now = utc_now()
        with self._transaction() as connection:
            rows = self._steps(connection, parent_id, [name])
            step = rows.get(name)
            if step is None or step["status"] != StepStatus.RUNNING or not step["claim"]:
                return
            if step["call_args"][1].get("run_id") != child["run_id"]:
                return  # a child of an older dispatch of the step
            # The lease now runs from the child's end: recovery resends if this message is lost.
            connection.execute(
                update(STEPS)
                .where(STEPS.c.run_id == parent_id, STEPS.c.name == name, STEPS.c.claim == step["claim"])
                .values(lease_until=now + self.lease, ready_at=now)
            )
            parent = (
                connection.execute(
                    select(RUNS.c.run_id, RUNS.c.concurrency_key).where(RUNS.c.run_id == parent_id)
                )
                .mappings()
                .first()
            )
        self._send([self._message(dict(parent), step, STEP, token=step["claim"])])

    def _unwoken_parents(self, now: datetime, stale: datetime) -> list[dict[str, Any]]:
        """Child runs that ended a while ago whose parent's step still waits (its wake-up was
        lost: the step's lease is still the child's, not one started by a wake-up)."""
        children_runs = RUNS.alias("child")
        query = (
            select(children_runs.c.run_id, children_runs.c.parent_run_id, children_runs.c.parent_step)
            .join(
                STEPS,
                and_(
                    STEPS.c.run_id == children_runs.c.parent_run_id,
                    STEPS.c.name == children_runs.c.parent_step,
                ),
            )
            .where(
                children_runs.c.parent_run_id.is_not(None),
                children_runs.c.status.in_(list(ENDED_RUN_STATUSES)),
                children_runs.c.finished_at < stale,
                STEPS.c.status == StepStatus.RUNNING,
                STEPS.c.lease_until > now + waits.NO_TIMEOUT_LEASE / 2,
            )
        )
        with self.database.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def _cancel_children(self, run_id: str) -> None:
        """The run is stopping: cancel its running children first (each compensates)."""
        query = select(RUNS.c.run_id).where(
            RUNS.c.parent_run_id == run_id, RUNS.c.status.in_([RunStatus.RUNNING])
        )
        with self.database.connect() as connection:
            active = list(connection.execute(query).scalars())
        for child_id in active:
            try:
                self.cancel(child_id)
            except WorkflowError as exc:  # it ended meanwhile
                self.logger.info("Child run %s of %s not cancelled: %s", child_id, run_id, exc)

    def _signal(self, connection, run_id: str, name: str) -> dict[str, Any] | None:
        """The newest signal ``name`` the run received, or None."""
        query = (
            select(SIGNALS.c.payload, SIGNALS.c.received_at)
            .where(SIGNALS.c.run_id == run_id, SIGNALS.c.name == name)
            .order_by(SIGNALS.c.id.desc())
            .limit(1)
        )
        row = connection.execute(query).first()
        return {"payload": row.payload, "at": row.received_at.isoformat()} if row else None

    def received_signal(self, run_id: str, name: str) -> dict[str, Any] | None:
        """The newest signal ``name`` run ``run_id`` received (``{"payload", "at"}``), or None."""
        with self.database.connect() as connection:
            return self._signal(connection, run_id, name)

    @_reconnecting
    def signal(self, run_id: str, name: str, payload: Any = None) -> int:
        """Deliver signal ``name`` (with a JSON ``payload``) to a run: it is kept with the run, and
        each step waiting for it runs now.  Returns how many steps it woke (0: kept for later)."""
        if not isinstance(name, str) or not name:
            raise WorkflowError("a signal needs a non-empty name")
        _check_json(payload, f"payload of signal {name!r}")
        with self._locked(run_id) as (connection, run):
            if run["status"] not in (RunStatus.RUNNING, RunStatus.COMPENSATING):
                raise WorkflowError(f"run {run_id} is {run['status']}; only a running run takes signals")
            now = utc_now()
            connection.execute(
                insert(SIGNALS).values(run_id=run_id, name=name, payload=payload, received_at=now)
            )
            outgoing = []
            for step in self._steps_in(connection, run_id, (StepStatus.RUNNING,)):
                wait = step["spec"].get("wait") or {}
                if wait.get("kind") != waits.SIGNAL or wait.get("signal") != name or not step["claim"]:
                    continue
                # The lease now runs from the signal: recovery resends if this message is lost.
                values = {"lease_until": now + self.lease, "ready_at": now}
                self._set_step(connection, run, step["name"], StepStatus.RUNNING, **values)
                outgoing.append(self._message(run, step, STEP, token=step["claim"]))
            woke = ", ".join(m.options[SAGA_OPTION]["step"] for m in outgoing) or "no step waits yet: kept"
            self._history.write(
                connection, [log.event(run_id, log.SIGNAL_RECEIVED, detail=f"{name}: {woke}")]
            )
        self._send(outgoing)
        return len(outgoing)

    def _skip(self, connection, run: dict, step: dict[str, Any]) -> list[Message]:
        if not self._set_step(connection, run, step["name"], StepStatus.PENDING, status=StepStatus.SKIPPED):
            return []
        self._history.write(connection, [log.event(run["run_id"], log.SKIPPED, step=step["name"])])
        run["open_steps"] -= 1
        return self._finished(connection, run, {**step, "status": StepStatus.SKIPPED})

    def _set_step(self, connection, run: dict, name: str, expected: str, **values) -> bool:
        statement = (
            update(STEPS)
            .where(STEPS.c.run_id == run["run_id"], STEPS.c.name == name, STEPS.c.status == expected)
            .values(**values)
        )
        return connection.execute(statement).rowcount == 1

    def _group_has_room(self, connection, run_id: str, step: dict) -> bool:
        if not step["group_name"] or not step["group_limit"]:
            return True
        query = select(func.count()).where(
            STEPS.c.run_id == run_id,
            STEPS.c.group_name == step["group_name"],
            STEPS.c.status.in_([StepStatus.READY, StepStatus.RUNNING]),
        )
        return connection.execute(query).scalar() < step["group_limit"]

    def _waiting_in_group(self, connection, run_id: str, group: str) -> list[dict[str, Any]]:
        query = (
            select(STEPS)
            .where(
                STEPS.c.run_id == run_id,
                STEPS.c.group_name == group,
                STEPS.c.status == StepStatus.PENDING,
                STEPS.c.remaining_deps == 0,
            )
            .order_by(STEPS.c.position)
        )
        return [dict(row) for row in connection.execute(query).mappings()]

    def _results(self, connection, run_id: str, step: dict) -> dict[str, Any]:
        """Results of the steps ``step`` refers to (in arguments, conditions or piping)."""
        names = referenced_steps(step["spec"])
        if not names:
            return {}
        rows = connection.execute(sql.RESULTS, {"b_run": run_id, "b_names": sorted(names)})
        return {row.name: row.result for row in rows}

    def _finish_if_done(self, connection, run: dict) -> None:
        if run["status"] == RunStatus.RUNNING and run["open_steps"] == 0:
            run.update(status=RunStatus.SUCCEEDED, finished_at=utc_now())
            self._history.write(connection, [log.event(run["run_id"], log.RUN_PREFIX + RunStatus.SUCCEEDED)])
            self._release_slot(run)

    # -- failure, cancellation and compensation ------------------------------------------------

    def _begin_unwinding(self, connection, run: dict, reason: str, *, abort: bool) -> list[Message]:
        """Stop starting steps and, once nothing runs, compensate in reverse order of completion."""
        run.update(status=RunStatus.COMPENSATING, error=reason[:MAX_ERROR_LENGTH], abort_requested=abort)
        self._history.write(connection, [log.event(run["run_id"], log.UNWINDING, detail=reason)])
        cancelled = connection.execute(
            update(STEPS)
            .where(
                STEPS.c.run_id == run["run_id"], STEPS.c.status.in_([StepStatus.PENDING, StepStatus.READY])
            )
            .values(status=StepStatus.CANCELLED, claim=None, finished_at=utc_now())
        ).rowcount
        run["open_steps"] -= cancelled + self._withdraw_dispatched(connection, run["run_id"])
        return self._unwind(connection, run)

    def _withdraw_dispatched(self, connection, run_id: str) -> int:
        """Cancel the run's dispatched steps whose message no worker has taken (withdrawn from
        the broker first, so none of them starts after all); how many."""
        if self.withdraw is None:
            return 0
        query = select(STEPS.c.name, STEPS.c.epoch, STEPS.c.claim, STEPS.c.spec).where(
            STEPS.c.run_id == run_id,
            STEPS.c.status == StepStatus.RUNNING,
            STEPS.c.worker_id.is_(None),  # a claim a delivery wrote names its worker
            STEPS.c.claimed_retry == 0,
        )
        dispatched = {
            message_id(run_id, row.name, STEP, row.epoch): row
            for row in connection.execute(query)
            # A child step ends with its child run, which is cancelled (and compensates) first.
            if (row.spec.get("wait") or {}).get("kind") != children.CHILD
        }
        try:
            withdrawn_ids = self.withdraw(self.broker, list(dispatched)) if dispatched else set()
        except Exception as exc:  # Redis away: the stop is recorded all the same
            self.logger.warning(
                "Could not withdraw %d queued step message(s) of run %s (%s): each is settled "
                "when delivered, or by recovery once its lease ran out.",
                len(dispatched),
                run_id,
                describe(exc),
            )
            return 0
        cancelled = 0
        for withdrawn in withdrawn_ids:
            row = dispatched[withdrawn]
            claim = Claim(run_id, row.name, STEP, row.claim, 0, None, None)
            values = {"status": StepStatus.CANCELLED, "error": NOT_STARTED}
            if self._update_claimed(connection, claim, StepStatus.RUNNING, **values) is not None:
                cancelled += 1
                entry = log.event(run_id, log.STEP_CANCELLED, step=row.name, detail=NOT_STARTED)
                self._history.write(connection, [entry])
        return cancelled

    def _unwind(self, connection, run: dict) -> list[Message]:
        """Dispatch the next compensation, or finish the run when none is left."""
        statuses = self._status_counts(connection, run["run_id"])
        if statuses.get(StepStatus.RUNNING) or statuses.get(StepStatus.COMPENSATING):
            return []
        if run["compensate"]:
            query = (
                select(STEPS)
                .where(STEPS.c.run_id == run["run_id"], STEPS.c.status == StepStatus.SUCCEEDED)
                .order_by(STEPS.c.completion_seq.desc())
            )
            for step in connection.execute(query).mappings():
                if step["spec"].get("compensate_with"):
                    return self._dispatch_compensation(connection, run, dict(step))
        if run["cancel_requested"]:
            final = RunStatus.CANCELLED
        elif statuses.get(StepStatus.COMPENSATED):
            final = RunStatus.COMPENSATED
        else:
            final = RunStatus.FAILED
        run.update(status=final, finished_at=utc_now(), abort_requested=False)
        self._history.write(connection, [log.event(run["run_id"], log.RUN_PREFIX + final)])
        self._release_slot(run)
        return []

    def _dispatch_compensation(self, connection, run: dict, step: dict) -> list[Message]:
        try:
            self._check_declared(step["spec"]["compensate_with"])
        except WorkflowError as exc:
            error = f"cannot dispatch the compensation: {exc}"
            values = {"status": StepStatus.COMPENSATING, "compensation_error": error}
            self._set_step(connection, run, step["name"], step["status"], **values)
            run.update(
                status=RunStatus.COMPENSATION_FAILED, error=f"compensation of {step['name']!r}: {error}"
            )
            failed = log.event(run["run_id"], log.COMPENSATION_FAILED, step=step["name"], detail=error)
            self._history.write(connection, [failed])
            return []
        values = {"status": StepStatus.COMPENSATING, "epoch": step["epoch"] + 1, "min_retry": 0}
        values.update(claimed_retry=None, claim=None, ready_at=utc_now(), compensation_error=None)
        if not self._set_step(connection, run, step["name"], step["status"], **values):
            return []
        started = log.event(
            run["run_id"], log.COMPENSATION_STARTED, step=step["name"], attempt=values["epoch"]
        )
        self._history.write(connection, [started])
        step.update(values)
        return [self._message(run, step, COMPENSATE)]

    @_reconnecting
    def cancel(self, run_id: str, *, compensate: bool = True) -> None:
        """Cancel a running run: pending steps never start, running ones are asked to abort,
        and (unless ``compensate`` is False) succeeded steps are compensated."""
        with self._locked(run_id) as (connection, run):
            if run["status"] not in (RunStatus.RUNNING, RunStatus.COMPENSATING):
                raise WorkflowError(f"run {run_id} is {run['status']}; only a running run can be cancelled")
            if compensate and run["compensate"]:
                succeeded = self._steps_in(connection, run_id, (StepStatus.SUCCEEDED,))
                self._refuse_unknown_actors("cancel", run_id, succeeded, compensations=True)
            run.update(cancel_requested=True, compensate=run["compensate"] and compensate)
            detail = "with compensation" if run["compensate"] else "without compensation"
            self._history.write(connection, [log.event(run_id, log.CANCEL_REQUESTED, detail=detail)])
            if run["status"] == RunStatus.RUNNING:
                outgoing = self._begin_unwinding(connection, run, "cancelled by an operator", abort=True)
            else:
                outgoing = self._unwind(connection, run)
        self._send(outgoing)

    @_reconnecting
    def fail(self, run_id: str, reason: str) -> None:
        """Fail a running run (deadline expiry): like a failed step, with ``reason`` as the error."""
        with self._locked(run_id) as (connection, run):
            if run["status"] != RunStatus.RUNNING:
                return
            outgoing = self._begin_unwinding(connection, run, reason, abort=True)
        self._send(outgoing)

    @_reconnecting
    def resume(self, run_id: str) -> None:
        """Continue a run that stopped: a failed, compensated or cancelled run re-runs every step
        that did not succeed; a ``compensation_failed`` run retries the failed compensation."""
        run = self._run(run_id)
        if run["status"] == RunStatus.COMPENSATION_FAILED:
            return self._retry_compensation(run_id)
        if run["status"] not in (RunStatus.FAILED, RunStatus.COMPENSATED, RunStatus.CANCELLED):
            raise WorkflowError(f"run {run_id} is {run['status']}; only a stopped run can be resumed")
        with self.database.connect() as connection:
            rows = self._steps(connection, run_id, None)
        rerun = [row for row in rows.values() if row["status"] not in DONE_STEP_STATUSES]
        self._refuse_unknown_actors("resume", run_id, rerun)
        self._acquire_slot(run)
        with self._locked(run_id) as (connection, run):
            rows = self._steps(connection, run_id, None)
            done = {name for name, row in rows.items() if row["status"] in DONE_STEP_STATUSES}
            for name, row in rows.items():
                if name in done:
                    continue
                values = {
                    "status": StepStatus.PENDING,
                    "remaining_deps": sum(1 for d in row["depends_on"] if d not in done),
                    "skipped_deps": sum(
                        1 for d in row["depends_on"] if rows[d]["status"] == StepStatus.SKIPPED
                    ),
                    "claim": None,
                    "lease_until": None,
                    # A re-run's timings are its own, not counted from the first attempt.
                    "started_at": None,
                    "finished_at": None,
                }
                connection.execute(
                    update(STEPS).where(STEPS.c.run_id == run_id, STEPS.c.name == name).values(values)
                )
                row.update(values)
            rerun = ", ".join(name for name in rows if name not in done)
            self._history.write(connection, [log.event(run_id, log.RESUMED, detail=f"re-running {rerun}")])
            run.update(
                status=RunStatus.RUNNING,
                open_steps=len(rows) - len(done),
                error=None,
                finished_at=None,
                abort_requested=False,
                cancel_requested=False,
                compensate=True,
            )
            roots = [row for name, row in rows.items() if name not in done and row["remaining_deps"] == 0]
            outgoing = self._admit(connection, run, roots)
            self._finish_if_done(connection, run)
        self._send(outgoing)
        return None

    def _retry_compensation(self, run_id: str) -> None:
        with self._locked(run_id) as (connection, run):
            failed = self._steps_in(connection, run_id, (StepStatus.COMPENSATING,))
            self._refuse_unknown_actors("resume", run_id, failed, compensations=True)
            run.update(status=RunStatus.COMPENSATING, error=None)
            self._history.write(
                connection, [log.event(run_id, log.RESUMED, detail="retrying the compensation")]
            )
            outgoing = []
            for step in failed:
                outgoing += self._dispatch_compensation(connection, run, step)
        self._send(outgoing)

    @_reconnecting
    def resolve(self, run_id: str) -> None:
        """An operator undid a failed compensation by hand: mark it compensated and carry on."""
        with self._locked(run_id) as (connection, run):
            if run["status"] != RunStatus.COMPENSATION_FAILED:
                raise WorkflowError(
                    f"run {run_id} is {run['status']}; only compensation_failed can be resolved"
                )
            succeeded = self._steps_in(connection, run_id, (StepStatus.SUCCEEDED,))
            self._refuse_unknown_actors("resolve", run_id, succeeded, compensations=True)
            connection.execute(
                update(STEPS)
                .where(STEPS.c.run_id == run_id, STEPS.c.status == StepStatus.COMPENSATING)
                .values(
                    status=StepStatus.COMPENSATED, claim=None, compensation_error="resolved by an operator"
                )
            )
            run["status"] = RunStatus.COMPENSATING
            self._history.write(
                connection, [log.event(run_id, log.RESOLVED, detail="compensation done by hand")]
            )
            outgoing = self._unwind(connection, run)
        self._send(outgoing)

    # -- recovery ----------------------------------------------------------------------------------

    def recover(self) -> int:
        """Send again what was lost: ``ready`` steps (and queued compensations) not picked up
        within ``recovery_after``, and claims (a dispatch's or a worker's) whose lease nobody
        renewed.  Fail runs past their deadline.  Duplicates this creates are dropped at claim
        time.  Returns how many were sent."""
        now = utc_now()
        stale = now - self.recovery_after
        lost_claim = and_(STEPS.c.claim.is_not(None), STEPS.c.lease_until < now)
        waiting = and_(
            STEPS.c.claim.is_(None), STEPS.c.status.in_([StepStatus.READY, StepStatus.COMPENSATING])
        )
        query = (
            select(STEPS, RUNS.c.status.label("run_status"), RUNS.c.concurrency_key)
            .join(RUNS, RUNS.c.run_id == STEPS.c.run_id)
            .where(
                RUNS.c.status.in_([RunStatus.RUNNING, RunStatus.COMPENSATING]),
                STEPS.c.ready_at < stale,
                or_(lost_claim, waiting),
            )
        )
        with self.database.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
            expired = connection.execute(
                select(RUNS.c.run_id).where(RUNS.c.status == RunStatus.RUNNING, RUNS.c.deadline_at < now)
            ).scalars()
            expired = list(expired)
        for run_id in expired:
            self.fail(run_id, "deadline exceeded")
        for child in self._unwoken_parents(now, stale):
            self._wake_parent(child)
        outgoing = []
        for row in rows:
            kind = COMPENSATE if row["status"] == StepStatus.COMPENSATING else STEP
            if kind == STEP and row["run_status"] != RunStatus.RUNNING:
                self._abandon(row)
                continue
            retry = row["claimed_retry"] if row["claim"] else row["min_retry"]
            message = self._message(row, row, kind, retry=retry or 0)
            outgoing.append(self.readmit(message) if self.readmit else message)
        if outgoing:
            with self._transaction() as connection:
                for row in rows:
                    connection.execute(
                        update(STEPS)
                        .where(STEPS.c.run_id == row["run_id"], STEPS.c.name == row["name"])
                        .values(ready_at=now)
                    )
            self.logger.warning("Recovery: sending %d lost step message(s) again.", len(outgoing))
        self._send(outgoing)
        return len(outgoing)

    def _abandon(
        self,
        row: dict,
        *,
        error: str = "worker lost while the run was stopping",
        only_if_stopped: bool = False,
    ) -> None:
        """A step's worker died (or its message came) while its run was unwinding: count the
        step as cancelled.  ``only_if_stopped``: leave it alone while the run is running."""
        claim = Claim(row["run_id"], row["name"], STEP, row["claim"], row["attempts"], None, None)
        try:
            with self._locked(row["run_id"]) as (connection, run):
                if only_if_stopped and run["status"] == RunStatus.RUNNING:
                    raise Unchanged
                if not self._update_claimed(
                    connection, claim, StepStatus.RUNNING, status=StepStatus.CANCELLED, error=error
                ):
                    raise Unchanged
                cancelled = log.event(row["run_id"], log.STEP_CANCELLED, step=row["name"], detail=error)
                self._history.write(connection, [cancelled])
                outgoing = self._stopped(connection, run, error)
        except Unchanged:
            return
        self._send(outgoing)

    def _running_after_deadline_check(self, run: dict[str, Any]) -> bool:
        """Whether ``run`` is running, once failed if it is past its deadline."""
        if run["status"] != RunStatus.RUNNING:
            return False
        if run["deadline_at"] and run["deadline_at"] <= utc_now():
            self.fail(run["run_id"], "deadline exceeded")
            return False
        return True

    # -- plumbing ----------------------------------------------------------------------------------

    def _message(
        self, run: dict, step: dict, kind: str, *, retry: int = 0, token: str | None = None
    ) -> Message:
        """The message of one dispatch of ``step``; ``run`` needs ``run_id`` and ``concurrency_key``;
        ``token``: the claim the dispatch took, which the message presents."""
        run_id = run["run_id"]
        args, kwargs = step["call_args"]
        if kind == STEP:
            name, options = step["actor"], dict(step["spec"]["options"])
        else:
            name, options, kwargs = step["spec"]["compensate_with"], {}, {**kwargs, "result": step["result"]}
        options[SAGA_OPTION] = {"run": run_id, "step": step["name"], "kind": kind, "epoch": step["epoch"]}
        if run.get("concurrency_key"):
            options[SAGA_OPTION]["key"] = run["concurrency_key"]
        if token:
            options[SAGA_OPTION]["token"] = token
        if retry:
            options["retries"] = retry
        actor = self.broker.get_actor(name)
        return Message(
            queue_name=actor.queue_name,
            actor_name=name,
            args=tuple(args),
            kwargs=kwargs,
            options=options,
            message_id=message_id(run_id, step["name"], kind, step["epoch"]),
        )

    def _refuse_unknown_actors(
        self, operation: str, run_id: str, steps: Iterable[dict[str, Any]], *, compensations: bool = False
    ) -> None:
        """Raise before ``operation`` changes anything if it would dispatch one of ``steps`` (or,
        with ``compensations``, their compensations) through an actor this process does not know:
        a dispatch that cannot be sent would fail the step and stop the run instead."""
        for step in steps:
            actor = step["spec"].get("compensate_with") if compensations else step["actor"]
            if actor is not None and actor not in self.broker.actors:
                role = "is compensated by" if compensations else "runs"
                raise WorkflowError(
                    f"cannot {operation} run {run_id}: step {step['name']!r} {role} actor {actor!r}, "
                    "which this process does not declare; load the module that declares it "
                    "(TRADEFLOW_MODULES, or -m/--module on the CLI). Nothing was changed."
                )

    def _steps_in(self, connection, run_id: str, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        return [row for row in self._steps(connection, run_id, None).values() if row["status"] in statuses]

    def _check_declared(self, actor: str) -> None:
        """Steps are sent by whichever process finished the step before: it must know the actor."""
        if actor not in self.broker.actors:
            raise WorkflowError(
                f"actor {actor!r} is not declared in this process (import its module in every worker)"
            )

    def _trace_end(self, run: dict[str, Any], before: str | None) -> None:
        """The run's end span, and the status hook, once the transaction that changed it committed;
        and what a run's end or stop means for its family: a child's end wakes its parent's step,
        a parent that starts unwinding cancels its running children."""
        status = run["status"]
        if status != before and self.on_run_status is not None:
            try:
                self.on_run_status(run["run_id"], run["workflow"], str(status), run.get("error"))
            except Exception:
                self.logger.exception("The run status hook failed for run %s.", run["run_id"])
        if status != before:
            if before == RunStatus.RUNNING and status == RunStatus.COMPENSATING:
                self._cancel_children(run["run_id"])
            elif status in ENDED_RUN_STATUSES and run.get("parent_run_id"):
                try:
                    self._wake_parent(run)
                except Exception as exc:  # recovery wakes it later
                    self.logger.warning(
                        "Could not wake the parent of run %s: %s", run["run_id"], describe(exc)
                    )
        if status != before and status in ENDED_RUN_STATUSES:
            end_run_span(
                run["workflow"],
                run["run_id"],
                status=str(status),
                error=run.get("error"),
                tracer_provider=self.tracer_provider,
            )

    def _send(self, outgoing: list[Message]) -> None:
        links = fan_out_links(len(outgoing))
        if links is not None:
            for message in outgoing:
                message.options[LINKS_OPTION] = links
        try:
            self._dispatch(outgoing)
        except Exception:
            # Committed: the recovery sweep sends them again (a step once its dispatch claim ran out).
            self.logger.exception("Sending %d step message(s) failed; recovery will resend.", len(outgoing))

    def _dispatch(self, outgoing: list[Message]) -> None:
        dispatch(self.broker, outgoing, send_many=self.send_many)

    @contextmanager
    def _transaction(self, *, pipelined: bool = False) -> Iterator[Any]:
        """A write transaction.  On SQLite, threads of this process queue on a lock (cheaper
        than SQLite's sleeping busy handler) and the write lock is taken up front: a deferred
        transaction that reads, then writes, fails at once when another writer got in between.

        ``pipelined`` (PostgreSQL): statements, ``BEGIN`` and ``COMMIT`` go out in psycopg's
        pipeline mode, one round trip for all; only for blocks that read no results (in
        that mode a cursor has none until the commit, and SQLAlchemy would see no rows)."""
        if pipelined and not self._sqlite:
            with self.database.connect() as connection:
                driver = connection.connection.driver_connection
                try:
                    with driver.pipeline():
                        yield connection
                        # Queued like the statements: the pipeline's one sync carries it.
                        # (``driver.commit()`` would sync on its own, and the exit once more.)
                        driver.execute("COMMIT")
                except self._driver_error as exc:
                    # What SQLAlchemy would raise (IntegrityError, a lost connection invalidated).
                    lost = driver.closed
                    if lost:
                        connection.invalidate()
                    else:
                        driver.rollback()
                    raise DBAPIError.instance(
                        None, None, exc, self._driver_error, connection_invalidated=lost
                    ) from exc
                except BaseException:
                    if not driver.closed:
                        driver.rollback()
                    raise
            return
        if not self._sqlite:
            with self.database.begin() as connection:
                yield connection
            return
        with self._write_lock:
            connection = self._sqlite_writer()
            with connection.begin():
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                yield connection

    def _sqlite_writer(self):
        """This process's connection for writes to SQLite (under the write lock, so one
        thread at a time): kept open, since a pool checkout and return cost a fifth of a
        step's CPU.  A forked child opens its own (a SQLite connection must not cross a fork)."""
        if self._writer_pid != os.getpid():
            self._writer, self._writer_pid = self.database.connect(), os.getpid()
        return self._writer

    @contextmanager
    def _single_statement(self) -> Iterator[Any]:
        """A connection for one write statement.  On PostgreSQL it runs in autocommit:
        one round trip instead of three (``BEGIN``, the statement, ``COMMIT``)."""
        if self._sqlite:
            with self._transaction() as connection:
                yield connection
        else:
            with self._autocommit.connect() as connection:
                yield connection

    def _read(self, statement: DriverStatement, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of a read outside any write transaction: on SQLite on this thread's kept-open
        connection (no write lock, no pool checkout), on PostgreSQL in autocommit."""
        if not self._sqlite:
            with self._autocommit.connect() as connection:
                return statement.rows(connection, params)
        reader = getattr(self._readers, "connection", None)
        if reader is None or self._readers.pid != os.getpid():
            # Outside the pool, which has fewer connections than a worker has threads.
            dialect = self.database.dialect
            args, kwargs = dialect.create_connect_args(self.database.url)
            reader = self._readers.connection = dialect.connect(*args, **kwargs, timeout=SQLITE_READ_TIMEOUT)
            self._readers.pid = os.getpid()
        return statement.read(reader, params)  # a SELECT opens no transaction: no snapshot is kept

    def _lock(self, connection, run_id: str, *, for_success: bool = False) -> dict[str, Any]:
        """Lock the run's row (an update takes the row lock on every database) and read it;
        ``for_success`` also counts one more completion and one step less open."""
        statement = self._hot.lock_run_for_success if for_success else self._hot.lock_run
        rows = statement.rows(connection, {"b_run": run_id, "b_now": utc_now()})
        if not rows:
            raise WorkflowError(f"no run with id {run_id!r}")
        return rows[0]

    @contextmanager
    def _locked(self, run_id: str, *, for_success: bool = False) -> Iterator[tuple[Any, dict[str, Any]]]:
        """A transaction holding ``run_id``'s lock (see :meth:`_lock`);
        changes made to the yielded run dict are saved.  Raising :class:`Unchanged` inside
        rolls everything back."""
        with self._transaction() as connection:
            run = self._lock(connection, run_id, for_success=for_success)
            snapshot = dict(run)
            yield connection, run
            self._save(connection, run, snapshot)
        self._trace_end(run, snapshot["status"])

    def _save(self, connection, run: dict[str, Any], snapshot: dict[str, Any]) -> None:
        changed = {name: value for name, value in run.items() if snapshot[name] != value}
        if changed:
            self._hot.save_run(tuple(sorted(changed))).rowcount(
                connection, {**changed, "run_id": run["run_id"]}
            )

    def _run(self, run_id: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        with self.database.connect() as connection:
            row = connection.execute(select(RUNS).where(RUNS.c.run_id == run_id)).mappings().first()
        if row is None and not missing_ok:
            raise WorkflowError(f"no run with id {run_id!r}")
        return dict(row) if row else None

    def _steps(self, connection, run_id: str, names: list[str] | None) -> dict[str, dict[str, Any]]:
        query = select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.position)
        if names is not None:
            if not names:
                return {}
            query = query.where(STEPS.c.name.in_(names))
        return {row["name"]: dict(row) for row in connection.execute(query).mappings()}

    def _status_counts(self, connection, run_id: str) -> dict[str, int]:
        query = select(STEPS.c.status, func.count()).where(STEPS.c.run_id == run_id).group_by(STEPS.c.status)
        return dict(connection.execute(query).all())

    def _acquire_slot(self, run: dict) -> None:
        key = run.get("concurrency_key")
        if key and not self.leases.acquire(key, run["run_id"], limit=run["concurrency_limit"] or 1):
            holders = ", ".join(self.leases.holders(key))
            raise ConcurrencyLimitExceeded(
                f"concurrency key {key!r} allows {run['concurrency_limit']} active run(s); held by {holders}"
            )

    def _release_slot(self, run: dict) -> None:
        if run.get("concurrency_key"):
            self.leases.release(run["concurrency_key"], run["run_id"])


class HotStatements:
    """The statements every step runs, compiled for one dialect (see :mod:`saga.driver`)."""

    def __init__(self, dialect) -> None:
        self.claim_step = DriverStatement(sql.CLAIM_STEP, dialect, json_columns=("checkpoint", "dependents"))
        self.claim_compensation = DriverStatement(
            sql.CLAIM_COMPENSATION, dialect, json_columns=("checkpoint", "dependents")
        )
        self.lock_run = DriverStatement(sql.LOCK_RUN, dialect, json_columns=("inputs",))
        self.lock_run_for_success = DriverStatement(
            sql.LOCK_RUN_FOR_SUCCESS, dialect, json_columns=("inputs",)
        )
        self.succeed_step = DriverStatement(
            sql.SUCCEED_STEP, dialect, json_params=("b_result",), json_columns=("dependents",)
        )
        self.succeed_step_pipelined = DriverStatement(
            sql.SUCCEED_STEP_PIPELINED, dialect, json_params=("b_result",), json_columns=("dependents",)
        )
        self.release_dependent = DriverStatement(
            sql.RELEASE_DEPENDENT, dialect, json_columns=("spec", "depends_on", "dependents")
        )
        self.dispatch_step = DriverStatement(sql.DISPATCH_STEP, dialect, json_params=("b_call_args",))
        self.dispatched_step = DriverStatement(
            sql.DISPATCHED_STEP, dialect, json_columns=("checkpoint", "dependents")
        )
        # One statement per step success (saga.transitions): PostgreSQL only.
        self.dispatched_successors = self.succeed_and_advance = None
        if dialect.name == "postgresql":
            self.dispatched_successors = DriverStatement(transitions.DISPATCHED_WITH_SUCCESSORS, dialect)
            self.succeed_and_advance = DriverStatement(
                transitions.SUCCEED_AND_ADVANCE, dialect, json_params=("b_result",)
            )
        self.insert_run = DriverStatement(
            sql.INSERT_RUN, dialect, json_params=sql.json_params(RUNS), param_prefix="b_"
        )
        self.insert_steps = DriverStatement(
            sql.INSERT_STEPS, dialect, json_params=sql.json_params(STEPS), param_prefix="b_"
        )
        self._dialect = dialect
        self._save_run: dict[tuple[str, ...], DriverStatement] = {}

    def save_run(self, columns: tuple[str, ...]) -> DriverStatement:
        """The update of a run's ``columns`` (few sets occur: each is compiled once)."""
        statement = self._save_run.get(columns)
        if statement is None:
            json_params = sql.json_params(RUNS)
            statement = self._save_run[columns] = DriverStatement(
                sql.save_run(columns),
                self._dialect,
                json_params=tuple(f"b_{name}" for name in columns if f"b_{name}" in json_params),
                param_prefix="b_",
            )
        return statement


def _unclaimed_status(kind: str) -> str:
    return StepStatus.READY if kind == STEP else StepStatus.COMPENSATING


def _claimed(kind: str) -> str:
    return StepStatus.RUNNING if kind == STEP else StepStatus.COMPENSATING


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"{what} must be a JSON value: {exc}") from None


def _concurrency_key(workflow: Workflow, inputs: Any) -> str | None:
    if workflow.concurrency_key is None:
        return None
    try:
        return workflow.concurrency_key.format(**(inputs if isinstance(inputs, dict) else {}))
    except (KeyError, IndexError) as exc:
        raise WorkflowError(
            f"workflow {workflow.name!r}: concurrency key {workflow.concurrency_key!r} needs input {exc}"
        ) from None


def _run_defaults(run: dict[str, Any]) -> dict[str, Any]:
    defaults = {"idempotency_key": None, "deadline_at": None, "forked_from": None, "error": None}
    defaults["workflow_version"] = None
    defaults.update(abort_requested=False, cancel_requested=False, compensate=True, finished_at=None)
    return {**defaults, **run}


def _step_defaults(step: dict[str, Any]) -> dict[str, Any]:
    defaults = {
        "epoch": 0,
        "attempts": 0,
        "min_retry": 0,
        "skipped_deps": 0,
        "call_args": None,
        "result": None,
    }
    defaults.update(completion_seq=None, started_at=None, finished_at=None)
    return {**defaults, **step}


def _started(run: dict[str, Any]) -> dict[str, Any]:
    """The first history entry of a new run (a fork names its source)."""
    if run.get("forked_from"):
        return log.event(run["run_id"], log.FORKED, detail=f"from {run['forked_from']}", at=run["created_at"])
    version = run.get("workflow_version")
    detail = f"{run['workflow']} v{version}" if version else run["workflow"]
    return log.event(run["run_id"], log.STARTED, detail=detail, at=run["created_at"])


def _outcome(claim: Claim, kind: str, detail: str | None = None) -> list[dict[str, Any]]:
    """The entry of a delivery's outcome, with when the delivery started (its claim)."""
    entry = log.event(claim.run_id, kind, step=claim.step, attempt=claim.attempt, detail=detail)
    entry["started_at"] = claim.started_at
    return [entry]
