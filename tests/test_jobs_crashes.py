"""Workers killed with SIGKILL: poison messages are quarantined, stalled messages come back in bounded time.

Real worker processes (``dramatiq actors tests.jobs_actors``), short heartbeat
and recovery settings, and Dramatiq's random maintenance switched off so that
only our recovery can bring messages back.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import redis
from conftest import children_of, settings_env
from dramatiq.message import Message
from jobs_support import WorkerProcesses, sqlite_only, wait_for

from actors import audit_writer_of, build_broker
from actors.middleware import list_dead_letters
from api.stack import process_alive
from storage import create_db_engine, get_task

#: Heartbeat timeout and recovery interval of these tests, in milliseconds.
HEARTBEAT_MS, RECOVERY_MS = 2_000, 500


@pytest.fixture
def crash_settings(settings):
    return settings.model_copy(
        update={
            "heartbeat_timeout_ms": HEARTBEAT_MS,
            "recovery_interval_ms": RECOVERY_MS,
            "maintenance_chance": 0,
            "max_deliveries": 2,
        }
    )


@pytest.fixture
def producer(crash_settings):
    broker = build_broker(crash_settings)
    yield broker
    audit_writer_of(broker).close(5)


def _wedged(worker: subprocess.Popen) -> bool:
    """Dramatiq's main process is alive but its worker process is dead.

    A worker SIGKILLed while it sets its readiness event (here: killed by its first message at
    once) can die holding the event's shared lock; the main process then waits on that lock
    forever instead of noticing the death (dramatiq/cli.py, the wait for workers to come
    online).  A supervisor has to kill such a main process; the test does.
    """
    if worker.poll() is not None:
        return False
    return not any(process_alive(pid) for pid in children_of(worker.pid))


class _Workers(WorkerProcesses):
    """Workers of ``tests.jobs_actors``, one process of one thread, on the queues named."""

    def start(self, *queues: str) -> subprocess.Popen:
        # A worker killed by its first message never says it is ready, and Dramatiq's main
        # process would wait 30 s for that before noticing: under load, three of those
        # outlast the test.
        return super().start("-p", "1", "-t", "1", "--worker-fork-timeout", "2000", "-Q", *queues)


@pytest.fixture
def workers(crash_settings):
    group = _Workers(crash_settings)
    yield group
    group.stop_all()


def _marks(settings) -> tuple[str, redis.Redis]:
    """A fresh key prefix for the actors' marks, and a client to read them."""
    return f"{settings.namespace}:marks:{uuid.uuid4().hex[:6]}", redis.Redis.from_url(settings.redis_url)


