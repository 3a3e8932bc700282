"""SIGKILL of a worker process in the middle of many concurrent workflows: nothing is lost,
nothing runs more often than at-least-once allows, no run is stuck."""

from __future__ import annotations

import time

import pytest
from jobs_support import wait_for
from saga_helpers import SagaWorkers, counts_of, crash_settings, running_stack

from saga import Step, Workflow
from storage import RunStatus, get_steps, run_status_counts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: Concurrent workflows, and worker threads of the process that is killed.
RUNS, THREADS = 200, 4

#: Milliseconds each step sleeps, so that steps are in flight when the worker dies.
STEP_MS = 5


def _workflow() -> Workflow:
    def tick(name: str, *depends_on: str) -> Step:
        return Step(name, "tick", args=(f"{{run}}:{name}", STEP_MS), depends_on=depends_on)

    return Workflow("crash", [tick("a"), tick("b", "a"), tick("c", "a"), tick("d", "b", "c")])


def _settled(db, run_ids) -> int:
    counts = run_status_counts(db, run_ids=run_ids)
    return sum(n for status, n in counts.items() if status != RunStatus.RUNNING)


def test_sigkill_of_a_worker_mid_flight_loses_nothing(settings):
    settings = crash_settings(settings)
    with running_stack(settings, worker=False) as stack:
        workflow = _workflow()
        run_ids = []
        for index in range(RUNS):
            for step in workflow.steps:
                step.args = (f"{index}:{step.name}", STEP_MS)
            run_ids.append(stack.engine.start(workflow))
        with SagaWorkers(settings, threads=THREADS) as workers:
            workers.start_one()
            wait_for(
                lambda: _settled(stack.db, run_ids) >= RUNS // 4,
                timeout=60,
                interval=0.02,
                what="first progress",
            )
            workers.kill_latest()
            killed_at = time.monotonic()
            settled_at_kill = _settled(stack.db, run_ids)
            workers.start_one()
            wait_for(
                lambda: _settled(stack.db, run_ids) == RUNS,
                timeout=90,
                what=lambda: f"every run (stuck: {run_status_counts(stack.db, run_ids=run_ids)})",
            )
            recovered_in = time.monotonic() - killed_at
        print(
            f"\nkilled with {settled_at_kill}/{RUNS} runs done; all done {recovered_in:.2f}s after the kill"
        )
        assert run_status_counts(stack.db, run_ids=run_ids) == {"succeeded": RUNS}
        counts = counts_of(stack.broker)
        extra_runs = 0
        for index, run_id in enumerate(run_ids):
            for step in get_steps(stack.db, run_id):
                ran = counts.get(f"{index}:{step.name}", 0)
                assert 1 <= ran <= step.attempts, (run_id, step.name, ran, step.attempts)
                extra_runs += ran - 1
        # Only the steps executing in the killed process may run twice.
        assert extra_runs <= THREADS, f"{extra_runs} repeated side effects; at most {THREADS} were in flight"
