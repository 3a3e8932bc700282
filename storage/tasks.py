"""Reading the audit trail."""

from __future__ import annotations

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from .models import TaskRecord


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


def status_counts(engine: Engine, *, task_ids: list[str] | None = None) -> dict[str, int]:
    """How many tasks are in each status, over all tasks or the given ids."""
    query = select(TaskRecord.status, func.count()).group_by(TaskRecord.status)
    if task_ids is not None:
        query = query.where(col(TaskRecord.task_id).in_(task_ids))
    with Session(engine) as session:
        return {status: count for status, count in session.exec(query)}