def _send(broker, actor: str, queue: str, *args) -> Message:
    return broker.enqueue(Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}))


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(260)
def test_poison_message_is_dead_lettered_after_n_crashes_without_hurting_others(
    producer, workers, crash_settings
):
    # Usually 5 s; twice in a full parallel run about 96 s passed before the first worker
    # logged anything (cause not found yet), so the wait is long and the failure says where
    # the time went.
    began = time.monotonic()
    timeline = []

    def mark(what: str) -> None:
        timeline.append(f"{time.monotonic() - began:6.1f}s {what}")

    key, client = _marks(crash_settings)
    poison = _send(producer, "crash", "crashing", key)
    _send(producer, "healthy", "crashing", key)
    mark("sent both")
    deadline = time.monotonic() + 220
    worker = workers.start("crashing")
    mark(f"started worker {worker.pid}")
    wedged_since = None
    while not (letters := list_dead_letters(producer)) and time.monotonic() < deadline:
        wedged_since = (wedged_since or time.monotonic()) if _wedged(worker) else None
        if wedged_since is not None and time.monotonic() - wedged_since > 5:
            mark(f"worker {worker.pid}: its worker process died, the main process hangs: killed")
            workers.kill(worker)
        if worker.poll() is not None:  # it crashed: the next one must recover its message
            mark(f"worker {worker.pid} exited {worker.returncode}")
            worker, wedged_since = workers.start("crashing"), None
            mark(f"started worker {worker.pid}")
        time.sleep(0.2)
    mark(f"dead letters: {len(letters)}, crash starts: {client.get(f'{key}:starts')}")
    assert len(letters) == 1, "\n".join(timeline)
    [letter] = letters
    assert letter.message_id == poison.message_id
    assert letter.reason == "worker crashed 2 times"
    assert int(client.get(f"{key}:starts")) == 2  # never a third time
    wait_for(lambda: client.get(f"{key}:done"), timeout=30, what="the healthy message")
    row = get_task(create_db_engine(crash_settings.database_url), poison.message_id)
    assert row.status == "dead_letter" and row.error_message == "worker crashed 2 times"


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_message_of_a_killed_worker_runs_again_within_the_recovery_bound(producer, workers, crash_settings):
    key, client = _marks(crash_settings)
    first = workers.start("idle")
    _send(producer, "slow", "idle", key, 10.0)
    wait_for(lambda: client.llen(f"{key}:starts") == 1, timeout=60, what="the first start")
    workers.start("idle", "crashing")  # the survivor; "idle" has nothing else to do
    time.sleep(4)  # it boots, and runs recovery passes past a heartbeat timeout...
    assert client.llen(f"{key}:starts") == 1  # ...without taking the busy worker for dead
    workers.kill(first)
    killed_at = time.time()
    wait_for(lambda: client.llen(f"{key}:starts") == 2, timeout=60, what="the restart")
    recovered_after = float(client.lindex(f"{key}:starts", 1)) - killed_at
    print(
        f"\nrecovered {recovered_after:.1f}s after SIGKILL (heartbeat {HEARTBEAT_MS}, pass {RECOVERY_MS} ms)"
    )
    # bound: heartbeat timeout + one pass + the survivor's fetch backoff (<= 5 s) + slack for a loaded machine
    assert recovered_after <= (HEARTBEAT_MS + RECOVERY_MS) / 1000 + 5 + 10
    wait_for(lambda: client.get(f"{key}:done"), timeout=30, what="the rerun to finish")


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_cli_cancels_a_job_running_in_a_worker_process(producer, workers, crash_settings):
    from conftest import run_cli

    key, client = _marks(crash_settings)
    workers.start("idle")
    message = _send(producer, "stepwise", "idle", key, 60.0)
    wait_for(lambda: client.llen(f"{key}:starts") == 1, timeout=60, what="the job to start")
    result = run_cli("jobs", "cancel", message.message_id, env=settings_env(crash_settings))
    assert result.returncode == 0 and "cancelling (was running)" in result.stdout, result.stderr
    engine = create_db_engine(crash_settings.database_url)
    wait_for(lambda: get_task(engine, message.message_id).status == "cancelled", timeout=20, what="cancelled")
    time.sleep(1)
    assert (
        client.llen(f"{key}:starts") == 1 and client.get(f"{key}:done") is None
    )  # not retried, not finished


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_delayed_job_moved_twice_by_a_crash_runs_once(producer, workers, crash_settings):
    key, client = _marks(crash_settings)
    client.set(f"{key}:kill", 1)  # the worker dies after moving the due message, before its ack
    message = producer.enqueue(
        Message(queue_name="delayed", actor_name="delayed_once", args=(key,), kwargs={}, options={}),
        delay=500,
    )
    worker = workers.start("delayed")
    wait_for(lambda: worker.poll() is not None, timeout=60, what="the worker to die mid-move")
    workers.start("delayed")
    wait_for(lambda: int(client.get(f"{key}:moves") or 0) >= 2, timeout=60, what="the second move")
    engine = create_db_engine(crash_settings.database_url)
    wait_for(
        lambda: get_task(engine, message.message_id).status == "completed", timeout=30, what="completion"
    )
    producer.join("delayed", timeout=30_000)
    assert int(client.get(f"{key}:moves")) == 2  # the duplicate really was made...
    runs = client.lrange(f"{key}:runs", 0, -1)
    # ...and the surviving worker ran the job once.  The dying worker may have
    # started the first copy before its SIGKILL: that run is redone (at least
    # once), but the second copy must never run.
    assert runs.count(runs[-1]) == 1 and len(runs) <= 2, runs
