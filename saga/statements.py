"""The engine's hot SQL, built once.

Building a SQLAlchemy expression costs more than running it on a local
database, so the statements every step executes are constructed here, with
bind parameters (named ``b_*``: a name of a column is reserved in SET), and
executed with plain dicts.
"""

from __future__ import annotations

from sqlalchemy import JSON, and_, bindparam, exists, func, insert, or_, select, update

from storage import RunStatus, StepStatus, WorkflowRun, WorkflowStep

RUNS = WorkflowRun.__table__
STEPS = WorkflowStep.__table__

_THIS_STEP = (STEPS.c.run_id == bindparam("b_run"), STEPS.c.name == bindparam("b_step"))


def _claim(*, forward: bool):
    """Take a step (``forward``) or compensation delivery if it is due; returns what the worker needs."""
    run_due = [RUNS.c.run_id == bindparam("b_run"), RUNS.c.status == bindparam("b_phase")]
    values = {
        "claim": bindparam("b_token"),
        "claimed_retry": bindparam("b_retry"),
        "lease_until": bindparam("b_lease_until"),
        "worker_id": bindparam("b_worker"),
    }
    if forward:
        run_due.append(or_(RUNS.c.deadline_at.is_(None), RUNS.c.deadline_at > bindparam("b_now")))
        values.update(
            status=StepStatus.RUNNING,
            attempts=STEPS.c.attempts + 1,
            started_at=func.coalesce(STEPS.c.started_at, bindparam("b_now")),
        )
    # Plain comparisons, not IN: an IN list compiles to a placeholder expanded at run time.
    claimable = [StepStatus.READY, StepStatus.RUNNING] if forward else [StepStatus.COMPENSATING]
    status_claimable = or_(*(STEPS.c.status == status for status in claimable))
    return (
        update(STEPS)
        .where(
            *_THIS_STEP,
            STEPS.c.epoch == bindparam("b_epoch"),
            status_claimable,
            or_(
                and_(STEPS.c.claim.is_(None), STEPS.c.min_retry <= bindparam("b_retry")),
                STEPS.c.lease_until < bindparam("b_now"),
                STEPS.c.claimed_retry < bindparam("b_retry"),
                # The claim taken when the step was dispatched, presented by its message.
                STEPS.c.claim == bindparam("b_dispatch"),
            ),
            exists().where(*run_due),
        )
        .values(values)
        .returning(STEPS.c.attempts, STEPS.c.checkpoint, STEPS.c.progress, STEPS.c.dependents)
    )


#: Claim a step delivery.  Parameters: ``b_run, b_step, b_epoch, b_retry, b_now,
#: b_token, b_lease_until, b_worker, b_phase, b_dispatch`` (the dispatch claim the
#: message carries, or None).
CLAIM_STEP = _claim(forward=True)

#: A step still held by the claim its dispatch took (``b_dispatch``) with at least
#: ``b_lease_floor`` left on its lease, in a running run within its deadline: a first
#: delivery then runs it without writing.  Parameters: ``b_run, b_step, b_epoch,
#: b_dispatch, b_lease_floor, b_now``.
DISPATCHED_STEP = select(STEPS.c.attempts, STEPS.c.checkpoint, STEPS.c.progress, STEPS.c.dependents).where(
    *_THIS_STEP,
    STEPS.c.epoch == bindparam("b_epoch"),
    STEPS.c.status == StepStatus.RUNNING,
    STEPS.c.claim == bindparam("b_dispatch"),
    STEPS.c.lease_until > bindparam("b_lease_floor"),
    exists().where(
        RUNS.c.run_id == bindparam("b_run"),
        RUNS.c.status == RunStatus.RUNNING,
        or_(RUNS.c.deadline_at.is_(None), RUNS.c.deadline_at > bindparam("b_now")),
    ),
)

#: Claim a compensation delivery (same parameters).
CLAIM_COMPENSATION = _claim(forward=False)


def _lock(**increments: int):
    values = {name: RUNS.c[name] + amount for name, amount in increments.items()}
    return (
        update(RUNS)
        .where(RUNS.c.run_id == bindparam("b_run"))
        .values(updated_at=bindparam("b_now"), **values)
        .returning(*RUNS.c)
    )


#: Lock a run's row and read it: ``b_run, b_now``.
LOCK_RUN = _lock()

#: Lock a run's row for a step success (one more completion, one step less open).
LOCK_RUN_FOR_SUCCESS = _lock(completions=1, open_steps=-1)

