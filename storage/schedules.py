"""Runtime control of periodic schedules, in SQL: enabled flag, last and next run, last status.

Scheduler processes register their schedules here and read the enabled flags
every tick; ``tradeflow schedules`` edits them; workers record how a scheduled
run ended.  All times are naive UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Engine, delete, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from .audit import utc_now


class ScheduleRecord(SQLModel, table=True):
    """One periodic actor's schedule and its latest run.

    ``last_tick`` is the cron tick most recently fired by any scheduler; a
    tick at or before it is never fired again.  ``source`` is ``code`` (a periodic
    actor: the name is the actor's) or ``runtime`` (created over the API or CLI: it
    calls ``actor`` with ``args``/``kwargs``).
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
    source: str = Field(default="code", max_length=20)
    actor: str | None = Field(default=None, max_length=200)
    args: list[Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    kwargs: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """What the code declares about a schedule; the SQL row adds runtime state."""

    name: str
    queue: str
    spec: str
    catch_up: str


class UnknownSchedule(LookupError):
    """No schedule of that name is registered."""


class ScheduleConflict(ValueError):
    """The name is taken, or the schedule is the code's (it cannot be edited or deleted)."""


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


def record_outcome(
    engine: Engine,
    name: str,
    *,
    message_id: str,
    status: str,
    error: str | None,
    tick: datetime | None = None,
) -> None:
    """How the run ``message_id`` ended, unless a newer run was fired since.

    ``tick`` (naive UTC) is the scheduled tick the run was fired for: a run
    that ends before the scheduler recorded its firing (a fast job) records
    the tick itself, and the late :func:`record_fired` then leaves it alone.
    """
    now = utc_now()
    mine = col(ScheduleRecord.last_message_id) == message_id
    if tick is not None:
        newer = or_(col(ScheduleRecord.last_tick).is_(None), col(ScheduleRecord.last_tick) < tick)
        mine = or_(mine, newer)
    values = {"last_status": status, "last_error": error, "last_finished_at": now, "updated_at": now}
    with Session(engine) as session:
        session.exec(
            update(ScheduleRecord).where(col(ScheduleRecord.name) == name).where(mine).values(**values)
        )
        if tick is not None:  # the firing was not recorded yet: record it now
            session.exec(
                update(ScheduleRecord)
                .where(col(ScheduleRecord.name) == name)
                .where(or_(col(ScheduleRecord.last_tick).is_(None), col(ScheduleRecord.last_tick) < tick))
                .values(last_tick=tick, last_run_at=now, last_message_id=message_id)
            )
        session.commit()


def create_runtime_schedule(
    engine: Engine,
    *,
    name: str,
    actor: str,
    queue: str,
    spec: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    catch_up: str = "skip",
    enabled: bool = True,
) -> ScheduleRecord:
    """A schedule made at run time; running schedulers fire it from their next tick on."""
    now = utc_now()
    row = ScheduleRecord(
        name=name,
        queue=queue,
        spec=spec,
        catch_up=catch_up,
        enabled=enabled,
        source="runtime",
        actor=actor,
        args=list(args or []),
        kwargs=dict(kwargs or {}),
        updated_at=now,
    )
    try:
        with Session(engine, expire_on_commit=False) as session:
            session.add(row)
            session.commit()
    except IntegrityError:
        raise ScheduleConflict(f"a schedule named {name!r} exists") from None
    return row


def update_runtime_schedule(engine: Engine, name: str, **changes: Any) -> ScheduleRecord:
    """Change a run-time schedule's spec, arguments, catch-up or enabled flag (``None``: kept)."""
    row = _runtime(engine, name)
    values = {key: value for key, value in changes.items() if value is not None}
    if "spec" in values and values["spec"] != row.spec:
        values["next_run_at"] = None  # worked out again from the new spec
    with Session(engine) as session:
        session.exec(
            update(ScheduleRecord)
            .where(col(ScheduleRecord.name) == name)
            .values(**values, updated_at=utc_now())
        )
        session.commit()
    return get_schedule(engine, name)


def delete_runtime_schedule(engine: Engine, name: str) -> None:
    _runtime(engine, name)
    with Session(engine) as session:
        session.exec(delete(ScheduleRecord).where(col(ScheduleRecord.name) == name))
        session.commit()


def _runtime(engine: Engine, name: str) -> ScheduleRecord:
    row = get_schedule(engine, name)
    if row.source != "runtime":
        raise ScheduleConflict(f"schedule {name!r} is declared in code: change the actor's `periodic` option")
    return row
