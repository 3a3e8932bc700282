"""SIGKILL of the worker while parents wait on a child run (itself waiting on a signal) and then
on a timer: every run still finishes, and every step runs exactly once (a wait holds no worker,
so nothing was in flight)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from conftest import REPO_ROOT, settings_env
from saga_helpers import counts_of, fast, running_stack, steps_of

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


def _start_worker(env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "dramatiq", "tests.saga_worker", "-p", "1", "-t", "2"]
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _wait(condition, what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_worker_killed_while_parents_wait_on_children_and_timers(settings):
    settings = fast(
        settings,
        heartbeat_timeout_ms=3_000,
        maintenance_chance=1_000_000,
        workflow_lease_ms=3_000,
        workflow_recovery_after_ms=2_000,
        workflow_recovery_interval_ms=500,
    )
    env = settings_env(settings)
    processes = []
    with running_stack(settings, worker=False) as stack:
        run_ids = [stack.engine.start(_workflow(index)) for index in range(RUNS)]

        def step_status(run_id: str, name: str) -> str:
            return steps_of(stack.db, run_id)[name].status

        def children() -> list[str]:
            ids = [(steps_of(stack.db, r)["kid"].call_args or [None, {}])[1].get("run_id") for r in run_ids]
            return [i for i in ids if i]

        try:
            processes.append(_start_worker(env))
            _wait(
                lambda: (
                    len(children()) == RUNS and all(step_status(c, "go") == "running" for c in children())
                ),
                "children waiting on their signal",
            )
            _kill(processes[-1])  # parents wait on children, children on a signal
            for child_id in children():
                stack.engine.signal(child_id, "go", {"ok": True})
            processes.append(_start_worker(env))
            _wait(lambda: all(step_status(r, "nap") == "running" for r in run_ids), "parents on their timer")
            _kill(processes[-1])  # parents wait on a timer (its message held in the delay queue)
            processes.append(_start_worker(env))
            _wait(
                lambda: run_status_counts(stack.db, run_ids=run_ids).get(RunStatus.SUCCEEDED) == RUNS,
                "all runs",
                timeout=60,
            )
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(30)
        counts = counts_of(stack.broker)
        expected = {f"{index}:{name}": 1 for index in range(RUNS) for name in ("p1", "k1", "k2", "p2")}
        assert counts == expected  # each step ran exactly once
        for child_id in children():
            assert steps_of(stack.db, child_id)["go"].result["payload"] == {"ok": True}
