"""Periodic schedules as operators see them: what ``tradeflow schedules`` and ``/api/v1/schedules`` share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dramatiq import Broker
from sqlalchemy import Engine

#: Plain words of the cron shorthands (``periodiq`` accepts them).
SHORTHANDS = {
    "@yearly": "every year on 1 January at 00:00",
    "@annually": "every year on 1 January at 00:00",
    "@monthly": "every month on the 1st at 00:00",
    "@weekly": "every week on Sunday at 00:00",
    "@daily": "every day at 00:00",
    "@midnight": "every day at 00:00",
    "@hourly": "every hour at minute 0",
}


def describe_cron(spec: str) -> str:
    """A human reading of a cron spec for the common shapes; the spec itself otherwise."""
    spec = spec.strip()
    if spec in SHORTHANDS:
        return SHORTHANDS[spec]
    fields = spec.split()
    if len(fields) != 5:
        return spec
    minute, hour, day, month, weekday = fields
    rest_any = day == month == weekday == "*"
    if rest_any and hour == "*" and minute == "*":
        return "every minute"
    if rest_any and hour == "*" and minute.startswith("*/"):
        return f"every {minute[2:]} minutes"
    if rest_any and hour == "*" and minute.isdigit():
        return f"every hour at minute {minute}"
    if rest_any and hour.isdigit() and minute.isdigit():
        return f"every day at {int(hour):02d}:{int(minute):02d}"
    if day == month == "*" and hour.isdigit() and minute.isdigit():
        return f"at {int(hour):02d}:{int(minute):02d} on weekdays {weekday}"
    return f"cron {spec}"


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """A schedule's row with its next run worked out from the code's cron spec."""

    row: object
    next_run_at: datetime | None


def register_code_schedules(broker: Broker, engine: Engine) -> None:
    """Register every periodic actor of ``broker`` in the schedules table (the enabled flags are kept)."""
    from actors.scheduling import schedule_control_of
    from storage import register_schedules

    control = schedule_control_of(broker)
    periodic = [actor for actor in broker.actors.values() if "periodic" in actor.options]
    register_schedules(engine, [control.definition(actor) for actor in periodic])


def schedule_views(broker: Broker, engine: Engine, *, timezone: str) -> list[ScheduleView]:
    """Every schedule, code's and run-time, with its next run (none while disabled)."""
    from storage import list_schedules, utc_now

    register_code_schedules(broker, engine)
    views = []
    for row in list_schedules(engine):
        next_run = row.next_run_at
        if next_run is None or next_run < utc_now():
            next_run = _next_run(broker, row, timezone=timezone)
        views.append(ScheduleView(row, next_run if row.enabled else None))
    return views


def _next_run(broker: Broker, row, *, timezone: str) -> datetime | None:
    import pendulum

    from actors.scheduling import cron, next_tick

    if row.source == "runtime":
        tick = cron(row.spec).next_valid_date(pendulum.now("UTC").in_timezone(timezone))
        return tick.in_timezone("UTC").naive()
    actor = broker.actors.get(row.name)
    return next_tick(actor, timezone=timezone) if actor is not None and "periodic" in actor.options else None


@dataclass(frozen=True, slots=True)
class RuntimeSchedule:
    """A schedule made at run time: call ``actor`` with ``args``/``kwargs`` on every tick of ``spec``.

    Parameters:
      name: Unique among all schedules (not a periodic actor's name).
      actor: A registered actor.
      spec: Cron spec (``"*/5 * * * *"``, ``"@daily"``; intervals as ``*/N`` minutes),
        read in the schedulers' timezone.
      args / kwargs: The call's arguments, checked against the actor's signature.
      catch_up: ``skip`` (default) or ``run_once`` after scheduler downtime.
      enabled: Fire from the next tick (default) or wait to be enabled.
    """

    name: str
    actor: str
    spec: str
    args: list | None = None
    kwargs: dict | None = None
    catch_up: str = "skip"
    enabled: bool = True


def _check(broker: Broker, schedule: RuntimeSchedule):
    """The actor of ``schedule``, its spec and call checked (``ValueError`` / submission errors)."""
    from actors.scheduling import cron

    from .jobs import JobRequest, build_message

    if schedule.catch_up not in ("skip", "run_once"):
        raise ValueError(f"catch_up must be skip or run_once (got {schedule.catch_up!r})")
    cron(schedule.spec)  # a bad spec raises ValueError saying what is wrong
    request = JobRequest(actor=schedule.actor, args=schedule.args or [], kwargs=schedule.kwargs or {})
    build_message(broker, request)  # unknown actor, arguments that do not fit
    return broker.actors[schedule.actor]


def create_schedule(broker: Broker, engine: Engine, schedule: RuntimeSchedule):
    """Create a run-time schedule, checked first; running schedulers fire it from their next tick."""
    from storage import ScheduleConflict, create_runtime_schedule

    actor = _check(broker, schedule)
    if schedule.name in broker.actors:
        raise ScheduleConflict(f"{schedule.name!r} is an actor's name: pick another schedule name")
    return create_runtime_schedule(
        engine,
        name=schedule.name,
        actor=schedule.actor,
        queue=actor.queue_name,
        spec=schedule.spec,
        args=schedule.args,
        kwargs=schedule.kwargs,
        catch_up=schedule.catch_up,
        enabled=schedule.enabled,
    )


def change_schedule(broker: Broker, engine: Engine, name: str, **changes):
    """Change a run-time schedule (``None`` values keep the current ones), checked as a new one."""
    from dataclasses import replace

    from storage import get_schedule, update_runtime_schedule

    row = get_schedule(engine, name)
    current = RuntimeSchedule(
        name=name,
        actor=row.actor or name,
        spec=row.spec,
        args=row.args,
        kwargs=row.kwargs,
        catch_up=row.catch_up,
        enabled=row.enabled,
    )
    wanted = replace(current, **{key: value for key, value in changes.items() if value is not None})
    _check(broker, wanted)
    return update_runtime_schedule(
        engine,
        name,
        spec=wanted.spec,
        args=wanted.args,
        kwargs=wanted.kwargs,
        catch_up=wanted.catch_up,
        enabled=wanted.enabled,
    )


def delete_schedule(engine: Engine, name: str) -> None:
    from storage import delete_runtime_schedule

    delete_runtime_schedule(engine, name)


def set_schedule_enabled(broker: Broker, engine: Engine, name: str, enabled: bool) -> None:
    """Enable or disable ``name`` (``storage.UnknownSchedule`` if there is none)."""
    from storage import get_schedule, set_enabled

    register_code_schedules(broker, engine)
    get_schedule(engine, name)
    set_enabled(engine, name, enabled)


def run_schedule_now(broker: Broker, engine: Engine, name: str) -> str:
    """Send the schedule's actor now (even when disabled); its message id."""
    from actors.scheduling import SCHEDULE_OPTION
    from storage import get_schedule, record_manual_run

    register_code_schedules(broker, engine)
    row = get_schedule(engine, name)
    if row.source == "runtime":
        message = broker.actors[row.actor].message_with_options(
            args=tuple(row.args or ()), kwargs=row.kwargs or {}, **{SCHEDULE_OPTION: name}
        )
    else:
        message = broker.actors[name].message_with_options(**{SCHEDULE_OPTION: name})
    # recorded before it is sent: a fast run's outcome must not be overwritten by "enqueued"
    record_manual_run(engine, name, message_id=message.message_id)
    broker.enqueue(message)
    return message.message_id
