"""Changes of a task's audit row made from outside the worker (cancellation)."""

from __future__ import annotations

from sqlalchemy import Engine, update

from .audit import utc_now
from .models import TaskRecord, TaskStatus

#: Statuses of a task that is waiting to run (first time or a retry).
WAITING_STATUSES = (TaskStatus.PENDING.value, TaskStatus.RETRYING.value)


def cancel_waiting_task(engine: Engine, task_id: str, *, reason: str) -> bool:
    """Mark a pending or retrying task ``cancelled``; False if it is not waiting (or unknown).

    ``seq`` moves forward by one, so a late event of the same attempt cannot
    move the row back.
    """
    table = TaskRecord.__table__
    statement = (
        update(table)
        .where(table.c.task_id == task_id)
        .where(table.c.status.in_(WAITING_STATUSES))
        .values(
            status=TaskStatus.CANCELLED.value,
            seq=table.c.seq + 1,
            error_message=reason,
            completed_at=utc_now(),
        )
    )
    with engine.begin() as connection:
        return bool(connection.execute(statement).rowcount)
