"""Steps claimed at their dispatch: the message carries the claim, and its first delivery runs on
it without a write of its own; a redelivery, a late message or a stopped run takes or settles the
claim as before.  The test plays the worker's part against the real database and Redis."""

from __future__ import annotations

import time

import pytest
from saga_helpers import deliver, fast, running_stack, steps_of, wait_for_run

from actors.broker import ADMISSION_ATTRIBUTE, admission_key
from saga import SAGA_OPTION, Step, Workflow

pytestmark = pytest.mark.timeout(60)

LINEAR = Workflow("dispatch_claims", [Step("a", "count", args=("a",)), Step("b", "count", depends_on=["a"])])


@pytest.fixture
def stack(settings):
    """No worker: the engine's messages are kept in ``stack.sent`` instead of being enqueued."""
    with running_stack(fast(settings), worker=False) as running:
        running.sent = []
        running.engine._send = running.sent.extend
        running.engine._group.dispatch = running.engine._advancing.dispatch = running.sent.extend
        yield running


def _started(stack, workflow: Workflow = LINEAR):
    run_id = stack.engine.start(workflow)
    (message,) = stack.sent
    stack.sent.clear()
    return run_id, message


def test_a_dispatched_step_is_claimed_for_its_message(stack):
    run_id, message = _started(stack)
    a = steps_of(stack.db, run_id)["a"]
    assert (a.status, a.attempts, a.started_at) == ("running", 1, None)
    assert a.claim == message.options[SAGA_OPTION]["token"]
    assert a.lease_until is not None


def test_a_first_delivery_runs_on_the_dispatch_claim_without_writing(stack):
    run_id, message = _started(stack)
    before = steps_of(stack.db, run_id)["a"]
    claim = deliver(stack, message, first_delivery=True)
    after = steps_of(stack.db, run_id)["a"]
    assert claim is not None and claim.token == message.options[SAGA_OPTION]["token"]
    assert claim.attempt == 1 and claim.dependents == ("b",)
    assert after.model_dump() == before.model_dump(), "a first delivery wrote to its step"

    stack.engine.succeeded(claim, 7)
    steps = steps_of(stack.db, run_id)
    assert (steps["a"].status, steps["a"].result, steps["a"].claim) == ("succeeded", 7, None)
    assert steps["a"].started_at == claim.started_at, "the start time is recorded with the outcome"
    (next_message,) = stack.sent
    assert steps["b"].status == "running" and steps["b"].claim == next_message.options[SAGA_OPTION]["token"]


def test_a_redelivery_waits_for_the_lease_of_the_dispatch_claim(stack):
    # Its first delivery may still be running: only the lease running out lets it claim.
    run_id, message = _started(stack)
    assert deliver(stack, message, first_delivery=False) is None
    assert steps_of(stack.db, run_id)["a"].status == "running"
    time.sleep(1.6)  # the test settings' lease: 1.5 s
    claim = deliver(stack, message, first_delivery=False)
    assert claim is not None and claim.token != message.options[SAGA_OPTION]["token"]
    assert steps_of(stack.db, run_id)["a"].attempts == 2


def test_without_admission_a_delivery_takes_the_dispatch_claim_once(stack):
    # No admission count: the claim is written, so a duplicate delivery finds it taken.
    run_id, message = _started(stack)
    claim = deliver(stack, message, first_delivery=None)
    assert claim is not None and claim.token != message.options[SAGA_OPTION]["token"]
    assert steps_of(stack.db, run_id)["a"].claim == claim.token
    assert deliver(stack, message, first_delivery=None) is None
    assert deliver(stack, message, first_delivery=True) is None, "the dispatch claim is gone"
    stack.engine.succeeded(claim, None)
    assert steps_of(stack.db, run_id)["a"].status == "succeeded"


