"""SIGKILL of the worker while parents wait on a child run (itself waiting on a signal) and then
on a timer: every run still finishes, and every step runs exactly once (a wait holds no worker,
so nothing was in flight)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from jobs_support import wait_for
from saga_helpers import SagaWorkers, counts_of, crash_settings, running_stack, steps_of

from saga import Step, Workflow, child, sleep, wait_for_signal
from storage import RunStatus, run_status_counts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: Concurrent parent runs.
RUNS = 6


def _workflow(index: int) -> Workflow:
    def tick(name: str, *depends_on: str) -> Step:
        return Step(name, "tick", args=(f"{index}:{name}", 1), depends_on=depends_on)

    kid = Workflow(
        "kid",
        [
            tick("k1"),
            wait_for_signal("go", "go", depends_on=["k1"]),
            Step("k2", "tick", args=(f"{index}:k2", 1), depends_on=["go"]),
        ],
    )
    return Workflow(
        "parent",
        [
            tick("p1"),
            child("kid", kid, depends_on=["p1"]),
            sleep("nap", timedelta(seconds=2), depends_on=["kid"]),
            tick("p2", "nap"),
        ],
    )


def test_a_worker_killed_while_parents_wait_on_children_and_timers(settings):
    settings = crash_settings(settings)
    with running_stack(settings, worker=False) as stack:
        run_ids = [stack.engine.start(_workflow(index)) for index in range(RUNS)]

        def step_status(run_id: str, name: str) -> str:
            return steps_of(stack.db, run_id)[name].status

        def children() -> list[str]:
            ids = [(steps_of(stack.db, r)["kid"].call_args or [None, {}])[1].get("run_id") for r in run_ids]
            return [i for i in ids if i]

        with SagaWorkers(settings, threads=2) as workers:
            workers.start_one()
            wait_for(
                lambda: (
                    len(children()) == RUNS and all(step_status(c, "go") == "running" for c in children())
                ),
                timeout=40,
                what="children waiting on their signal",
            )
            workers.kill_latest()  # parents wait on children, children on a signal
            for child_id in children():
                stack.engine.signal(child_id, "go", {"ok": True})
            workers.start_one()
            wait_for(
                lambda: all(step_status(r, "nap") == "running" for r in run_ids),
                timeout=40,
                what="parents on their timer",
            )
            workers.kill_latest()  # parents wait on a timer (its message held in the delay queue)
            workers.start_one()
            wait_for(
                lambda: run_status_counts(stack.db, run_ids=run_ids).get(RunStatus.SUCCEEDED) == RUNS,
                timeout=60,
                what="all runs",
            )
        counts = counts_of(stack.broker)
        expected = {f"{index}:{name}": 1 for index in range(RUNS) for name in ("p1", "k1", "k2", "p2")}
        assert counts == expected  # each step ran exactly once
        for child_id in children():
            assert steps_of(stack.db, child_id)["go"].result["payload"] == {"ok": True}
