"""Durable timers and signals: steps that wait without holding a worker."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from saga_helpers import fast, log_of, running_stack, steps_of, wait_for_run

from saga import Step, Workflow, WorkflowError, result, sleep, until, wait_for_signal
from storage import get_history, utc_now

pytestmark = pytest.mark.timeout(60)

#: Seconds a timer waits in these tests.
NAP = 0.8


@pytest.fixture
def stack(settings):
    with running_stack(fast(settings), threads=1) as running:  # one thread: a wait must not hold it
        yield running


def test_timers_wait_without_holding_the_worker(stack):
    napping = Workflow(
        "nap",
        [sleep("nap", timedelta(seconds=NAP)), Step("after", "record", args=("after",), depends_on=["nap"])],
    )
    until_later = Workflow("later", [until("at", utc_now() + timedelta(seconds=NAP))])
    nap_id, later_id = stack.engine.start(napping), stack.engine.start(until_later)
    # While both timers wait, the only worker thread runs other work.
    busy_id = stack.engine.start(Workflow("busy", [Step("busy", "record", args=("busy",))]))
    assert wait_for_run(stack.db, busy_id, timeout=NAP).status == "succeeded"
    assert steps_of(stack.db, nap_id)["nap"].status == "running"
    assert wait_for_run(stack.db, nap_id).status == "succeeded"
    assert wait_for_run(stack.db, later_id).status == "succeeded"
    steps = steps_of(stack.db, nap_id)
    waited = (steps["nap"].finished_at - steps["nap"].ready_at).total_seconds()
    assert NAP - 0.05 <= waited < NAP + 2, waited
    assert steps["after"].started_at >= steps["nap"].finished_at
    assert steps["nap"].result["due"] <= steps["nap"].result["fired_at"]
    assert log_of(stack.broker) == ["busy", "after"]


def _order_flow(timeout: float) -> Workflow:
    return Workflow(
        "signalled",
        [
            wait_for_signal("fill", "filled", timeout=timedelta(seconds=timeout)),
            Step(
                "booked",
                "record",
                args=("booked",),
                kwargs={"payload": result("fill", "payload")},
                depends_on=["fill"],
                when=result("fill", "received") == True,  # noqa: E712
            ),
            Step(
                "expired",
                "record",
                args=("expired",),
                depends_on=["fill"],
                when=result("fill", "received") == False,  # noqa: E712
            ),
        ],
    )


def test_a_signal_wakes_its_step_and_a_timeout_takes_the_other_branch(stack):
    signalled = stack.engine.start(_order_flow(timeout=30))
    expiring = stack.engine.start(_order_flow(timeout=NAP))
    time.sleep(0.3)
    assert steps_of(stack.db, signalled)["fill"].status == "running"
    assert stack.engine.signal(signalled, "filled", {"price": 51.0}) == 1
    assert wait_for_run(stack.db, signalled, timeout=10).status == "succeeded"
    steps = steps_of(stack.db, signalled)
    assert steps["booked"].result["kwargs"] == {"payload": {"price": 51.0}}
    assert steps["expired"].status == "skipped"
    assert wait_for_run(stack.db, expiring).status == "succeeded"
    steps = steps_of(stack.db, expiring)
    assert steps["fill"].result["received"] is False and steps["fill"].result["timed_out"] is True
    assert (steps["booked"].status, steps["expired"].status) == ("skipped", "succeeded")
    kinds = [e.kind for e in get_history(stack.db, signalled)]
    assert kinds.index("signal_received") < kinds.index("run_succeeded")
    with pytest.raises(WorkflowError, match="only a running run takes signals"):
        stack.engine.signal(signalled, "filled")


def test_a_signal_sent_before_the_step_is_reached_is_kept(stack):
    workflow = Workflow(
        "early",
        [
            Step("first", "slow", args=("first", NAP)),
            wait_for_signal("go", "go", depends_on=["first"]),
        ],
    )
    run_id = stack.engine.start(workflow)
    assert stack.engine.signal(run_id, "go", "now") == 0  # nothing waits yet: kept
    assert wait_for_run(stack.db, run_id).status == "succeeded"
    assert steps_of(stack.db, run_id)["go"].result["payload"] == "now"
