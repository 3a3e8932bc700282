"""Reading the audit trail."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, and_, delete, func, or_
from sqlmodel import Session, col, select

from .models import AttemptRecord, TaskRecord


def list_tasks(
    engine: Engine,
    *,
    status: str | None = None,
    task_type: str | None = None,
    user_id: str | None = None,
    limit: int = 50,
) -> list[TaskRecord]:
    """The newest tasks first, filtered by any of status, actor and user."""
    query = select(TaskRecord)
    if status:
        query = query.where(TaskRecord.status == status)
    if task_type:
        query = query.where(TaskRecord.task_type == task_type)
    if user_id:
        query = query.where(TaskRecord.user_id == user_id)
    query = query.order_by(col(TaskRecord.created_at).desc(), col(TaskRecord.task_id)).limit(limit)
    with Session(engine) as session:
        return list(session.exec(query))


def get_task(engine: Engine, task_id: str) -> TaskRecord | None:
    with Session(engine) as session:
        return session.get(TaskRecord, task_id)


def get_attempts(
    engine: Engine, task_id: str, *, task: TaskRecord | None = None, limit: int = 100
) -> list[AttemptRecord]:
    """The attempts of ``task_id``, first first (at most ``limit``: the newest of them).

    A first attempt that did not fail has no row of its own (the writer spares most
    messages a second row): it is read from the task's row (``task``, else read here),
    which holds it while it is the message's only attempt.
    """
    query = (
        select(AttemptRecord)
        .where(AttemptRecord.task_id == task_id)
        .order_by(col(AttemptRecord.number).desc())
        .limit(limit)
    )
    with Session(engine) as session:
        rows = list(reversed(session.exec(query).all()))
        if rows and rows[0].number == 0:
            return rows
        task = task if task is not None else session.get(TaskRecord, task_id)
    if task is None or task.started_at is None or task.seq // 3 != 0:
        return rows  # never ran, or past its first attempt (whose row exists if it ran)
    first = AttemptRecord(
        task_id=task_id,
        number=0,
        seq=task.seq,
        retry_count=0,
        status=task.status,
        started_at=task.started_at,
        finished_at=task.completed_at,
        duration_ms=task.processing_time_ms,
        worker_id=task.worker_id,
        trace_id=task.trace_id,
    )
    return [first]  # seq // 3 == 0: no other attempt


def status_counts(engine: Engine, *, task_ids: list[str] | None = None) -> dict[str, int]:
    """How many tasks are in each status, over all tasks or the given ids."""
    query = select(TaskRecord.status, func.count()).group_by(TaskRecord.status)
    if task_ids is not None:
        query = query.where(col(TaskRecord.task_id).in_(task_ids))
    with Session(engine) as session:
        return {status: count for status, count in session.exec(query)}


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks a list, a count or a bulk action covers (every field optional).

    ``kwargs_equal`` keeps the tasks whose keyword argument ``name`` equals the string
    ``value`` (a JSON path on the stored arguments: ``args -> kwargs -> name``);
    ``statuses`` keeps those in any of the statuses (with ``status``, both apply).
    Times are naive UTC, ``created_to`` excluded.
    """

    status: str | None = None
    statuses: tuple[str, ...] | None = None
    task_type: str | None = None
    queue: str | None = None
    priority: str | None = None
    user_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    kwargs_equal: dict[str, str] = field(default_factory=dict)
    task_ids: tuple[str, ...] | None = None

    def apply(self, query):
        created = col(TaskRecord.created_at)
        query = query.where(created.is_not(None))
        for column, value in (
            (TaskRecord.status, self.status),
            (TaskRecord.task_type, self.task_type),
            (TaskRecord.queue, self.queue),
            (TaskRecord.priority, self.priority),
            (TaskRecord.user_id, self.user_id),
        ):
            if value:
                query = query.where(column == value)
        if self.statuses is not None:
            query = query.where(col(TaskRecord.status).in_(self.statuses))
        if self.task_ids is not None:
            query = query.where(col(TaskRecord.task_id).in_(self.task_ids))
        if self.created_from is not None:
            query = query.where(created >= self.created_from)
        if self.created_to is not None:
            query = query.where(created < self.created_to)
        for name, value in self.kwargs_equal.items():
            query = query.where(col(TaskRecord.args)["kwargs"][name].as_string() == value)
        return query


def page_tasks(
    engine: Engine,
    task_filter: TaskFilter | None = None,
    *,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[TaskRecord]:
    """One keyset page of tasks, newest first: up to ``limit`` rows after the sort key ``after``.

    The order is ``(created_at, task_id)`` descending, which the index
    ``ix_tasks_created_at_task_id`` serves; rows without a creation time are not listed.
    """
    created, task_id = col(TaskRecord.created_at), col(TaskRecord.task_id)
    query = (task_filter or TaskFilter()).apply(select(TaskRecord))
    if after is not None:
        query = query.where(or_(created < after[0], and_(created == after[0], task_id < after[1])))
    query = query.order_by(created.desc(), task_id.desc()).limit(limit)
    with Session(engine) as session:
        return list(session.exec(query))


def count_tasks(engine: Engine, task_filter: TaskFilter) -> int:
    with Session(engine) as session:
        return session.exec(task_filter.apply(select(func.count()).select_from(TaskRecord))).one()


def iter_tasks(engine: Engine, task_filter: TaskFilter, *, chunk: int = 500):
    """Every task of ``task_filter``, newest first, read one keyset page at a time."""
    after = None
    while page := page_tasks(engine, task_filter, after=after, limit=chunk):
        yield from page
        if len(page) < chunk:
            return
        after = (page[-1].created_at, page[-1].task_id)


def delete_task(engine: Engine, task_id: str) -> bool:
    """Delete the audit row of ``task_id`` and its attempts; whether there was one."""
    with Session(engine) as session:
        row = session.get(TaskRecord, task_id)
        if row is None:
            return False
        session.delete(row)
        session.exec(delete(AttemptRecord).where(col(AttemptRecord.task_id) == task_id))
        session.commit()
        return True


def enqueued_since(engine: Engine, since: datetime) -> dict[str, int]:
    """How many tasks each queue got since ``since`` (naive UTC), from the audit trail."""
    query = (
        select(TaskRecord.queue, func.count())
        .where(col(TaskRecord.created_at) >= since)
        .group_by(TaskRecord.queue)
    )
    with Session(engine) as session:
        return {queue: count for queue, count in session.exec(query)}
