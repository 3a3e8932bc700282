"""Reliability under crashes: a dead worker's step always runs again whatever the timings,
every step knows its idempotency key, and the audit trail ends with the truth.

Real worker processes (``dramatiq tests.reliability_worker``) killed with SIGKILL, short
heartbeats and leases, and Dramatiq's random maintenance off: only tradeflow's recovery brings
messages back.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from contextlib import contextmanager

import pytest
from jobs_support import WorkerProcesses, sqlite_only, wait_for
from reliability_actors import declare_actors
from saga_helpers import wait_for_run

from actors import audit_writer_of, build_broker
from saga import Step, Workflow, engine_of
from storage import RunStatus

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
