"""The audit middleware records each message's lifecycle, with a real Redis and real worker threads."""

from __future__ import annotations

import threading
import time
from collections import Counter

import dramatiq
import pytest
from sqlalchemy import text

from actors import build_broker
from storage import TERMINAL_STATUSES, create_db_engine, get_attempts, get_task, list_tasks


def wait_for_terminal(engine, task_id: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = get_task(engine, task_id)
        if row is not None and row.status in TERMINAL_STATUSES:
            return row
        time.sleep(0.05)
    pytest.fail(f"task {task_id} not finished within {timeout}s: {get_task(engine, task_id)}")


@pytest.fixture
def harness(settings):
    broker = build_broker(settings)
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def record(name: str) -> int:
        with lock:
            calls[name] += 1
            return calls[name]

    @dramatiq.actor(broker=broker, queue_name="t")
    def add(x, y):
        record("add")
        return x + y

    @dramatiq.actor(broker=broker, queue_name="t", max_retries=3)
    def flaky(key):
        if record(key) == 1:
            raise RuntimeError("first attempt fails")

    @dramatiq.actor(broker=broker, queue_name="t", max_retries=3)
    def twice(key):
        call = record(key)
        if call < 3:
            raise ValueError(f"attempt {call} fails")

    @dramatiq.actor(broker=broker, queue_name="t", max_retries=1)
    def broken():
        raise KeyError("always")

    @dramatiq.actor(broker=broker, queue_name="t", throws=(ValueError,))
    def invalid():
        raise ValueError("bad input")

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    yield broker, create_db_engine(settings.database_url), calls, locals()
    worker.stop()
    broker.close()


def test_success_is_recorded_with_timing_and_context(harness):
    _broker, engine, _, actors = harness
    message = actors["add"].send_with_options(args=(2, 3), user_id="trader-7")
    row = wait_for_terminal(engine, message.message_id)
    assert row.status == "completed"
    assert (row.task_type, row.queue, row.user_id) == ("add", "t", "trader-7")
    assert row.args == {"args": [2, 3], "kwargs": {}}
    assert row.retry_count == 0 and row.max_retries == 3 and row.timeout == 600_000
    assert row.started_at is not None and row.completed_at >= row.started_at
    assert row.processing_time_ms is not None and row.processing_time_ms >= 0
    assert row.worker_id and row.created_at is not None


def test_failure_then_success_is_completed_after_one_retry(harness):
    _, engine, calls, actors = harness
    message = actors["flaky"].send("k1")
    row = wait_for_terminal(engine, message.message_id)
    assert calls["k1"] == 2
    assert (row.status, row.retry_count) == ("completed", 1)
    assert row.error_message == "RuntimeError: first attempt fails"


def test_each_attempt_has_its_row_with_error_traceback_worker_timings(harness):
    from actors.middleware import worker_id

    _, engine, calls, actors = harness
    message = actors["twice"].send("k2")
    row = wait_for_terminal(engine, message.message_id)
    attempts = get_attempts(engine, message.message_id)
    assert calls["k2"] == 3 and row.status == "completed"
    assert [(a.retry_count, a.status, a.error_type) for a in attempts] == [
        (0, "retrying", "ValueError"),
        (1, "retrying", "ValueError"),
        (2, "completed", None),
    ]
    assert [a.error_message for a in attempts] == [
        "ValueError: attempt 1 fails",
        "ValueError: attempt 2 fails",
        None,
    ]
    assert "raise ValueError" in attempts[0].traceback and attempts[0].traceback.startswith("Traceback")
    assert attempts[2].traceback is None
    for attempt in attempts:
        assert attempt.worker_id == worker_id()
        assert attempt.started_at <= attempt.finished_at and attempt.duration_ms >= 0
    assert attempts[0].finished_at <= attempts[1].started_at <= attempts[2].started_at


def test_exhausted_retries_end_in_dead_letter(harness):
    _, engine, _, actors = harness
    row = wait_for_terminal(engine, actors["broken"].send().message_id)
    assert (row.status, row.retry_count) == ("dead_letter", 1)
    assert row.error_message == "KeyError: 'always'"


def test_expected_error_fails_without_retry(harness):
    _, engine, _, actors = harness
    row = wait_for_terminal(engine, actors["invalid"].send().message_id)
    assert (row.status, row.retry_count) == ("failed", 0)
    assert row.error_message == "ValueError: bad input"


def test_duplicate_delivery_runs_once_and_keeps_one_completed_row(harness):
    broker, engine, calls, actors = harness
    message = actors["add"].message(1, 1)
    broker.enqueue(message)
    broker.enqueue(message)
    wait_for_terminal(engine, message.message_id)
    deadline = time.monotonic() + 3
    while broker.client.llen(f"{broker.namespace}:t") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the second entry reach a worker thread
    assert calls["add"] == 1  # the admission check drops the second entry of the same attempt
    rows = list_tasks(engine, task_type="add")
    assert [(r.task_id, r.status) for r in rows] == [(message.message_id, "completed")]


def test_delayed_message_is_pending_then_completed(harness):
    _, engine, _, actors = harness
    message = actors["add"].send_with_options(args=(1, 2), delay=1_500)
    deadline = time.monotonic() + 5
    while get_task(engine, message.message_id) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert get_task(engine, message.message_id).status == "pending"
    assert wait_for_terminal(engine, message.message_id).status == "completed"


def test_message_from_a_non_python_producer_gets_a_row_when_it_runs(harness, settings):
    import json
    import uuid

    import redis

    _, engine, _, _ = harness
    message_id, redis_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {
        "queue_name": "t",
        "actor_name": "add",
        "args": [4, 5],
        "kwargs": {},
        "options": {},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    client = redis.Redis.from_url(settings.redis_url)
    # exactly what a Go or Node service does: HSET the body, RPUSH the id
    client.hset(f"{settings.namespace}:t.msgs", redis_id, json.dumps(body))
    client.rpush(f"{settings.namespace}:t", redis_id)
    row = wait_for_terminal(engine, message_id)
    assert (row.status, row.task_type, row.args) == ("completed", "add", {"args": [4, 5], "kwargs": {}})
    assert row.created_at is not None and row.started_at is not None


def test_an_attempt_records_the_trace_id_its_message_carries(harness):
    _, engine, _, actors = harness
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    message = actors["add"].send_with_options(
        args=(1, 2), trace_context={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )
    row = wait_for_terminal(engine, message.message_id)
    (attempt,) = get_attempts(engine, message.message_id)
    assert (attempt.trace_id, attempt.status, attempt.worker_id) == (trace_id, "completed", row.worker_id)
    assert (attempt.started_at, attempt.finished_at) == (row.started_at, row.completed_at)
    # a first attempt that succeeded costs no second row: the task's row holds it
    with engine.connect() as connection:
        query = text("SELECT count(*) FROM task_attempts WHERE task_id = :id")
        assert connection.execute(query, {"id": message.message_id}).scalar() == 0


def test_trace_id_of_prefers_the_current_span():
    from dramatiq.message import Message
    from opentelemetry.sdk.trace import TracerProvider

    from actors.middleware.audit import trace_id_of

    message = Message(queue_name="t", actor_name="add", args=(), kwargs={}, options={})
    assert trace_id_of(message) is None
    with TracerProvider().get_tracer("test").start_as_current_span("process t") as span:
        assert trace_id_of(message) == f"{span.get_span_context().trace_id:032x}"


def test_the_journal_keeps_an_events_attempt(redis_url, namespace):
    import redis

    from actors.middleware import RedisAuditJournal
    from storage import AttemptEvent, TaskEvent, utc_now

    now = utc_now()
    attempt = AttemptEvent(task_id="j1", number=0, seq=2, status="retrying", started_at=now, finished_at=now)
    event = TaskEvent(task_id="j1", task_type="ping", queue="t", status="retrying", seq=2, attempt=attempt)
    journal = RedisAuditJournal(client=redis.Redis.from_url(redis_url), namespace=namespace)
    journal.spill([event, TaskEvent(task_id="j2", task_type="ping", queue="t", status="pending", seq=0)])
    replayed: list = []
    assert journal.replay(replayed.extend, batch_size=10)
    assert replayed == [event, TaskEvent(task_id="j2", task_type="ping", queue="t", status="pending", seq=0)]
