"""Schedules: Sunday crons, one fire per tick over two schedulers, catch-up, runtime control, outages."""

from __future__ import annotations

import inspect
import subprocess
import sys
import threading
import time
from collections import Counter

import dramatiq
import pendulum
import pytest
import redis
from conftest import REPO_ROOT, run_cli, settings_env
from jobs_support import (
    FastClock,
    FixedClock,
    cuttable_redis,
    queued_messages,
    sqlite_only,
    wait_for,
)
from periodiq import cron as periodiq_cron

import actors as actors_module
from actors import audit_writer_of, build_broker
from actors.scheduling import Scheduler, cron, daily_at, every_minutes, next_tick, weekly_at
from actors.settings import Settings
from storage import create_db_engine, get_schedule, set_enabled

#: A Sunday, 04:00 UTC.
SUNDAY_4AM = pendulum.datetime(2026, 11, 22, 4, 0)


@pytest.mark.parametrize("spec", ["0 4 * * 0", "0 4 * * sun", "0 4 * * 7", "0 4 * * SUN"])
def test_sunday_specs_fire_on_sunday_only(spec):
    schedule = cron(spec)
    assert schedule.validate(SUNDAY_4AM)
    assert not schedule.validate(SUNDAY_4AM.add(days=1))
    assert schedule.next_valid_date(SUNDAY_4AM.subtract(days=3)) == SUNDAY_4AM


def test_weekly_fires_at_sunday_midnight_where_periodiq_does_not():
    midnight = SUNDAY_4AM.replace(hour=0)
    assert cron("@weekly").validate(midnight)
    assert weekly_at("sunday", 0).validate(midnight)
    assert not periodiq_cron("@weekly").validate(midnight)  # the upstream bug this fixes


def test_sugar_builds_the_seed_specs():
    assert [every_minutes(5).validate(SUNDAY_4AM.add(minutes=m)) for m in range(6)] == [
        True,
        False,
        False,
        False,
        False,
        True,
    ]
    assert daily_at(8, 0).validate(SUNDAY_4AM.replace(hour=8)) and not daily_at(8, 0).validate(SUNDAY_4AM)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("@fortnightly", "unknown cron name"),
        ("1 2 3", "expected 5 fields"),
        ("61 * * * *", "minute must be within 0-59"),
        ("* * * * 9", "dow must be within"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, complaint):
    with pytest.raises(ValueError, match=complaint):
        cron(spec)


def test_bad_sugar_is_refused():
    with pytest.raises(ValueError, match="must divide 60"):
        every_minutes(7)
    with pytest.raises(ValueError, match="hour must be 0-23"):
        daily_at(25)
    with pytest.raises(ValueError, match="unknown weekday"):
        weekly_at("someday", 1)


@pytest.fixture
def brokers():
    """Builds brokers whose audit writers are closed after the test."""
    built = []
    yield built
    for broker in built:
        audit_writer_of(broker).close(5)


def _broker_with(settings, *specs: tuple[str, str, str], brokers: list):
    """A broker with periodic actors (name, spec, catch_up) on the ``ticks`` queue."""
    broker = build_broker(settings)
    brokers.append(broker)
    created = []
    for name, spec, catch_up in specs:

        def run() -> None:
            pass

        run.__name__ = name
        created.append(
            dramatiq.actor(run, broker=broker, queue_name="ticks", periodic=cron(spec), catch_up=catch_up)
        )
    return broker, created


def _ticks(broker, namespace) -> Counter:
    return Counter(
        (m.actor_name, m.options["schedule_tick"]) for m in queued_messages(broker.client, namespace, "ticks")
    )


