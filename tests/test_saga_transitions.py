"""Step successes recorded in one statement (saga.transitions, PostgreSQL): concurrent ones share
a transaction, a duplicate outcome changes nothing, a fan-in still fires once, and a step so
recorded is compensated when the run unwinds.  The test plays the worker's part against the
real database and Redis."""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager

import pytest
from saga_helpers import deliver, fast, running_stack, steps_of
from sqlalchemy import select

from saga import SAGA_OPTION, Step, Workflow
from storage import WorkflowEvent, get_run

pytestmark = pytest.mark.timeout(60)

WIDTH = 8


@pytest.fixture
def stack(request, database_url):
    """No worker: the engine's messages are kept in ``stack.sent`` instead of being enqueued."""
    if database_url.startswith("sqlite"):
        pytest.skip("one statement per success is PostgreSQL's path (SQLite runs the general one)")
    with running_stack(fast(request.getfixturevalue("settings")), worker=False) as running:
        running.sent = []
        engine = running.engine
        engine._send = engine._group.dispatch = engine._advancing.dispatch = running.sent.extend
        yield running


def _claim(stack, message):
    return deliver(stack, message, first_delivery=True)


def _take(stack, *names: str) -> dict:
    """The sent messages of steps ``names`` (each sent exactly once), removed from ``stack.sent``."""
    counts = Counter(message.options[SAGA_OPTION]["step"] for message in stack.sent)
    assert {name: counts[name] for name in names} == dict.fromkeys(names, 1), "each sent exactly once"
    taken = {m.options[SAGA_OPTION]["step"]: m for m in stack.sent if m.options[SAGA_OPTION]["step"] in names}
    stack.sent[:] = [m for m in stack.sent if m.options[SAGA_OPTION]["step"] not in names]
    return taken


def _together(calls) -> None:
    """Run ``calls`` in threads released at once."""
    barrier = threading.Barrier(len(calls))
    errors = []

    def run(call):
        barrier.wait()
        try:
            call()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors


def _hold_first_batch(engine) -> None:
    """The first shared transaction waits a moment, so concurrent successes queue behind it."""
    opener, first = engine._advancing.transaction, [True]

    @contextmanager
    def held():
        with opener() as connection:
            if first[0]:
                first[0] = False
                time.sleep(0.3)
            yield connection

    engine._advancing.transaction = held


def _dispatches(stack, run_id: str) -> Counter:
    with stack.db.connect() as connection:
        query = select(WorkflowEvent.step).where(WorkflowEvent.run_id == run_id)
        rows = connection.execute(query.where(WorkflowEvent.kind == "dispatched"))
        return Counter(row.step for row in rows)


def _compensate_next(stack, name: str) -> None:
    """The one message sent is the compensation of ``name``: run it."""
    (message,) = stack.sent
    stack.sent.clear()
    marker = message.options[SAGA_OPTION]
    assert (marker["step"], marker["kind"]) == (name, "compensate")
    stack.engine.succeeded(_claim(stack, message), None)


