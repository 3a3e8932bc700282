"""Reliability under crashes: a dead worker's step always runs again whatever the timings,
every step knows its idempotency key, and the audit trail ends with the truth.

Real worker processes (``dramatiq tests.reliability_worker``) killed with SIGKILL, short
heartbeats and leases, and Dramatiq's random maintenance off: only tradeflow's recovery brings
messages back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import dramatiq
import pytest
from conftest import REPO_ROOT, children_of, settings_env
from dramatiq import Message
from jobs_support import WorkerProcesses, sqlite_only, wait_for
from reliability_actors import RETRY_BACKOFF_MS, declare_actors
from saga_helpers import wait_for_run
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy

from actors import audit_writer_of, build_broker
from actors.middleware import list_dead_letters
from actors.telemetry import restart_counts
from saga import Step, Workflow, engine_of
from saga.engine import message_id
from saga.middleware import QUARANTINED
from storage import RunStatus, create_db_engine, get_run, get_steps, get_task

pytestmark = [pytest.mark.e2e]

#: The steps' lease in these tests, in milliseconds.
LEASE_MS = 4_000


def _timings(settings, heartbeat_ms: int):
    return settings.model_copy(
        update={
            "heartbeat_timeout_ms": heartbeat_ms,
            "recovery_interval_ms": 250,
            "maintenance_chance": 0,
            "workflow_lease_ms": LEASE_MS,
            "workflow_recovery_after_ms": 1_000,
            "workflow_recovery_interval_ms": 300,
        }
    )


class Workers(WorkerProcesses):
    """Workers of ``tests.reliability_worker``, one process each."""

    def __init__(self, settings) -> None:
        super().__init__(settings, module="tests.reliability_worker")

    def start(self, threads: int = 2) -> subprocess.Popen:
        return super().start("-p", "1", "-t", str(threads))


@contextmanager
def _stack(settings):
    """A broker with the test actors, its saga engine, and a group of worker processes."""
    broker = build_broker(settings)
    declared = declare_actors(broker)
    workers = Workers(settings)
    try:
        yield broker, declared, engine_of(broker), workers
    finally:
        workers.stop_all()
        audit_writer_of(broker).close(5)
        engine_of(broker).database.dispose()
        broker.close()


def _count(broker, prefix: str, what: str) -> int:
    return int(broker.client.hget(f"{prefix}:count", what) or 0)


@sqlite_only
@pytest.mark.timeout(60)
@pytest.mark.parametrize("heartbeat_ms", [1_000, LEASE_MS, 6_000], ids=["hb<lease", "hb=lease", "hb>lease"])
def test_a_compensation_whose_worker_died_runs_again_whatever_the_heartbeat(settings, heartbeat_ms):
    settings = _timings(settings, heartbeat_ms)
    prefix = f"{settings.namespace}:{uuid.uuid4().hex[:6]}"
    workflow = Workflow(
        "undo_after_kill",
        [
            Step("a", "hold", args=(prefix,), compensate_with="slow_undo"),
            Step("b", "refuse", args=(prefix,), depends_on=["a"]),
        ],
    )
    with _stack(settings) as (broker, _, engine, workers):
        run_id = engine.start(workflow)
        workers.start(), workers.start()
        wait_for(lambda: _count(broker, prefix, "undo-start") == 1, timeout=30, what="the compensation")
        master = int(broker.client.lindex(f"{prefix}:masters", 0))
        workers.kill(next(process for process in workers.running if process.pid == master))
        killed_at = time.monotonic()
        # The survivor requeues the message after the heartbeat timeout: with a short one,
        # inside the lease of the claim the dead worker holds.
        run = wait_for_run(engine.database, run_id, timeout=25)
        recovered_in = time.monotonic() - killed_at
        print(f"\nheartbeat {heartbeat_ms} ms, lease {LEASE_MS} ms: done {recovered_in:.1f}s after kill")
        assert run.status == RunStatus.COMPENSATED
        assert _count(broker, prefix, "undo-start") == 2 and _count(broker, prefix, "undo-done") == 1
        # Both deliveries of the compensation presented the same idempotency key, the step its own.
        keys = [key.decode() for key in broker.client.lrange(f"{prefix}:keys", 0, -1)]
        assert keys == [f"{run_id}:a:step:1", f"{run_id}:a:compensate:2", f"{run_id}:a:compensate:2"]


@contextmanager
def _tradeflow_up(settings, *arguments: str):
    """``tradeflow up ARGUMENTS`` with one worker process of one thread (a crash takes no other
    message down with it): ``(process, lines)``; stopped with SIGTERM at the end, which must
    end it with code 0."""
    env = settings_env(settings)
    env.update(TRADEFLOW_WORKER_PROCESSES="1", TRADEFLOW_WORKER_THREADS="1")
    up = subprocess.Popen(
        [str(Path(sys.executable).with_name("tradeflow")), "up", *arguments],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)
    reader.start()
    try:
        yield up, lines
    except BaseException:
        print("--- output of `tradeflow up` ---\n" + "".join(lines))
        raise
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=40)
        except subprocess.TimeoutExpired:
            for group in [*children_of(up.pid), up.pid]:
                os.killpg(group, signal.SIGKILL)
            up.wait()
        reader.join(10)
    assert up.returncode == 0, "".join(lines)


@sqlite_only
@pytest.mark.timeout(90)
def test_up_restarts_crashed_workers_and_a_poison_message_reaches_the_dead_letters(settings):
    """Default heartbeat (60 s) and deliveries (3), no other worker: only ``up`` brings the
    poison message back, each time its worker dies, until admission quarantines it."""
    settings = settings.model_copy(update={"maintenance_chance": 0})
    producer = build_broker(settings)
    key = f"{settings.namespace}:marks"
    try:
        with _tradeflow_up(settings, "tests.jobs_actors", "--no-scheduler", "--no-api") as (up, lines):
            started = time.monotonic()
            poison = producer.enqueue(Message("crashing", "crash", (key,), {}, {}))
            producer.enqueue(Message("crashing", "healthy", (key,), {}, {}))
            wait_for(lambda: list_dead_letters(producer), timeout=60, what="the dead letter")
            quarantined_in = time.monotonic() - started
            wait_for(lambda: producer.client.get(f"{key}:done"), timeout=30, what="the healthy message")
            print(f"\npoison message dead-lettered {quarantined_in:.1f}s after it was sent, under `up` alone")
            assert up.poll() is None, "".join(lines)  # still supervising
            [letter] = list_dead_letters(producer)
            assert letter.message_id == poison.message_id and letter.reason == "worker crashed 3 times"
            assert int(producer.client.get(f"{key}:starts")) == 3
            assert restart_counts(producer.client, settings.namespace) == {"worker": 3.0}
            row = get_task(create_db_engine(settings.database_url), poison.message_id)
            assert row.status == "dead_letter"
    finally:
        audit_writer_of(producer).close(5)
        producer.close()
    output = "".join(lines)
    assert output.count("restarted worker") == 3, output


@pytest.mark.timeout(90)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sigterm_while_postgres_refuses_connections_loses_no_audit_row(settings):
    """The worker reaches PostgreSQL through a proxy that is cut: its jobs run and are acked,
    their rows wait; a graceful stop keeps them in the journal, and the next worker writes them."""
    settings = settings.model_copy(update={"workflow_lease_ms": 3_000})
    url = make_url(settings.database_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = settings.model_copy(
        update={"database_url": url.set(port=proxy.port).render_as_string(hide_password=False)}
    )
    prefix = f"{settings.namespace}:{uuid.uuid4().hex[:6]}"
    database = create_db_engine(settings.database_url)
    with _stack(settings) as (broker, declared, _, _unused):
        workers = Workers(proxied)
        try:
            worker = workers.start()
            warm = declared.note.send(prefix, "warm")
            wait_for(lambda: _status(database, warm.message_id) == "completed", timeout=30, what="warm-up")
            proxy.cut()
            sent = [declared.note.send(prefix, f"m{index}").message_id for index in range(20)]
            wait_for(lambda: _count(broker, prefix, "m19") == 1, timeout=30, what="the jobs to run")
            wait_for(lambda: len(broker.client.lrange(f"{prefix}:log", 0, -1)) == 42, timeout=10, what="all")
            worker.send_signal(signal.SIGTERM)  # to the master, which stops its worker process
            worker.wait(60)
            assert [_status(database, task_id) for task_id in sent] == ["pending"] * 20  # not written yet
            proxy.restore()
            workers.start()  # the next writer
            wait_for(
                lambda: all(_status(database, task_id) == "completed" for task_id in sent),
                timeout=30,
                what="the rows of the jobs run before the stop",
            )
        finally:
            workers.stop_all()
            proxy.close()
            database.dispose()


def _status(database, task_id: str) -> str | None:
    row = get_task(database, task_id)
    return row.status if row else None


@sqlite_only
@pytest.mark.timeout(60)
def test_a_step_failing_with_retries_left_after_its_run_stopped_ends_final_in_the_audit_trail(settings):
    """``late`` fails with retries left while its run is already unwinding (``early`` failed for
    good): the workflow tables say ``failed``, and so must its audit row, for good."""
    prefix = f"{settings.namespace}:{uuid.uuid4().hex[:6]}"
    workflow = Workflow(
        "late_failure",
        [Step("early", "refuse", args=(prefix,)), Step("late", "fail_later", args=(prefix, 1.0))],
    )
    with _stack(settings) as (broker, _, engine, _unused):
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
        worker.start()
        try:
            run_id = engine.start(workflow)
            run = wait_for_run(engine.database, run_id, timeout=20)
            assert run.status == RunStatus.FAILED
            late = message_id(run_id, "late", "step", 1)
            wait_for(lambda: _status(engine.database, late) == "dead_letter", timeout=10, what="a final row")
            time.sleep(RETRY_BACKOFF_MS / 1000 + 1.5)  # the retry Retries sent is due: dropped
            assert _status(engine.database, late) == "dead_letter"
            assert _count(broker, prefix, "fail-later") == 1
        finally:
            worker.stop(timeout=10_000)


@sqlite_only
@pytest.mark.timeout(90)
def test_a_step_that_kills_its_worker_fails_for_good_after_max_deliveries(settings):
    """A poison step is quarantined like a poison job, though its redeliveries come back inside
    the lease (postponed copies carry the count of deliveries that died), and its run fails
    instead of waiting for recovery to send it again forever."""
    settings = _timings(settings, 1_000).model_copy(update={"max_deliveries": 2})
    prefix = f"{settings.namespace}:{uuid.uuid4().hex[:6]}"
    workflow = Workflow("poison_step", [Step("boom", "kill_worker", args=(prefix,))])
    with _stack(settings) as (broker, _, engine, workers):
        run_id = engine.start(workflow)
        worker = workers.start(threads=1)
        deadline = time.monotonic() + 60
        while (run := get_run(engine.database, run_id)).status == RunStatus.RUNNING:
            assert time.monotonic() < deadline, "the poison step was not quarantined"
            if worker.poll() is not None:  # it died: the next one must recover its message
                worker = workers.start(threads=1)
            time.sleep(0.2)
        step = get_steps(engine.database, run_id)[0]
        assert run.status == RunStatus.FAILED and step.status == "failed"
        assert step.error == QUARANTINED
        # Two deliveries died; a third only if recovery's resend (which starts a count of its
        # own) went out before the quarantine was recorded.
        assert _count(broker, prefix, "kill") in (2, 3)
        letters = list_dead_letters(broker)
        assert letters and {letter.reason for letter in letters} == {"worker crashed 2 times"}
