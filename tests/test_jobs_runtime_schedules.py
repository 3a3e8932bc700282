"""Run-time schedules: created, changed and deleted while schedulers run; picked up at the next
tick, fired once per tick over two schedulers, with the call they were given."""

from __future__ import annotations

import dramatiq
import pendulum
import pytest
from jobs_support import FixedClock, queued_messages

from actors import audit_writer_of, build_broker
from actors.scheduling import Scheduler, cron
from orchestration.jobs import BadArguments, UnknownActor
from orchestration.schedules import (
    RuntimeSchedule,
    change_schedule,
    create_schedule,
    delete_schedule,
    run_schedule_now,
    schedule_views,
)
from storage import ScheduleConflict, UnknownSchedule, create_db_engine, get_schedule

#: A Monday, 09:30 UTC.
MONDAY = pendulum.datetime(2026, 11, 23, 9, 30)


@pytest.fixture
def broker(settings):
    broker = build_broker(settings)

    def heartbeat() -> None:
        pass

    def quote(symbol: str, depth: int = 1) -> None:
        pass

    dramatiq.actor(heartbeat, broker=broker, queue_name="ticks", periodic=cron("0 0 1 1 *"))
    dramatiq.actor(quote, broker=broker, queue_name="quotes")
    yield broker
    audit_writer_of(broker).close(5)


def _quotes(broker, namespace):
    return [m for m in queued_messages(broker.client, namespace, "quotes") if m.actor_name == "quote"]


def test_created_schedule_fires_from_the_next_tick_once_over_two_schedulers(settings, namespace, broker):
    engine = create_db_engine(settings.database_url)
    periodic = [broker.actors["heartbeat"]]
    first = Scheduler(periodic, clock=FixedClock(MONDAY), scheduler_id="a")
    second = Scheduler(periodic, clock=FixedClock(MONDAY), scheduler_id="b")
    assert first.run_tick(MONDAY) == [] and second.run_tick(MONDAY) == []  # running, nothing due
    schedule = RuntimeSchedule(
        name="aapl-quotes", actor="quote", spec="*/5 * * * *", args=["AAPL"], kwargs={"depth": 5}
    )
    create_schedule(broker, engine, schedule)
    fired = [
        f for minute in range(1, 7) for s in (first, second) for f in s.run_tick(MONDAY.add(minutes=minute))
    ]
    assert [(f.schedule, f.tick) for f in fired] == [("aapl-quotes", MONDAY.add(minutes=5).naive())]
    (message,) = _quotes(broker, namespace)
    assert message.args == ("AAPL",) and message.kwargs == {"depth": 5}
    row = get_schedule(engine, "aapl-quotes")
    assert row.source == "runtime" and row.last_tick == MONDAY.add(minutes=5).naive()
    # changed: the new spec applies from the next tick
    change_schedule(broker, engine, "aapl-quotes", spec="* * * * *", args=["MSFT"])
    assert len(first.run_tick(MONDAY.add(minutes=7))) == 1
    assert sorted(m.args for m in _quotes(broker, namespace)) == [("AAPL",), ("MSFT",)]
    # disabled, then deleted: nothing more
    change_schedule(broker, engine, "aapl-quotes", enabled=False)
    assert first.run_tick(MONDAY.add(minutes=8)) == []
    delete_schedule(engine, "aapl-quotes")
    assert first.run_tick(MONDAY.add(minutes=9)) == [] and second.run_tick(MONDAY.add(minutes=10)) == []
    assert len(_quotes(broker, namespace)) == 2
    with pytest.raises(UnknownSchedule):
        get_schedule(engine, "aapl-quotes")


def test_schedules_are_checked_before_they_are_stored(settings, broker):
    engine = create_db_engine(settings.database_url)

    def make(**fields):
        return create_schedule(
            broker,
            engine,
            RuntimeSchedule(**{"name": "s", "actor": "quote", "spec": "@daily", "args": ["X"], **fields}),
        )

    with pytest.raises(ValueError, match="expected 5 fields"):
        make(spec="1 2 3")
    with pytest.raises(UnknownActor):
        make(actor="nope")
    with pytest.raises(BadArguments):
        make(args=[], kwargs={"nope": 1})
    with pytest.raises(ScheduleConflict):
        make(name="heartbeat")  # a periodic actor's name
    make()
    with pytest.raises(ScheduleConflict):
        make()
    views = {view.row.name: view for view in schedule_views(broker, engine, timezone="UTC")}
    with pytest.raises(ScheduleConflict, match="declared in code"):
        delete_schedule(engine, "heartbeat")
    with pytest.raises(BadArguments):
        change_schedule(broker, engine, "s", args=[1, 2, 3])
    assert views["s"].row.source == "runtime" and views["s"].next_run_at is not None
    assert views["heartbeat"].row.source == "code"
    message_id = run_schedule_now(broker, engine, "s")
    assert get_schedule(engine, "s").last_message_id == message_id


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_schedules_commands(settings):
    from conftest import run_cli, settings_env

    env = settings_env(settings)
    created = run_cli(
        "schedules",
        "create",
        "nightly-ping",
        "--actor",
        "ping",
        "--cron",
        "0 2 * * *",
        "--args",
        '["n"]',
        env=env,
    )
    assert created.returncode == 0, created.stderr
    listed = run_cli("schedules", "list", env={**env, "COLUMNS": "250"})
    assert "nightly-ping" in listed.stdout and "0 2 * * *" in listed.stdout
    bad = run_cli("schedules", "create", "other", "--actor", "ping", "--cron", "99 * * * *", env=env)
    assert bad.returncode == 1 and "minute must be within 0-59" in bad.stderr
    assert run_cli("schedules", "change", "nightly-ping", "--cron", "0 3 * * *", env=env).returncode == 0
    assert get_schedule(create_db_engine(settings.database_url), "nightly-ping").spec == "0 3 * * *"
    assert run_cli("schedules", "delete", "nightly-ping", env=env).returncode == 0
    refused = run_cli("schedules", "delete", "nightly-ping", env=env)
    assert refused.returncode == 1 and "no schedule named 'nightly-ping'" in refused.stderr