def test_two_schedulers_fire_each_tick_once(settings, namespace, brokers):
    broker, actors_ = _broker_with(
        settings, ("every_minute", "* * * * *", "skip"), ("sundays", "0 4 * * sun", "skip"), brokers=brokers
    )
    first = Scheduler(actors_, clock=FixedClock(SUNDAY_4AM), scheduler_id="a")
    second = Scheduler(actors_, clock=FixedClock(SUNDAY_4AM), scheduler_id="b")
    for minute in range(5):
        now = SUNDAY_4AM.subtract(minutes=2).add(minutes=minute, seconds=1)
        for scheduler in (first, second) if minute % 2 else (second, first):
            scheduler.run_tick(now)
    ticks = _ticks(broker, namespace)
    assert set(ticks.values()) == {1}
    assert sum(1 for actor, _ in ticks if actor == "every_minute") == 5
    assert [tick for actor, tick in ticks if actor == "sundays"] == [str(SUNDAY_4AM)]
    row = get_schedule(create_db_engine(settings.database_url), "every_minute")
    assert row.last_tick == SUNDAY_4AM.add(minutes=2).naive()
    assert row.next_run_at == SUNDAY_4AM.add(minutes=3).naive()


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_two_scheduler_processes_fire_each_tick_once(settings, namespace, brokers):
    env = settings_env(settings)
    script = str(REPO_ROOT / "tests" / "jobs_scheduler_proc.py")
    processes = [
        subprocess.Popen([sys.executable, script, "2", "6"], env=env, cwd=REPO_ROOT) for _ in range(2)
    ]
    assert [process.wait(45) for process in processes] == [0, 0]
    client = redis.Redis.from_url(settings.redis_url)
    ticks = Counter(m.options["schedule_tick"] for m in queued_messages(client, namespace, "probe"))
    assert len(ticks) >= 4, ticks  # 6 virtual minutes ran (a loaded machine may skip one)
    assert set(ticks.values()) == {1}, f"a tick fired twice: {ticks}"


@sqlite_only
def test_a_tick_whose_send_failed_after_the_lease_is_sent_by_its_holder_only(settings, namespace, brokers):
    broker, actors_ = _broker_with(settings, ("held", "* * * * *", "skip"), brokers=brokers)
    lease = f"{namespace}:schedule-lease:held:{SUNDAY_4AM:%Y%m%dT%H%M}"
    broker.client.set(lease, "a")  # "a" won the lease, then Redis failed before its send
    assert Scheduler(actors_, clock=FixedClock(SUNDAY_4AM), scheduler_id="b").run_tick(SUNDAY_4AM) == []
    assert len(Scheduler(actors_, clock=FixedClock(SUNDAY_4AM), scheduler_id="a").run_tick(SUNDAY_4AM)) == 1


@sqlite_only
@pytest.mark.parametrize(("policy", "expected"), [("skip", 1), ("run_once", 2)])
def test_catch_up_after_downtime(settings, namespace, policy, expected, brokers):
    broker, actors_ = _broker_with(settings, ("every_five", "*/5 * * * *", policy), brokers=brokers)
    Scheduler(actors_, clock=FixedClock(SUNDAY_4AM)).run_tick(SUNDAY_4AM)
    # down for an hour: 11 ticks missed, back at 05:00
    back = SUNDAY_4AM.add(hours=1)
    fired = Scheduler(actors_, clock=FixedClock(back)).run_tick(back)
    assert [f.catch_up for f in fired] == ([True, False] if policy == "run_once" else [False])
    if policy == "run_once":
        assert fired[0].tick == SUNDAY_4AM.add(minutes=55).naive()  # the latest missed tick only
    assert sum(_ticks(broker, namespace).values()) == 1 + expected


def test_disabled_schedule_does_not_fire_and_enabled_again_does(settings, namespace, brokers):
    broker, actors_ = _broker_with(settings, ("togglable", "* * * * *", "skip"), brokers=brokers)
    scheduler = Scheduler(actors_, clock=FixedClock(SUNDAY_4AM))
    scheduler.run_tick(SUNDAY_4AM)
    engine = create_db_engine(settings.database_url)
    set_enabled(engine, "togglable", False)
    assert scheduler.run_tick(SUNDAY_4AM.add(minutes=1)) == []
    set_enabled(engine, "togglable", True)
    assert len(scheduler.run_tick(SUNDAY_4AM.add(minutes=2))) == 1
    assert sum(_ticks(broker, namespace).values()) == 2


@pytest.fixture
def outage(settings):
    """``(proxy, settings through it)``: a Redis link the test can cut."""
    with cuttable_redis(settings) as pair:
        yield pair