#: Record a step's success if the claim ``b_token`` still holds it.  Parameters:
#: ``b_run, b_step, b_token, b_result, b_seq, b_now, b_started`` (when the delivery
#: started: a step claimed at its dispatch has no start time yet).
SUCCEED_STEP = (
    update(STEPS)
    .where(*_THIS_STEP, STEPS.c.claim == bindparam("b_token"), STEPS.c.status == StepStatus.RUNNING)
    .values(
        status=StepStatus.SUCCEEDED,
        result=bindparam("b_result", type_=STEPS.c.result.type),
        completion_seq=bindparam("b_seq"),
        error=None,
        claim=None,
        lease_until=None,
        started_at=func.coalesce(STEPS.c.started_at, bindparam("b_started")),
        finished_at=bindparam("b_now"),
    )
    .returning(STEPS.c.name, STEPS.c.status, STEPS.c.dependents, STEPS.c.group_name)
)

#: :data:`SUCCEED_STEP` numbering the completion from the run row, which the same transaction
#: updated first (:data:`LOCK_RUN_FOR_SUCCESS`), so both go out without waiting for the other.
SUCCEED_STEP_PIPELINED = SUCCEED_STEP.values(
    completion_seq=select(RUNS.c.completions).where(RUNS.c.run_id == bindparam("b_run")).scalar_subquery()
)

#: Columns of a step that deciding its readiness and dispatching it need.
ADMISSION_COLUMNS = (
    STEPS.c.name,
    STEPS.c.status,
    STEPS.c.actor,
    STEPS.c.spec,
    STEPS.c.depends_on,
    STEPS.c.dependents,
    STEPS.c.remaining_deps,
    STEPS.c.skipped_deps,
    STEPS.c.epoch,
    STEPS.c.group_name,
    STEPS.c.group_limit,
)

#: One dependency of step ``b_step`` is done (``b_skipped``: 1 if it was skipped); returns the step.
RELEASE_DEPENDENT = (
    update(STEPS)
    .where(*_THIS_STEP)
    .values(
        remaining_deps=STEPS.c.remaining_deps - 1,
        skipped_deps=STEPS.c.skipped_deps + bindparam("b_skipped"),
    )
    .returning(*ADMISSION_COLUMNS)
)

#: A pending step is dispatched with its call arguments, claimed (``running``) for the
#: message that carries ``b_token``, whose first delivery then only reads
#: (:data:`DISPATCHED_STEP`): ``b_run, b_step, b_call_args, b_epoch, b_now, b_token,
#: b_lease_until``.
DISPATCH_STEP = (
    update(STEPS)
    .where(*_THIS_STEP, STEPS.c.status == StepStatus.PENDING)
    .values(
        status=StepStatus.RUNNING,
        call_args=bindparam("b_call_args", type_=STEPS.c.call_args.type),
        epoch=bindparam("b_epoch"),
        min_retry=0,
        claim=bindparam("b_token"),
        claimed_retry=0,
        lease_until=bindparam("b_lease_until"),
        worker_id=None,
        attempts=STEPS.c.attempts + 1,
        ready_at=bindparam("b_now"),
    )
)


def _insert(table):
    """Insert one row of ``table``: every column, as ``b_<column>``."""
    return insert(table).values({column.name: bindparam(f"b_{column.name}") for column in table.c})


def json_params(table) -> tuple[str, ...]:
    """Parameters of :func:`_insert` that go into JSON columns."""
    return tuple(f"b_{column.name}" for column in table.c if isinstance(column.type, JSON))


def save_run(columns: tuple[str, ...]):
    """Update ``columns`` of run ``b_run_id``, each from ``b_<column>``."""
    return (
        update(RUNS)
        .where(RUNS.c.run_id == bindparam("b_run_id"))
        .values({name: bindparam(f"b_{name}", type_=RUNS.c[name].type) for name in columns})
    )


#: Insert a run (executed with the row's column names as keys, see ``DriverStatement``).
INSERT_RUN = _insert(RUNS)

#: Insert steps of a run (one parameter set per step).
INSERT_STEPS = _insert(STEPS)

#: Results of steps ``b_names`` of run ``b_run``.
RESULTS = select(STEPS.c.name, STEPS.c.result).where(
    STEPS.c.run_id == bindparam("b_run"), STEPS.c.name.in_(bindparam("b_names", expanding=True))
)

#: Whether the phase a claim needs is the run's: forward steps need a running run.
PHASES = {True: RunStatus.RUNNING, False: RunStatus.COMPENSATING}
