"""Tables of durable workflows: one row per run, one row per step of a run.

The saga engine (``saga``) owns every write; this module holds the schema,
the status vocabularies and the read queries the CLI and API use.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Engine, Index, Text
from sqlmodel import Field, Session, SQLModel, col, select


class RunStatus(StrEnum):
    """Lifecycle of a workflow run."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    """Lifecycle of one step of a run."""

    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"


#: Run statuses after which nothing happens unless an operator resumes the run.
FINAL_RUN_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.COMPENSATED, RunStatus.CANCELLED}
)

#: Step statuses that count as "done" for the step's dependents.
DONE_STEP_STATUSES = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})

#: Step statuses that end the forward phase of a step.
TERMINAL_STEP_STATUSES = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
    }
)


class WorkflowRun(SQLModel, table=True):
    """One execution of a workflow definition.

    ``open_steps`` counts steps not yet terminal and ``completions`` numbers
    step successes (a step's ``completion_seq``), so that compensations can
    run in reverse order of completion.  All times are naive UTC.
    """

    __tablename__ = "workflow_runs"
    __table_args__ = (
        Index("ix_workflow_runs_status_created_at", "status", "created_at"),
        Index("ix_workflow_runs_workflow_created_at", "workflow", "created_at"),
        Index("ix_workflow_runs_idempotency_key", "idempotency_key", unique=True),
        Index("ix_workflow_runs_parent_run_id", "parent_run_id"),
    )

    run_id: str = Field(primary_key=True, max_length=32)
    workflow: str = Field(max_length=200)
    status: str = Field(max_length=30)
    inputs: Any = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    idempotency_key: str | None = Field(default=None, max_length=200)
    on_failure: str = Field(default="finish", max_length=20)
    concurrency_key: str | None = Field(default=None, max_length=200)
    concurrency_limit: int | None = None
    open_steps: int = 0
    completions: int = 0
    abort_requested: bool = False
    cancel_requested: bool = False
    compensate: bool = True
    error: str | None = Field(default=None, sa_column=Column(Text))
    forked_from: str | None = Field(default=None, max_length=32)
    #: The version of the definition the run started with (its steps are stored with it).
    workflow_version: int | None = None
    #: A child run's parent run and the parent's step that waits for it (``saga.child``).
    parent_run_id: str | None = Field(default=None, max_length=32)
    parent_step: str | None = Field(default=None, max_length=200)
    deadline_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    created_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(DateTime))


class WorkflowStep(SQLModel, table=True):
    """One step of a run, with the static parts of its definition.

    ``remaining_deps`` counts dependencies not yet done: it reaches zero
    exactly once, in the transaction that finishes the last dependency, which
    is what makes a fan-in fire exactly once; ``skipped_deps`` counts the
    dependencies that were skipped (all skipped -> the step is skipped).  ``epoch`` numbers dispatches
    (a resume starts a new one) and ``claim``/``lease_until`` say which
    message or delivery holds the step and until when: a step is claimed when
    it is dispatched, for its message, and a delivery that claims it afresh
    writes its ``worker_id``.
    """

    __tablename__ = "workflow_steps"
    __table_args__ = (
        Index("ix_workflow_steps_status_ready_at", "status", "ready_at"),
        Index("ix_workflow_steps_claim", "claim"),
    )

    run_id: str = Field(primary_key=True, max_length=32, foreign_key="workflow_runs.run_id")
    name: str = Field(primary_key=True, max_length=200)
    position: int
    actor: str = Field(max_length=200)
    status: str = Field(max_length=30)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    depends_on: list[str] = Field(sa_column=Column(JSON, nullable=False))
    dependents: list[str] = Field(sa_column=Column(JSON, nullable=False))
    remaining_deps: int = 0
    skipped_deps: int = 0
    group_name: str | None = Field(default=None, max_length=200)
    group_limit: int | None = None
    epoch: int = 0
    attempts: int = 0
    min_retry: int = 0
    claimed_retry: int | None = None
    claim: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = Field(default=None, sa_column=Column(DateTime))
    call_args: Any = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    result: Any = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    error: str | None = Field(default=None, sa_column=Column(Text))
    checkpoint: Any = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    progress: float | None = None
    completion_seq: int | None = None
    compensation_error: str | None = Field(default=None, sa_column=Column(Text))
    worker_id: str | None = Field(default=None, max_length=200)
    ready_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    started_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    finished_at: datetime | None = Field(default=None, sa_column=Column(DateTime))


class WorkflowDefinitionRecord(SQLModel, table=True):
    """A workflow definition as first started under its version: a changed definition must come
    with a new version (see ``saga.versions``)."""

    __tablename__ = "workflow_definitions"

    name: str = Field(primary_key=True, max_length=200)
    version: int = Field(primary_key=True)
    fingerprint: str = Field(max_length=64)
    definition: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime, nullable=False))


class WorkflowEvent(SQLModel, table=True):
    """One entry of a run's history, in order of ``id`` (the engine writes them in the
    transactions of the transitions, which the run's lock orders)."""

    __tablename__ = "workflow_events"
    __table_args__ = (Index("ix_workflow_events_run_id_id", "run_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=32)
    at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    kind: str = Field(max_length=40)
    step: str | None = Field(default=None, max_length=200)
    attempt: int | None = None
    detail: str | None = Field(default=None, sa_column=Column(Text))
    #: A delivery's outcome: when that delivery started (shown as a ``claimed`` entry before it).
    started_at: datetime | None = Field(default=None, sa_column=Column(DateTime))


class WorkflowSignal(SQLModel, table=True):
    """A named event delivered to a run (``tradeflow workflow signal``), kept whether or not a
    step waits for it yet; a ``wait_for_signal`` step reads the newest of its name."""

    __tablename__ = "workflow_signals"
    __table_args__ = (Index("ix_workflow_signals_run_id_name_id", "run_id", "name", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=32)
    name: str = Field(max_length=200)
    payload: Any = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    received_at: datetime = Field(sa_column=Column(DateTime, nullable=False))


def get_history(engine: Engine, run_id: str) -> list[WorkflowEvent]:
    """The events of a run in order; each outcome of a delivery is preceded by a ``claimed``
    entry at the time the delivery started (stored with the outcome: one row per outcome)."""
    query = select(WorkflowEvent).where(WorkflowEvent.run_id == run_id).order_by(col(WorkflowEvent.id))
    with Session(engine) as session:
        rows = list(session.exec(query))
    entries: list[WorkflowEvent] = []
    for row in rows:
        if row.started_at is not None:
            claimed = {"id": row.id, "run_id": run_id, "at": row.started_at, "kind": "claimed"}
            entries.append(WorkflowEvent(**claimed, step=row.step, attempt=row.attempt))
        entries.append(row)
    return entries


def get_definition(engine: Engine, name: str, version: int) -> WorkflowDefinitionRecord | None:
    with Session(engine) as session:
        return session.get(WorkflowDefinitionRecord, (name, version))


def list_runs(
    engine: Engine, *, status: str | None = None, workflow: str | None = None, limit: int = 50
) -> list[WorkflowRun]:
    """The newest runs first, filtered by status and workflow name."""
    query = select(WorkflowRun)
    if status:
        query = query.where(WorkflowRun.status == status)
    if workflow:
        query = query.where(WorkflowRun.workflow == workflow)
    query = query.order_by(col(WorkflowRun.created_at).desc(), col(WorkflowRun.run_id)).limit(limit)
    with Session(engine) as session:
        return list(session.exec(query))


def get_run(engine: Engine, run_id: str) -> WorkflowRun | None:
    with Session(engine) as session:
        return session.get(WorkflowRun, run_id)


def get_steps(engine: Engine, run_id: str) -> list[WorkflowStep]:
    """The steps of a run in definition order."""
    query = select(WorkflowStep).where(WorkflowStep.run_id == run_id).order_by(col(WorkflowStep.position))
    with Session(engine) as session:
        return list(session.exec(query))


def run_status_counts(engine: Engine, *, run_ids: list[str] | None = None) -> dict[str, int]:
    """How many runs are in each status, over all runs or the given ids."""
    from sqlalchemy import func

    query = select(WorkflowRun.status, func.count()).group_by(WorkflowRun.status)
    if run_ids is not None:
        query = query.where(col(WorkflowRun.run_id).in_(run_ids))
    with Session(engine) as session:
        return {status: count for status, count in session.exec(query)}


def page_runs(
    engine: Engine,
    *,
    status: str | None = None,
    workflow: str | None = None,
    input_equal: dict[str, str] | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[WorkflowRun]:
    """One keyset page of runs, newest first, after the sort key ``(created_at, run_id)`` ``after``.

    ``input_equal`` keeps runs whose input ``name`` (a key of the inputs object) equals the string.
    """
    from sqlalchemy import and_, or_

    created, run_id = col(WorkflowRun.created_at), col(WorkflowRun.run_id)
    query = select(WorkflowRun)
    if status:
        query = query.where(WorkflowRun.status == status)
    if workflow:
        query = query.where(WorkflowRun.workflow == workflow)
    for name, value in (input_equal or {}).items():
        query = query.where(col(WorkflowRun.inputs)[name].as_string() == value)
    if after is not None:
        query = query.where(or_(created < after[0], and_(created == after[0], run_id < after[1])))
    with Session(engine) as session:
        return list(session.exec(query.order_by(created.desc(), run_id.desc()).limit(limit)))


def compensation_order(steps: list[WorkflowStep]) -> list[WorkflowStep]:
    """The succeeded steps with a compensation, in the order a cancel now would compensate them:
    the latest completed first (the rule of ``SagaEngine._unwind``)."""
    candidates = [
        step
        for step in steps
        if step.status == StepStatus.SUCCEEDED and (step.spec or {}).get("compensate_with")
    ]
    return sorted(candidates, key=lambda step: -(step.completion_seq or 0))
