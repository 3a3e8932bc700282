"""Fixtures' building blocks for the saga tests: an in-process stack and waiting for runs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from types import SimpleNamespace

import dramatiq
from jobs_support import WorkerProcesses
from saga_actors import declare_actors

from actors import audit_writer_of, build_broker
from actors.settings import Settings
from saga import SAGA_OPTION, engine_of
from storage import FINAL_RUN_STATUSES, RunStatus, get_run, get_steps

#: Workflow settings that make recovery quick enough for tests.
FAST_WORKFLOW_SETTINGS = {
    "workflow_lease_ms": 1_500,
    "workflow_recovery_after_ms": 1_000,
    "workflow_recovery_interval_ms": 300,
}

#: Settings of the tests that SIGKILL a worker mid-flight: the messages it held come back once its
#: heartbeat is 3 s old (a maintenance pass on every fetch), the runs it leased 2 s after their
#: 3 s lease ran out (recovery passes every 0.5 s).
CRASH_SETTINGS = {
    "heartbeat_timeout_ms": 3_000,
    "maintenance_chance": 1_000_000,
    "workflow_lease_ms": 3_000,
    "workflow_recovery_after_ms": 2_000,
    "workflow_recovery_interval_ms": 500,
}

#: Statuses a test waits for by default.
SETTLED = {*FINAL_RUN_STATUSES, RunStatus.COMPENSATION_FAILED}


def fast(settings: Settings, **overrides) -> Settings:
    return settings.model_copy(update={**FAST_WORKFLOW_SETTINGS, **overrides})


class SagaWorkers(WorkerProcesses):
    """``dramatiq tests.saga_worker -p 1 -t THREADS`` processes, one at a time, that a test
    SIGKILLs mid-flight and replaces; leaving the ``with`` stops what still runs.

    Parameters:
      settings(Settings): What the workers read (:func:`crash_settings` of the test's).
      threads(int): Worker threads of each process.
    """

    def __init__(self, settings: Settings, *, threads: int) -> None:
        super().__init__(settings, module="tests.saga_worker")
        self.threads = threads

    def __enter__(self) -> SagaWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start_one(self) -> None:
        self.start("-p", "1", "-t", str(self.threads))

    def kill_latest(self) -> None:
        """SIGKILL of the last started process's whole group: no shutdown, nothing acked or released."""
        self.kill(self.running[-1])


def crash_settings(settings: Settings) -> Settings:
    """``settings`` with :data:`CRASH_SETTINGS`: what a killed worker held comes back within seconds."""
    return fast(settings, **CRASH_SETTINGS)


@contextmanager
def running_stack(settings: Settings, *, threads: int = 4, worker: bool = True):
    """A broker with the test actors and (optionally) a real worker in this process."""
    broker = build_broker(settings)
    actors = declare_actors(broker)
    engine = engine_of(broker)
    running = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100) if worker else None
    if running:
        running.start()
    try:
        yield SimpleNamespace(broker=broker, actors=actors, engine=engine, db=engine.database, worker=running)
    finally:
        if running:
            running.stop(timeout=10_000)
        writer = audit_writer_of(broker)
        if writer is not None:
            writer.close(5)  # before the test's database goes away
        engine.database.dispose()
        broker.close()


def wait_for_run(db, run_id: str, statuses=SETTLED, *, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(db, run_id)
        if run is not None and run.status in statuses:
            return run
        if time.monotonic() > deadline:
            steps = {s.name: (s.status, s.attempts, s.error) for s in get_steps(db, run_id)}
            raise AssertionError(f"run {run_id} is {run and run.status} after {timeout}s; steps: {steps}")
        time.sleep(0.05)


def steps_of(db, run_id: str) -> dict:
    return {step.name: step for step in get_steps(db, run_id)}


def log_of(broker) -> list[str]:
    return [item.decode() for item in broker.client.lrange(f"{broker.namespace}:log", 0, -1)]


def counts_of(broker) -> dict[str, int]:
    raw = broker.client.hgetall(f"{broker.namespace}:count")
    return {key.decode(): int(value) for key, value in raw.items()}


def deliver(stack, message, *, first_delivery: bool | None):
    """Claim ``message`` as a worker would (``first_delivery``: what admission says of it)."""
    marker = message.options[SAGA_OPTION]
    return stack.engine.claim(
        run_id=marker["run"],
        step=marker["step"],
        kind=marker["kind"],
        epoch=marker["epoch"],
        retry=message.options.get("retries", 0),
        worker="test",
        dispatch=marker.get("token"),
        first_delivery=first_delivery,
    )
