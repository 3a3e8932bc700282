"""Housekeeping of the job tables: old rows out, statistics fresh."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, delete, func, select, text

from .models import TERMINAL_STATUSES, AttemptRecord, TaskRecord
from .outbox import OutboxRecord


def delete_finished_before(engine: Engine, before: datetime) -> dict[str, int]:
    """Delete finished tasks (with their attempts), attempts finished before ``before`` whose
    task is gone, and relayed outbox rows older than ``before``; counts per table.

    An attempt of a task still kept is kept too, however old: a job's detail shows every attempt.
    """
    tasks, attempts, outbox = TaskRecord.__table__, AttemptRecord.__table__, OutboxRecord.__table__
    expired = (
        select(tasks.c.task_id)
        .where(tasks.c.status.in_([status.value for status in TERMINAL_STATUSES]))
        .where(tasks.c.completed_at < before)
    )
    with engine.begin() as connection:
        # the attempts first: the subquery still finds their tasks
        gone = connection.execute(delete(attempts).where(attempts.c.task_id.in_(expired))).rowcount
        finished = connection.execute(delete(tasks).where(tasks.c.task_id.in_(expired))).rowcount
        # attempts whose task row went another way (deleted by hand, or never written)
        gone += connection.execute(
            delete(attempts)
            .where(attempts.c.finished_at < before)
            .where(~select(tasks.c.task_id).where(tasks.c.task_id == attempts.c.task_id).exists())
        ).rowcount
        relayed = connection.execute(delete(outbox).where(outbox.c.sent_at < before)).rowcount
    return {"tasks": finished, "task_attempts": gone, "outbox": relayed}


def vacuum(engine: Engine) -> None:
    """Reclaim space and refresh planner statistics (outside any transaction, as both databases need)."""
    statement = "VACUUM" if engine.dialect.name == "sqlite" else "VACUUM (ANALYZE)"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(statement))


def status_counts_since(engine: Engine, since: datetime) -> dict[str, int]:
    """Tasks created since ``since``, per status."""
    query = (
        select(TaskRecord.__table__.c.status, func.count())
        .where(TaskRecord.__table__.c.created_at >= since)
        .group_by(TaskRecord.__table__.c.status)
    )
    with engine.connect() as connection:
        return {status: count for status, count in connection.execute(query)}
