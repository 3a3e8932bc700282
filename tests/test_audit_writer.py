"""The audit writer keeps events through database outages and bounds its memory."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy

from storage import AuditWriter, TaskEvent, create_db_engine, get_task, status_counts, upgrade


def _event(i: int, status: str = "completed", seq: int = 2) -> TaskEvent:
    return TaskEvent(task_id=f"m{i:05d}", task_type="ping", queue="system", status=status, seq=seq)


def test_events_wait_for_missing_table_then_land(database_url):
    engine = create_db_engine(database_url)
    writer = AuditWriter(engine)
    for i in range(50):
        writer.submit(_event(i))
    deadline = time.monotonic() + 10
    while writer.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.failures > 0
    assert "tradeflow db upgrade" in writer.last_error
    assert writer.pending == 50

    upgrade(engine)
    assert writer.close(15), writer.last_error
    assert status_counts(engine) == {"completed": 50}
    assert writer.dropped == 0


def test_wait_times_out_while_database_is_down_and_event_is_kept(database_url):
    engine = create_db_engine(database_url)
    writer = AuditWriter(engine)
    assert writer.submit(_event(1), wait=True, timeout=0.3) is False
    upgrade(engine)
    assert writer.flush(15)
    assert get_task(engine, "m00001").status == "completed"


def test_full_buffer_drops_oldest_and_counts(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, buffer_size=10, batch_size=5)
    for i in range(25):
        writer.submit(_event(i))
    assert writer.pending <= 10
    assert writer.dropped >= 15
    upgrade(engine)
    assert writer.close(15)
    landed = sum(status_counts(engine).values())
    assert landed + writer.dropped == 25
    assert get_task(engine, "m00024") is not None  # the newest survive


@pytest.mark.timeout(90)
def test_postgres_going_away_loses_nothing(postgres_admin_url):
    url = make_url(postgres_admin_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    schema = f"tftest_outage_{int(time.time() * 1000)}"
    admin = create_engine(postgres_admin_url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        engine = create_db_engine(f"{proxied}?options=-csearch_path%3D{schema}")
        upgrade(engine)
        writer = AuditWriter(engine)
        assert writer.submit(_event(0), wait=True, timeout=10)

        proxy.cut()
        for i in range(1, 200):
            writer.submit(_event(i))
        deadline = time.monotonic() + 20
        while writer.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.failures > 0 and writer.pending > 0

        proxy.restore()
        assert writer.close(30), writer.last_error
        assert status_counts(engine) == {"completed": 200}
        assert writer.dropped == 0
        engine.dispose()
    finally:
        proxy.close()
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_writer_in_forked_child_starts_fresh(tmp_path):
    import multiprocessing

    engine = create_db_engine(f"sqlite:///{tmp_path / 'f.db'}")
    upgrade(engine)
    writer = AuditWriter(engine)
    writer.submit(_event(0))
    assert writer.flush(10)

    def child() -> None:
        writer.submit(_event(1))
        raise SystemExit(0 if writer.close(10) else 3)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert status_counts(engine) == {"completed": 2}


def test_event_the_database_refuses_does_not_block_the_others(migrated_url):
    engine = create_db_engine(migrated_url)
    writer = AuditWriter(engine)
    bad = TaskEvent(task_id="bad", task_type=None, queue="system", status="completed", seq=2)
    for event in (_event(1), bad, _event(2)):
        writer.submit(event)
    assert writer.close(15), writer.last_error
    assert writer.rejected == 1
    assert status_counts(engine) == {"completed": 2}
    assert get_task(engine, "bad") is None


def test_deferred_running_event_is_absorbed_by_the_outcome(migrated_url):
    engine = create_db_engine(migrated_url)
    writer = AuditWriter(engine)
    running = TaskEvent(
        task_id="quick",
        task_type="ping",
        queue="system",
        status="running",
        seq=1,
        worker_id="w1",
        user_id="u1",
    )
    writer.submit(running, defer=5.0)
    outcome = TaskEvent(task_id="quick", task_type="ping", queue="system", status="completed", seq=2)
    assert writer.submit(outcome, wait=True, timeout=10)
    assert writer.written == 1  # one row write for the two events
    row = get_task(engine, "quick")
    assert (row.status, row.worker_id, row.user_id) == ("completed", "w1", "u1")


def test_deferred_running_event_is_written_when_due(migrated_url):
    engine = create_db_engine(migrated_url)
    writer = AuditWriter(engine)
    writer.submit(
        TaskEvent(task_id="long", task_type="ping", queue="system", status="running", seq=1), defer=0.2
    )
    assert get_task(engine, "long") is None
    deadline = time.monotonic() + 10
    while get_task(engine, "long") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert get_task(engine, "long").status == "running"
    assert writer.close(10)


def test_commit_interval_groups_events_and_a_waiter_commits_at_once(migrated_url):
    writer = AuditWriter(create_db_engine(migrated_url), commit_interval=5.0)
    for i in range(10):
        writer.submit(_event(i))
    time.sleep(0.3)
    assert writer.written == 0  # lingering for more events
    started = time.monotonic()
    assert writer.submit(_event(10), wait=True, timeout=10)
    assert time.monotonic() - started < 2.5  # the waiter did not sit out the interval
    assert (writer.written, writer.commits) == (11, 1)
    writer.close(5)


def _hold_write_lock(path: str, held, release) -> None:
    from storage import SQLiteWriteLock

    with SQLiteWriteLock(path):
        held.set()
        release.wait(10)


def test_sqlite_audit_writes_queue_behind_the_databases_fair_write_lock(tmp_path):
    import multiprocessing

    path = tmp_path / "a.db"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade(engine)
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_write_lock, args=(str(path), held, release))
    holder.start()
    writer = AuditWriter(engine)
    try:
        assert held.wait(10)
        assert writer.submit(_event(1), wait=True, timeout=0.5) is False, "committed past the lock"
        release.set()
        assert writer.flush(10)
        assert get_task(engine, "m00001").status == "completed"
    finally:
        release.set()
        holder.join(10)
        writer.close(5)


def _attempt_events(task_id: str, number: int, status: str, **attempt) -> TaskEvent:
    from storage import AttemptEvent

    seq = number * 3 + 2
    return TaskEvent(
        task_id=task_id,
        task_type="ping",
        queue="system",
        status=status,
        seq=seq,
        attempt=AttemptEvent(task_id=task_id, number=number, seq=seq, status=status, **attempt),
    )


def test_attempts_of_one_batch_are_rows_of_their_own_in_the_same_commit(migrated_url):
    from storage import get_attempts

    engine = create_db_engine(migrated_url)
    writer = AuditWriter(engine, commit_interval=5.0)
    events = [
        _attempt_events(
            "j", 0, "retrying", error_type="ValueError", worker_id="h:1", traceback="Traceback 0"
        ),
        _attempt_events("j", 1, "retrying", error_type="KeyError", worker_id="h:2"),
        _attempt_events("j", 2, "completed", worker_id="h:1", trace_id="ab" * 16),
        *(_event(i) for i in range(20)),
    ]
    for event in events[:-1]:
        writer.submit(event)
    assert writer.submit(events[-1], wait=True, timeout=10)
    assert writer.commits == 1, "one transaction for tasks and attempts"
    attempts = get_attempts(engine, "j")
    assert [(a.number, a.status, a.error_type, a.worker_id) for a in attempts] == [
        (0, "retrying", "ValueError", "h:1"),
        (1, "retrying", "KeyError", "h:2"),
        (2, "completed", None, "h:1"),
    ]
    assert attempts[0].traceback == "Traceback 0" and attempts[2].trace_id == "ab" * 16
    assert get_task(engine, "j").status == "completed"
    # a replay (the journal) or a late start event never moves an attempt backwards
    start = _attempt_events("j", 2, "running", worker_id="h:9")
    start.seq = start.attempt.seq = 7
    assert writer.submit(start, wait=True, timeout=10)
    assert get_attempts(engine, "j")[2].status == "completed"
    writer.close(5)


def test_a_deferred_start_keeps_its_attempt_when_the_next_attempt_absorbs_nothing(migrated_url):
    from storage import get_attempts

    engine = create_db_engine(migrated_url)
    writer = AuditWriter(engine)
    start = _attempt_events("k", 0, "running", worker_id="h:1")
    start.seq = start.attempt.seq = 1
    writer.submit(start, defer=5.0)
    assert writer.submit(_attempt_events("k", 1, "completed", worker_id="h:2"), wait=True, timeout=10)
    assert writer.flush(10)
    assert [(a.number, a.status) for a in get_attempts(engine, "k")] == [(0, "running"), (1, "completed")]
    writer.close(5)
