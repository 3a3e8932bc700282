"""Runtime control of periodic schedules, in SQL: enabled flag, last and next run, last status.

Scheduler processes register their schedules here and read the enabled flags
every tick; ``tradeflow schedules`` edits them; workers record how a scheduled
run ended.  All times are naive UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, DateTime, Engine, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Field, Session, SQLModel, col, select

from .audit import utc_now


class ScheduleRecord(SQLModel, table=True):
    """One periodic actor's schedule and its latest run.

    ``last_tick`` is the cron tick most recently fired by any scheduler; a
    tick at or before it is never fired again.
    """

    __tablename__ = "schedules"

    name: str = Field(primary_key=True, max_length=200)
    queue: str = Field(max_length=200)
    spec: str = Field(max_length=200)
    catch_up: str = Field(default="skip", max_length=20)
    enabled: bool = True
    last_tick: datetime | None = Field(default=None, sa_column=Column(DateTime))
    last_run_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    last_message_id: str | None = Field(default=None, max_length=64)
    last_status: str | None = Field(default=None, max_length=20)
    last_error: str | None = None
    last_finished_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    next_run_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    updated_at: datetime | None = Field(default=None, sa_column=Column(DateTime))


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """What the code declares about a schedule; the SQL row adds runtime state."""

    name: str
    queue: str
    spec: str
    catch_up: str


class UnknownSchedule(LookupError):
    """No schedule of that name is registered."""


def register_schedules(engine: Engine, definitions: list[ScheduleDefinition]) -> None:
    """Insert new schedules, refresh the spec of known ones; the enabled flag is kept.

    Safe when several schedulers register the same schedules at once.
    """
    insert = sqlite_insert if engine.dialect.name == "sqlite" else pg_insert
    table = ScheduleRecord.__table__
    now = utc_now()
    with engine.begin() as connection:
        for definition in definitions:
            values = {"queue": definition.queue, "spec": definition.spec, "catch_up": definition.catch_up}
            statement = insert(table).values(name=definition.name, enabled=True, updated_at=now, **values)
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[table.c.name], set_={**values, "updated_at": now}
                )
            )


def list_schedules(engine: Engine) -> list[ScheduleRecord]:
    with Session(engine) as session:
        return list(session.exec(select(ScheduleRecord).order_by(col(ScheduleRecord.name))))


def get_schedule(engine: Engine, name: str) -> ScheduleRecord:
    with Session(engine) as session:
        row = session.get(ScheduleRecord, name)
    if row is None:
        known = ", ".join(row.name for row in list_schedules(engine)) or "none registered yet"
        raise UnknownSchedule(f"no schedule named {name!r} (known: {known})")
    return row


def set_enabled(engine: Engine, name: str, enabled: bool) -> None:
    get_schedule(engine, name)
    with Session(engine) as session:
        session.exec(
            update(ScheduleRecord)
            .where(col(ScheduleRecord.name) == name)
            .values(enabled=enabled, updated_at=utc_now())
        )
        session.commit()


def record_fired(
    engine: Engine, name: str, *, tick: datetime, message_id: str, next_run_at: datetime | None
) -> bool:
    """Note that ``tick`` was fired; False if a later tick is already recorded."""
    now = utc_now()
    statement = (
        update(ScheduleRecord)
        .where(col(ScheduleRecord.name) == name)
        .where(or_(col(ScheduleRecord.last_tick).is_(None), col(ScheduleRecord.last_tick) < tick))
        .values(
            last_tick=tick,
            last_run_at=now,
            last_message_id=message_id,
            last_status="enqueued",
            last_error=None,
            next_run_at=next_run_at,
            updated_at=now,
        )
    )
    with Session(engine) as session:
        updated = session.exec(statement).rowcount
        session.commit()
    return bool(updated)


def record_manual_run(engine: Engine, name: str, *, message_id: str) -> None:
    """Note a run-now: the scheduler's tick bookkeeping is left alone."""
    now = utc_now()
    with Session(engine) as session:
        session.exec(
            update(ScheduleRecord)
            .where(col(ScheduleRecord.name) == name)
            .values(last_run_at=now, last_message_id=message_id, last_status="enqueued", updated_at=now)
        )
        session.commit()


def record_outcome(engine: Engine, name: str, *, message_id: str, status: str, error: str | None) -> None:
    """How the run ``message_id`` ended, unless a newer run was fired since."""
    now = utc_now()
    with Session(engine) as session:
        session.exec(
            update(ScheduleRecord)
            .where(col(ScheduleRecord.name) == name)
            .where(col(ScheduleRecord.last_message_id) == message_id)
            .values(last_status=status, last_error=error, last_finished_at=now, updated_at=now)
        )
        session.commit()