def test_a_first_delivery_near_the_end_of_the_lease_writes_a_fresh_claim(stack):
    # Less than half the lease left: the first heartbeat might come too late, so it claims anew.
    run_id, message = _started(stack)
    time.sleep(0.9)
    claim = deliver(stack, message, first_delivery=True)
    step = steps_of(stack.db, run_id)["a"]
    assert claim is not None and claim.token != message.options[SAGA_OPTION]["token"]
    assert step.claim == claim.token and step.worker_id == "test"


def test_a_message_after_its_run_completed_does_not_run(stack):
    run_id, message = _started(stack)
    claim = deliver(stack, message, first_delivery=True)
    stack.engine.succeeded(claim, None)
    assert deliver(stack, message, first_delivery=True) is None
    assert steps_of(stack.db, run_id)["a"].status == "succeeded"


def test_a_cancel_withdraws_a_dispatched_step_no_worker_took(stack):
    workflow = Workflow("dispatch_cancel", [Step("a", "count", args=("a",), compensate_with="undo")])
    run_id, message = _started(stack, workflow)
    stack.engine.cancel(run_id)
    run, step = wait_for_run(stack.db, run_id, timeout=1), steps_of(stack.db, run_id)["a"]
    assert run.status == "cancelled", "the run waited for a step no worker had taken"
    assert (step.status, step.error) == ("cancelled", "not started: the run was stopping")
    assert stack.sent == [], "a step that never ran is not compensated"
    # Were the message still on its way, admission would now skip it when a consumer takes it.
    stack.broker.enqueue(message)
    consumer = stack.broker.consume(message.queue_name, prefetch=1, timeout=1000)
    try:
        taken = next(consumer)
        assert taken.message_id == message.message_id
        assert getattr(taken, ADMISSION_ATTRIBUTE).outcome == "cancelled"
    finally:
        consumer.close()


def test_a_dispatched_step_a_worker_took_is_settled_by_its_delivery(stack):
    # Admitted (taken by a consumer) but not started when the run stopped: it cannot be
    # withdrawn, so the run waits; the delivery then finds the run stopping and cancels it.
    workflow = Workflow("dispatch_taken", [Step("a", "count", args=("a",), compensate_with="undo")])
    run_id, message = _started(stack, workflow)
    stack.broker.client.hset(
        admission_key(stack.broker.namespace, message), mapping={"rid": "x", "deliveries": 1}
    )
    stack.engine.cancel(run_id)
    assert wait_for_run(stack.db, run_id, {"running", "compensating"}).status == "compensating"
    assert deliver(stack, message, first_delivery=True) is None
    run, step = wait_for_run(stack.db, run_id, timeout=1), steps_of(stack.db, run_id)["a"]
    assert run.status == "cancelled"
    assert (step.status, step.error) == ("cancelled", "not started: the run was stopping")
    assert stack.sent == []


def test_a_stop_is_recorded_when_the_broker_cannot_withdraw_queued_steps(stack):
    def broker_away(broker, message_ids):
        raise ConnectionError("Redis is away")

    stack.engine.withdraw = broker_away
    workflow = Workflow("dispatch_no_redis", [Step("a", "count", args=("a",), compensate_with="undo")])
    run_id, message = _started(stack, workflow)
    stack.engine.cancel(run_id)
    assert wait_for_run(stack.db, run_id, {"running", "compensating"}).status == "compensating"
    assert deliver(stack, message, first_delivery=True) is None
    assert wait_for_run(stack.db, run_id, timeout=1).status == "cancelled"


def test_a_retry_claims_even_before_its_failed_attempt_is_recorded(stack):
    # Retries enqueues the retry before the Saga middleware records the failure: the retry
    # must write its claim, so the late failure record cannot undo the retry's attempt.
    run_id, message = _started(stack)
    first = deliver(stack, message, first_delivery=True)
    retry = message.copy(options={**message.options, "retries": 1})
    second = deliver(stack, retry, first_delivery=True)
    assert second is not None and second.token != first.token
    stack.engine.failed(first, "boom", retry=1)  # recorded late: the claim moved on
    stack.engine.succeeded(second, 3)
    step = steps_of(stack.db, run_id)["a"]
    assert (step.status, step.result, step.attempts) == ("succeeded", 3, 2)
