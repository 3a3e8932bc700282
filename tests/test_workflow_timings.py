"""What the walk-through found: a step's duration is its own (not stretched by a later
compensation or counted from before a resume), and steps log no ``store_results`` warning."""

from __future__ import annotations

import logging
import time

import pytest
from saga_helpers import fast, running_stack, steps_of, wait_for_run

from saga import Step, Workflow

pytestmark = pytest.mark.timeout(60)

#: Seconds between a step's end and what happens to it later (a compensation, a resume).
LATER = 0.8


def _duration(step) -> float:
    return (step.finished_at - step.started_at).total_seconds()


@pytest.fixture
def stack(settings):
    with running_stack(fast(settings)) as running:
        yield running


def test_a_compensated_step_keeps_its_own_duration_and_no_step_warns_about_results(stack, caplog):
    workflow = Workflow(
        "timings",
        [
            Step("a", "record", args=("a",), compensate_with="undo"),
            Step("wait", "slow", args=("wait", LATER), depends_on=["a"]),
            Step("boom", "fail", args=("boom",), depends_on=["wait"]),
        ],
    )
    with caplog.at_level(logging.WARNING):
        run_id = stack.engine.start(workflow)
        assert wait_for_run(stack.db, run_id).status == "compensated"
    a = steps_of(stack.db, run_id)["a"]
    assert a.status == "compensated"
    assert _duration(a) < LATER / 2, (a.started_at, a.finished_at)
    warnings = [r.getMessage() for r in caplog.records if "store_results" in r.getMessage()]
    assert warnings == []  # ``record`` returns a value and does not store results


def test_a_resumed_step_is_timed_from_its_new_start(stack):
    workflow = Workflow("resumed", [Step("x", "flaky", args=("x", 1))])
    run_id = stack.engine.start(workflow)
    assert wait_for_run(stack.db, run_id).status == "failed"
    time.sleep(LATER)
    stack.engine.resume(run_id)
    assert wait_for_run(stack.db, run_id).status == "succeeded"
    x = steps_of(stack.db, run_id)["x"]
    assert x.attempts >= 1 and _duration(x) < LATER / 2, (x.started_at, x.finished_at)
