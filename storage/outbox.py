"""Transactional enqueue: messages written in the caller's transaction, relayed to Redis later.

A service that changes rows and wants a job to follow calls :func:`add_to_outbox`
on the same connection, inside the same transaction: the job exists if and
only if the transaction commits.  A relay process (``tradeflow outbox relay``)
moves committed rows to the broker, at least once; consumers drop duplicates by
message id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Connection, DateTime, Engine, Index, func, insert, select, update
from sqlmodel import Field, SQLModel

from .audit import utc_now


class OutboxRecord(SQLModel, table=True):
    """One message waiting to be sent (``sent_at`` empty) or already relayed."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_sent_at_created_at", "sent_at", "created_at"),)

    message_id: str = Field(primary_key=True, max_length=64)
    queue_name: str = Field(max_length=200)
    actor_name: str = Field(max_length=200)
    args: list[Any] = Field(sa_column=Column(JSON, nullable=False))
    kwargs: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    options: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=Column(DateTime))


_TABLE = OutboxRecord.__table__


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A row to relay, detached from any session."""

    message_id: str
    queue_name: str
    actor_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    created_at: datetime


def add_to_outbox(
    connection: Connection,
    *,
    queue_name: str,
    actor_name: str,
    args: list[Any] | tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> str:
    """Write a message to the outbox in ``connection``'s current transaction; its id.

    Nothing is committed here: the caller's commit publishes it, a rollback drops it.
    """
    if not queue_name or not actor_name:
        raise ValueError("add_to_outbox needs a queue_name and an actor_name")
    message_id = message_id or str(uuid.uuid4())
    connection.execute(
        insert(_TABLE).values(
            message_id=message_id,
            queue_name=queue_name,
            actor_name=actor_name,
            args=list(args),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            created_at=utc_now(),
        )
    )
    return message_id


def claim_unsent(connection: Connection, *, limit: int) -> list[OutboxMessage]:
    """The oldest unsent messages, locked for this transaction (others skip them on PostgreSQL)."""
    query = (
        select(_TABLE)
        .where(_TABLE.c.sent_at.is_(None))
        .order_by(_TABLE.c.created_at, _TABLE.c.message_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = connection.execute(query).mappings().all()
    return [OutboxMessage(**{name: row[name] for name in OutboxMessage.__slots__}) for row in rows]


def mark_sent(connection: Connection, message_ids: list[str]) -> None:
    connection.execute(update(_TABLE).where(_TABLE.c.message_id.in_(message_ids)).values(sent_at=utc_now()))


def unsent_count(engine: Engine) -> int:
    """How many committed messages the relay has not sent yet."""
    query = select(func.count()).select_from(_TABLE).where(_TABLE.c.sent_at.is_(None))
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()
