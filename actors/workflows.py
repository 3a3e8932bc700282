"""The ``workflows`` queue: the actors of waiting steps (``saga.sleep``, ``saga.until``,
``saga.wait_for_signal``, ``saga.child``).  Their messages arrive when the wait is over (from the delay queue,
or sent by the signal), so they only report what ended the wait; no worker waits."""

from __future__ import annotations

import dramatiq

from saga import CHILD_ACTOR, SIGNAL_ACTOR, TIMER_ACTOR, ChildWorkflowFailed, current_step
from storage import utc_now

#: Queue of the waiting steps' actors.
QUEUE = "workflows"


@dramatiq.actor(actor_name=TIMER_ACTOR, queue_name=QUEUE, max_retries=3, time_limit=60_000)
def workflow_timer(due: str) -> dict:
    """A timer step's end: when it was due and when it fired."""
    return {"due": due, "fired_at": utc_now().isoformat()}


@dramatiq.actor(actor_name=SIGNAL_ACTOR, queue_name=QUEUE, max_retries=3, time_limit=60_000)
def workflow_signal(signal: str, timeout_at: str | None = None) -> dict:
    """A signal step's end: the signal (``received``, ``payload``, ``at``), or its timeout."""
    step = current_step()
    if step is None:
        raise RuntimeError(f"{SIGNAL_ACTOR} runs only as a workflow step (saga.wait_for_signal)")
    received = step.engine.received_signal(step.run_id, signal)
    if received is None:
        return {"received": False, "timed_out": True, "timeout_at": timeout_at}
    return {"received": True, **received}


@dramatiq.actor(
    actor_name=CHILD_ACTOR, queue_name=QUEUE, max_retries=3, time_limit=60_000, throws=(ChildWorkflowFailed,)
)
def workflow_child(run_id: str) -> dict:
    """A child step's end: the child run's results, or a failure when it did not succeed."""
    step = current_step()
    if step is None:
        raise RuntimeError(f"{CHILD_ACTOR} runs only as a workflow step (saga.child)")
    return step.engine.child_outcome(run_id)
