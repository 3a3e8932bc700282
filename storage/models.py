"""Tables of the audit trail."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index
from sqlmodel import Field, SQLModel


class TaskStatus(StrEnum):
    """Lifecycle of one message, as the audit trail records it."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"


#: Statuses after which a message is never processed again.
TERMINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.DEAD_LETTER, TaskStatus.CANCELLED}
)


class TaskRecord(SQLModel, table=True):
    """One row per message id; redeliveries and retries update it in place.

    ``seq`` orders the events of a message (``attempt * 3 + phase``, phase 0
    enqueued, 1 started, 2 finished) so that a late or duplicated event never
    moves a row backwards.  All times are naive UTC.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_status_created_at", "status", "created_at"),
        Index("ix_tasks_task_type_status_created_at", "task_type", "status", "created_at"),  # api_0002
        Index("ix_tasks_task_type_created_at", "task_type", "created_at"),  # api_0002
        Index("ix_tasks_user_id_created_at", "user_id", "created_at"),
        Index("ix_tasks_created_at_task_id", "created_at", "task_id"),  # api_0001: keyset pages
        Index("ix_tasks_queue_created_at", "queue", "created_at"),
    )

    task_id: str = Field(primary_key=True, max_length=64)
    task_type: str = Field(max_length=200)
    queue: str = Field(max_length=200)
    priority: str | None = Field(default="normal", max_length=20)
    status: str = Field(max_length=20)
    seq: int = 0
    args: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    user_id: str | None = Field(default=None, max_length=200)
    ip_address: str | None = Field(default=None, max_length=64)
    timeout: int | None = None
    max_retries: int | None = None
    retry_count: int = 0
    error_message: str | None = None
    created_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    started_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    completed_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    processing_time_ms: float | None = None
    worker_id: str | None = Field(default=None, max_length=200)
    trace_id: str | None = Field(default=None, max_length=32)  # audit_0001: the last attempt's trace


class AttemptRecord(SQLModel, table=True):
    """One row per attempt (delivery that ran) of a message: what ``tasks`` keeps only for the last.

    The first attempt of a message has a row only if it failed: most messages succeed at
    once, and for them the ``tasks`` row says all (:func:`storage.get_attempts` reads it so).

    ``number`` is the attempt's audit ``seq // 3``: it grows with each retry and past
    the attempts of a dead letter that was retried, so it orders a message's attempts
    and names each once.  ``seq`` is the audit ``seq`` of the event that last wrote the
    row (a finish overrides a start, never the reverse).  All times are naive UTC.
    """

    __tablename__ = "task_attempts"
    __table_args__ = (Index("ix_task_attempts_finished_at", "finished_at"),)

    task_id: str = Field(primary_key=True, max_length=64)
    number: int = Field(primary_key=True)
    seq: int = 0
    retry_count: int = 0
    status: str = Field(max_length=20)
    started_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    finished_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    duration_ms: float | None = None
    worker_id: str | None = Field(default=None, max_length=200)
    error_type: str | None = Field(default=None, max_length=200)
    error_message: str | None = None
    traceback: str | None = None
    trace_id: str | None = Field(default=None, max_length=32)
