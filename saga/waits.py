"""Steps that wait without holding a worker: durable timers and signals.

``sleep(name, timedelta)`` and ``until(name, datetime)`` are steps of the actor
:data:`TIMER_ACTOR` whose message goes to the broker's delay queue, due when the timer
fires; ``wait_for_signal(name, signal, timeout=...)`` is a step of :data:`SIGNAL_ACTOR`
whose message is sent when the signal arrives (``SagaEngine.signal``), or, with a timeout,
from the delay queue when it expires.  No worker thread waits: the wait is the step's row
(``running``, its due time in ``call_args`` and a claim lease that runs until the due time
plus the engine's lease), so a lost message is sent again by the recovery sweep once the
lease ran out, after the due time, never before.

A signal is stored with the run (``workflow_signals``) whether or not a step waits for it
yet: a step that reaches ``wait_for_signal`` after the signal came finds it at dispatch and
runs at once.  A step's result is ``{"received": true, "payload": ..., "at": ...}``, or
``{"received": false, "timed_out": true}`` when the timeout came first: the timeout branch
is a later step with ``when=result("step", "received") == False``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .definition import Step, WorkflowDefinitionError

#: The actors of waiting steps (declared by the ``workflows`` queue of ``actors``).
TIMER_ACTOR, SIGNAL_ACTOR = "workflow_timer", "workflow_signal"

#: Kinds of waits in a step's stored spec (``spec["wait"]["kind"]``).
SLEEP, UNTIL, SIGNAL = "sleep", "until", "signal"

#: A signal step without a timeout keeps its claim this long (its message is sent by the signal).
NO_TIMEOUT_LEASE = timedelta(days=3650)


def sleep(name: str, duration: timedelta, **options: Any) -> Step:
    """A step that ends ``duration`` after it was dispatched; its result is ``{"due", "fired_at"}``."""
    if not isinstance(duration, timedelta) or duration < timedelta(0):
        raise WorkflowDefinitionError(
            f"step {name!r}: sleep needs a non-negative timedelta, not {duration!r}"
        )
    return Step(
        name, TIMER_ACTOR, wait={"kind": SLEEP, "ms": int(duration.total_seconds() * 1000)}, **options
    )


def until(name: str, moment: datetime, **options: Any) -> Step:
    """A step that ends at ``moment`` (naive UTC, or aware), at once if it is past."""
    if not isinstance(moment, datetime):
        raise WorkflowDefinitionError(f"step {name!r}: until needs a datetime, not {moment!r}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return Step(name, TIMER_ACTOR, wait={"kind": UNTIL, "at": moment.isoformat()}, **options)


def wait_for_signal(name: str, signal: str, *, timeout: timedelta | None = None, **options: Any) -> Step:
    """A step that ends when the run receives ``signal`` (or received it before), or when
    ``timeout`` (from its dispatch) expires first."""
    if not isinstance(signal, str) or not signal:
        raise WorkflowDefinitionError(f"step {name!r}: a signal needs a non-empty name")
    wait: dict[str, Any] = {"kind": SIGNAL, "signal": signal}
    if timeout is not None:
        if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
            raise WorkflowDefinitionError(f"step {name!r}: timeout must be a positive timedelta")
        wait["timeout_ms"] = int(timeout.total_seconds() * 1000)
    return Step(name, SIGNAL_ACTOR, kwargs={"signal": signal}, wait=wait, **options)


@dataclass(frozen=True)
class WaitPlan:
    """How a waiting step is dispatched.

    Parameters:
      lease_until: Until when its dispatch claim holds (recovery resends it after).
      due: When its message is delivered (None: now); ignored when ``send`` is False.
      send: Whether a message goes out now (a signal step without a timeout waits for the signal).
      kwargs: Added to the step's keyword arguments (what the actor needs to know).
    """

    lease_until: datetime
    due: datetime | None
    send: bool
    kwargs: dict[str, Any]


def plan(wait: dict[str, Any], *, now: datetime, lease: timedelta, signalled: bool) -> WaitPlan:
    """The dispatch of a step with ``wait`` (its spec's) at ``now``; ``signalled``: the run
    already received the signal a signal step waits for."""
    kind = wait["kind"]
    if kind in (SLEEP, UNTIL):
        due = (
            now + timedelta(milliseconds=wait["ms"]) if kind == SLEEP else datetime.fromisoformat(wait["at"])
        )
        due = max(due, now)
        return WaitPlan(due + lease, due, True, {"due": due.isoformat()})
    if signalled:
        return WaitPlan(now + lease, None, True, {})
    if "timeout_ms" in wait:
        due = now + timedelta(milliseconds=wait["timeout_ms"])
        return WaitPlan(due + lease, due, True, {"timeout_at": due.isoformat()})
    return WaitPlan(now + NO_TIMEOUT_LEASE, None, False, {})


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of a naive UTC time."""
    return int(moment.replace(tzinfo=UTC).timestamp() * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)
