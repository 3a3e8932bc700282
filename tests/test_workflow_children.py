"""Child workflows: a step that runs another workflow and completes with its outcome; cancelling
the parent cancels its children, with their compensations, first."""

from __future__ import annotations

import time

import pytest
from saga_helpers import fast, log_of, running_stack, steps_of, wait_for_run

from saga import Step, Workflow, child, result
from storage import get_history, get_run

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stack(settings):
    with running_stack(fast(settings)) as running:
        yield running


def _parent(kid: Workflow) -> Workflow:
    return Workflow(
        "parent",
        [
            Step("before", "record", args=("p1",), compensate_with="undo"),
            child("kid", kid, inputs={"from": result("before", "label")}, depends_on=["before"]),
            Step(
                "after",
                "record",
                args=("after",),
                kwargs={"sum": result("kid", "results", "sum")},
                depends_on=["kid"],
            ),
        ],
    )


def test_a_child_step_completes_with_the_child_runs_results(stack):
    kid = Workflow(
        "kid", [Step("a", "record", args=("c1",)), Step("sum", "add", args=(1, 2), depends_on=["a"])]
    )
    run_id = stack.engine.start(_parent(kid))
    assert wait_for_run(stack.db, run_id).status == "succeeded"
    steps = steps_of(stack.db, run_id)
    child_id = steps["kid"].result["run_id"]
    assert steps["kid"].result["results"]["sum"] == 3
    assert steps["after"].result["kwargs"] == {"sum": 3}
    child_run = get_run(stack.db, child_id)
    assert (child_run.workflow, child_run.status, child_run.parent_run_id, child_run.parent_step) == (
        "kid",
        "succeeded",
        run_id,
        "kid",
    )
    assert child_run.inputs == {"from": "p1"}
    assert ("child_started", "kid") in [(e.kind, e.step) for e in get_history(stack.db, run_id)]


def test_a_failed_child_fails_its_step_and_the_parent_compensates(stack):
    kid = Workflow(
        "kid",
        [
            Step("a", "record", args=("c1",), compensate_with="undo"),
            Step("b", "fail", args=("c2",), depends_on=["a"]),
        ],
    )
    run_id = stack.engine.start(_parent(kid))
    assert wait_for_run(stack.db, run_id).status == "compensated"
    steps = steps_of(stack.db, run_id)
    assert steps["kid"].status == "failed" and "ChildWorkflowFailed" in steps["kid"].error
    assert log_of(stack.broker)[-2:] == ["undo:c1", "undo:p1"]  # the child compensated before the parent


def test_cancelling_the_parent_cancels_the_child_with_its_compensations_first(stack):
    kid = Workflow(
        "kid",
        [
            Step("a", "record", args=("c1",), compensate_with="undo"),
            Step("wait", "slow", args=("wait", 20), depends_on=["a"]),
        ],
    )
    run_id = stack.engine.start(_parent(kid))
    deadline = time.monotonic() + 20
    while "start:wait" not in log_of(stack.broker):
        assert time.monotonic() < deadline, "the child's slow step never started"
        time.sleep(0.05)
    stack.engine.cancel(run_id)
    assert wait_for_run(stack.db, run_id).status == "cancelled"
    child_id = steps_of(stack.db, run_id)["kid"].call_args[1]["run_id"]
    assert get_run(stack.db, child_id).status == "cancelled"
    log = log_of(stack.broker)
    assert log.index("undo:c1") < log.index("undo:p1")
    assert "after" not in log