@sqlite_only
@pytest.mark.timeout(60)
def test_scheduler_survives_a_redis_outage(outage, namespace, brokers):
    proxy, proxied = outage
    broker, actors_ = _broker_with(proxied, ("resilient", "* * * * *", "run_once"), brokers=brokers)
    broker.client.connection_pool.connection_kwargs.update(socket_timeout=1, socket_connect_timeout=1)
    clock = FixedClock(SUNDAY_4AM.add(seconds=5))
    scheduler = Scheduler(actors_, clock=clock)
    scheduler.run_tick(clock.now())
    proxy.cut()
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        scheduler.run_tick(SUNDAY_4AM.add(minutes=1))
    proxy.restore()
    fired = scheduler.run_tick(SUNDAY_4AM.add(minutes=2))  # reconnects; catches up the lost tick
    assert [(f.tick.minute, f.catch_up) for f in fired] == [(1, True), (2, False)]


@sqlite_only
@pytest.mark.timeout(60)
def test_run_forever_retries_a_tick_through_an_outage(settings, outage, namespace, brokers):
    proxy, proxied = outage
    broker, actors_ = _broker_with(proxied, ("steady", "* * * * *", "skip"), brokers=brokers)
    broker.client.connection_pool.connection_kwargs.update(socket_timeout=1, socket_connect_timeout=1)
    proxy.cut()
    scheduler = Scheduler(actors_, clock=FastClock(SUNDAY_4AM.add(seconds=1), time.time(), speed=1.0))
    thread = threading.Thread(target=scheduler.run_forever, daemon=True)
    thread.start()
    time.sleep(2.5)  # a few failed attempts at this minute's tick
    proxy.restore()
    client = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: queued_messages(client, namespace, "ticks"), timeout=30, what="the retried tick")
    scheduler.stop()
    thread.join(10)
    assert not thread.is_alive()


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_cli_lists_disables_enables_and_runs_a_schedule(settings, namespace, brokers):
    env = {**settings_env(settings), "COLUMNS": "250"}
    listed = run_cli("schedules", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    vacuum_line = next(line for line in listed.stdout.splitlines() if "vacuum_database" in line)
    assert "0 4 * * sun" in vacuum_line
    next_sunday = next_tick(actors_module.maintenance.vacuum_database, timezone="UTC")
    assert next_sunday.isoweekday() == 7 and str(next_sunday) in vacuum_line
    disabled = run_cli("schedules", "disable", "health_check", env=env)
    assert disabled.returncode == 0, disabled.stderr
    engine = create_db_engine(settings.database_url)
    assert get_schedule(engine, "health_check").enabled is False
    assert run_cli("schedules", "enable", "health_check", env=env).returncode == 0
    assert get_schedule(engine, "health_check").enabled is True
    ran = run_cli("schedules", "run", "health_check", env=env)
    assert ran.returncode == 0, ran.stderr
    message_id = ran.stdout.strip()
    assert get_schedule(engine, "health_check").last_message_id == message_id
    broker = build_broker(settings)  # a worker with the same actors, in this process
    brokers.append(broker)
    dramatiq.actor(broker=broker, queue_name="system", actor_name="health_check")(lambda: None)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        row = wait_for(
            lambda: (r := get_schedule(engine, "health_check")).last_status == "completed" and r,
            timeout=30,
            what="the run-now to complete",
        )
    finally:
        worker.stop(timeout=10_000)
    assert row.last_message_id == message_id and row.last_finished_at is not None
    unknown = run_cli("schedules", "disable", "nope", env=env)
    assert unknown.returncode == 1 and "no schedule named 'nope'" in unknown.stderr


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_periodiq_command_runs_the_leased_scheduler(settings, namespace):
    from api.stack import scheduler_command

    process = subprocess.Popen(
        scheduler_command(), env=settings_env(settings), cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "Scheduler" in line and "started" in line:
                break
        assert any("vacuum_database@maintenance" in line for line in lines), "".join(lines)
        engine = create_db_engine(settings.database_url)
        row = wait_for(lambda: _schedule_or_none(engine, "vacuum_database"), timeout=20, what="registration")
        assert row.spec == "0 4 * * sun"
    finally:
        process.terminate()
        process.wait(20)


def _schedule_or_none(engine, name):
    from storage import UnknownSchedule

    try:
        return get_schedule(engine, name)
    except UnknownSchedule:
        return None


def test_bad_schedule_settings_say_what_to_fix(settings):
    with pytest.raises(
        ValueError, match="schedule override of 'daily_summary': invalid cron spec 'at eight'"
    ):
        build_broker(settings.model_copy(update={"schedules": {"daily_summary": "at eight"}}))
    with pytest.raises(ValueError, match="schedule_catch_up"):
        Settings(schedule_catch_up={"daily_summary": "always"})


def test_settings_override_and_switch_off_seed_schedules(settings, brokers):
    overrides = {"daily_summary": "30 7 * * mon-fri", "vacuum_database": "off"}
    broker = build_broker(settings.model_copy(update={"schedules": overrides}))
    brokers.append(broker)
    import actors.maintenance as maintenance

    for name in ("daily_summary", "vacuum_database", "cleanup_tasks"):
        dramatiq.actor(getattr(maintenance, name).fn, broker=broker, queue_name="maintenance")
    assert str(broker.actors["daily_summary"].options["periodic"]) == "30 7 * * mon-fri"
    assert "periodic" not in broker.actors["vacuum_database"].options
    assert str(broker.actors["cleanup_tasks"].options["periodic"]) == "0 3 * * *"


def test_a_schedule_on_an_actor_that_needs_arguments_is_refused_with_the_fix(settings, brokers):
    broker = build_broker(settings.model_copy(update={"schedules": {"settle": "*/5 * * * *"}}))
    brokers.append(broker)

    def settle(account: str, *extra, dry_run: bool = False) -> None: ...

    with pytest.raises(
        ValueError, match=r"'settle' has a schedule.*needs account: give them defaults.*\"settle\": \"off\""
    ):
        dramatiq.actor(settle, broker=broker, queue_name="portfolio")

    def settle_all(account: str = "all") -> None: ...

    scheduled = dramatiq.actor(
        settle_all, broker=broker, queue_name="portfolio", periodic=periodiq_cron("* * * * *")
    )
    assert str(scheduled.options["periodic"]) == "* * * * *"


def test_every_scheduled_actor_of_the_package_runs_without_arguments():
    # Importing `actors` declared every actor through ScheduleControl, which refuses a schedule
    # on an actor that needs arguments; so this is about which actors got one.
    declared = actors_module.current_broker.actors
    periodic = {name for name, actor in declared.items() if "periodic" in actor.options}
    assert {"health_check", "cleanup_tasks", "monitor_risk"} <= periodic
    assert not {"sync_portfolio", "evaluate_risk_limits"} & periodic


def test_every_actor_that_returns_a_value_stores_it():
    # Dramatiq's Results middleware warns at each run of an actor that returns a value it is
    # not asked to store: every minute for the periodic ones.
    returning = {
        name
        for name, actor in actors_module.current_broker.actors.items()
        if inspect.signature(actor.fn).return_annotation not in ("None", None, inspect.Signature.empty)
    }
    assert {"monitor_health", "monitor_risk", "reconcile_streams", "sweep_position_requests"} <= returning
    declared = actors_module.current_broker.actors
    # the orders and workflows queues run only workflow steps: the engine records their results
    # (saga.results.StepAwareResults keeps Dramatiq quiet about them)
    jobs = {name for name in returning if declared[name].queue_name not in ("orders", "workflows")}
    assert {name for name in jobs if not declared[name].options.get("store_results")} == set()


def test_schedule_control_added_late_applies_to_actors_already_declared():
    from dramatiq.brokers.stub import StubBroker

    from actors.scheduling import ScheduleControl, ScheduleError

    def health_check() -> None: ...

    def settle(account: str) -> None: ...

    broker = StubBroker()
    declared = dramatiq.actor(health_check, broker=broker)
    broker.add_middleware(ScheduleControl())
    assert str(declared.options["periodic"]) == "*/2 * * * *"
    other = StubBroker()
    dramatiq.actor(settle, broker=other)
    with pytest.raises(ScheduleError, match="needs account"):
        other.add_middleware(ScheduleControl(overrides={"settle": "* * * * *"}))


@sqlite_only
@pytest.mark.timeout(30)
def test_a_scheduler_started_late_in_a_minute_sends_no_tick_the_workers_would_skip(
    settings, namespace, brokers
):
    _, actors_ = _broker_with(settings, ("every_minute", "* * * * *", "skip"), brokers=brokers)
    # started 45 s into 4:00 (periodiq's workers skip a tick older than 30 s), a minute lasting 1 s
    clock = FastClock(SUNDAY_4AM.add(seconds=45), time.time(), speed=60.0)
    scheduler = Scheduler(actors_, clock=clock)
    thread = threading.Thread(target=scheduler.run_forever, daemon=True)
    thread.start()
    client = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: queued_messages(client, namespace, "ticks"), timeout=10, what="a tick")
    scheduler.stop()
    thread.join(10)
    ticks = sorted(m.options["schedule_tick"] for m in queued_messages(client, namespace, "ticks"))
    assert ticks and ticks[0] == str(SUNDAY_4AM.add(minutes=1)), ticks


def test_a_run_that_ends_before_its_firing_is_recorded_keeps_its_outcome(settings, namespace, brokers):
    from actors.scheduling import SCHEDULE_OPTION, schedule_control_of
    from storage import record_fired

    broker, actors_ = _broker_with(settings, ("quick", "* * * * *", "skip"), brokers=brokers)
    scheduler = Scheduler(actors_, clock=FixedClock(SUNDAY_4AM))
    scheduler.run_tick(SUNDAY_4AM)  # registers the schedule; fires 4:00
    tick = SUNDAY_4AM.add(minutes=1)
    message = actors_[0].message_with_options(
        scheduled_at=str(tick), schedule_tick=str(tick), **{SCHEDULE_OPTION: "quick"}
    )
    # the worker finishes the run before the scheduler has written that it fired it
    engine = create_db_engine(settings.database_url)
    schedule_control_of(broker).after_process_message(broker, message)
    record_fired(
        engine, "quick", tick=tick.in_timezone("UTC").naive(), message_id=message.message_id, next_run_at=None
    )
    row = get_schedule(engine, "quick")
    assert (row.last_status, row.last_message_id) == ("completed", message.message_id)
    assert row.last_tick == tick.naive()


@sqlite_only
@pytest.mark.timeout(60)
def test_a_scheduled_run_retried_from_the_dead_letters_runs(settings, namespace, brokers):
    from dramatiq.common import current_millis

    from actors.middleware import list_dead_letters, retry_dead_letter
    from actors.scheduling import SCHEDULE_OPTION
    from storage import get_task

    broker = build_broker(settings)
    brokers.append(broker)
    ran = []
    actor = dramatiq.actor(
        lambda: ran.append(1),
        broker=broker,
        actor_name="nightly",
        queue_name="ticks",
        periodic=cron("0 3 * * *"),
    )
    an_hour_ago = str(pendulum.now("UTC").subtract(hours=1))
    message = actor.message_with_options(
        scheduled_at=an_hour_ago, schedule_tick=an_hour_ago, **{SCHEDULE_OPTION: "nightly"}
    )
    # dead-lettered an hour ago, as Dramatiq stores it
    broker.client.hset(f"{namespace}:ticks.XQ.msgs", "r1", message.encode())
    broker.client.zadd(f"{namespace}:ticks.XQ", {"r1": current_millis() - 3_600_000})
    [letter] = list_dead_letters(broker)
    assert retry_dead_letter(broker, letter) is not None
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        engine = create_db_engine(settings.database_url)
        wait_for(
            lambda: (
                getattr(get_task(engine, message.message_id), "status", None) in ("completed", "cancelled")
            ),
            timeout=30,
            what="the retried run to finish",
        )
    finally:
        worker.stop(timeout=10_000)
    assert get_task(engine, message.message_id).status == "completed" and ran == [1]