def test_concurrent_successes_share_a_transaction_and_a_fan_in_fires_once(stack):
    xs, ys = [f"x{i}" for i in range(WIDTH)], [f"y{i}" for i in range(WIDTH)]
    workflow = Workflow(
        "one_statement_fan",
        [
            Step("root", "count", args=("root",)),
            *(Step(x, "count", args=(x,), depends_on=["root"]) for x in xs),
            *(Step(y, "count", args=(y,), depends_on=[x]) for x, y in zip(xs, ys, strict=True)),
            Step("fan_in", "count", args=("fan_in",), depends_on=ys),
        ],
    )
    engine = stack.engine
    run_id = engine.start(workflow)
    root = _claim(stack, _take(stack, "root")["root"])
    assert root.advance is not None, "a first delivery's read brings what one statement needs"
    engine.succeeded(root, {"n": 1})
    assert engine._advancing.operations == 1, "the root's success and its fan-out: one statement"

    claims = [_claim(stack, message) for message in _take(stack, *xs).values()]
    _hold_first_batch(engine)
    # Every success twice at once: the second of each is a stale outcome and must change nothing.
    _together([lambda c=c: engine.succeeded(c, c.step) for c in claims * 2])
    assert engine._advancing.operations > engine._advancing.batches, "no success shared a transaction"
    messages = _take(stack, *ys)
    assert all(messages[y].args == (y,) for y in ys)
    assert stack.sent == []

    # The ys' successes each release the fan-in (the general path: it waits for all of them).
    claims = [_claim(stack, message) for message in messages.values()]
    _together([lambda c=c: engine.succeeded(c, None) for c in claims * 2])
    fan_in = _claim(stack, _take(stack, "fan_in")["fan_in"])
    assert stack.sent == [], "the fan-in fired once"
    engine.succeeded(fan_in, None)
    assert get_run(stack.db, run_id).status == "succeeded"
    assert _dispatches(stack, run_id) == Counter(["root", *xs, *ys, "fan_in"]), "one dispatch each"
    steps = steps_of(stack.db, run_id)
    assert sorted(step.completion_seq for step in steps.values()) == list(range(1, len(steps) + 1))
    assert {step.attempts for step in steps.values()} == {1}


def test_steps_recorded_in_one_statement_are_compensated_in_reverse(stack):
    workflow = Workflow(
        "one_statement_compensation",
        [
            Step("a", "count", args=("a",), compensate_with="undo"),
            Step("b", "count", args=("b",), depends_on=["a"], compensate_with="undo"),
            Step("c", "fail", args=("c",), depends_on=["b"]),
        ],
    )
    engine = stack.engine
    run_id = engine.start(workflow)
    for name in ("a", "b"):
        engine.succeeded(_claim(stack, _take(stack, name)[name]), name)
    assert engine._advancing.operations == 2
    c = _claim(stack, _take(stack, "c")["c"])
    engine.failed(c, "boom", retry=None)
    for name in ("b", "a"):  # one compensation at a time, the last success first
        _compensate_next(stack, name)
    assert stack.sent == []
    assert get_run(stack.db, run_id).status == "compensated"
    assert {n: s.status for n, s in steps_of(stack.db, run_id).items()} == {
        "a": "compensated",
        "b": "compensated",
        "c": "failed",
    }


def test_a_success_after_the_run_began_unwinding_is_recorded_and_compensated(stack):
    workflow = Workflow(
        "one_statement_unwinding",
        [
            Step("root", "count", args=("root",), compensate_with="undo"),
            Step("x1", "fail", args=("x1",), depends_on=["root"]),
            Step("x2", "count", args=("x2",), depends_on=["root"], compensate_with="undo"),
            Step("y2", "count", args=("y2",), depends_on=["x2"]),
        ],
    )
    engine = stack.engine
    engine.withdraw = None  # x2's message is being run by a worker: a stop cannot withdraw it
    run_id = engine.start(workflow)
    engine.succeeded(_claim(stack, _take(stack, "root")["root"]), None)
    messages = _take(stack, "x1", "x2")
    x1, x2 = _claim(stack, messages["x1"]), _claim(stack, messages["x2"])
    engine.failed(x1, "boom", retry=None)  # the run unwinds; x2 still runs
    assert stack.sent == []
    assert x2.advance is not None, "the one statement is tried first (and changes nothing)"
    engine.succeeded(x2, "late")
    steps = steps_of(stack.db, run_id)
    # Recorded by the general path, which unwinds at once: x2 is the first to compensate.
    x2_now, y2_now = steps["x2"], steps["y2"]
    assert (x2_now.status, x2_now.result, y2_now.status) == ("compensating", "late", "cancelled")
    for name in ("x2", "root"):
        _compensate_next(stack, name)
    assert get_run(stack.db, run_id).status == "compensated"
    assert "y2" not in _dispatches(stack, run_id), "a step after the failure was dispatched"
