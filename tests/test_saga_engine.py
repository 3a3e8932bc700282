"""The saga engine with a real worker, Redis and database: DAG order, results, conditions,
retries, compensations, duplicate delivery and checkpoints."""

from __future__ import annotations

import time

import pytest
from saga_helpers import counts_of, fast, log_of, running_stack, steps_of, wait_for_run

from orchestration.builders import group, pipeline
from saga import Step, Workflow, result

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stack(settings):
    with running_stack(fast(settings)) as running:
        yield running


def test_dag_with_fan_out_fan_in_conditions_and_nesting_runs_in_order(stack):
    workflow = Workflow(
        "dag",
        [
            Step("seed", "add", args=(1, 2)),
            pipeline(
                Step("p1", "record", args=("p1",), depends_on=["seed"]),
                group(
                    [Step("g1", "record", args=("g1",)), Step("g2", "record", args=("g2",))],
                    max_concurrency=1,
                ),
                Step("p2", "record", args=("p2",)),
            ),
            Step("big", "add", args=(result("seed"), 10), depends_on=["seed"]),
            Step("if_big", "record", args=("yes",), depends_on=["big"], when=result("big") > 10),
            Step("never", "record", args=("no",), depends_on=["big"], when=result("big") < 0),
            Step("after_never", "record", args=("no-either",), depends_on=["never"]),
            Step(
                "join",
                "record",
                args=("join",),
                kwargs={"seed": result("seed"), "big": result("big")},
                depends_on=["p2", "if_big", "after_never"],
            ),
        ],
    )
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    steps = steps_of(stack.db, run_id)
    assert run.status == "succeeded", {name: (s.status, s.error) for name, s in steps.items()}
    assert {name: s.status for name, s in steps.items()} == {
        "seed": "succeeded",
        "p1": "succeeded",
        "g1": "succeeded",
        "g2": "succeeded",
        "p2": "succeeded",
        "big": "succeeded",
        "if_big": "succeeded",
        "never": "skipped",
        "after_never": "skipped",
        "join": "succeeded",
    }
    assert steps["big"].result == 13
    assert steps["join"].result["kwargs"] == {"seed": 3, "big": 13}
    assert steps["g1"].result["piped"] == [steps["p1"].result]
    assert steps["p2"].result["piped"] == [[steps["g1"].result, steps["g2"].result]]
    log = log_of(stack.broker)
    assert "no" not in log and "no-either" not in log
    assert log.index("add:1+2") < log.index("p1") < min(log.index("g1"), log.index("g2"))
    assert max(log.index("g1"), log.index("g2")) < log.index("p2") < log.index("join")
    first, second = sorted((steps["g1"], steps["g2"]), key=lambda s: s.started_at)
    assert second.started_at >= first.finished_at, "max_concurrency=1 let both group steps run at once"
    assert all(s.attempts == 1 for s in steps.values() if s.status == "succeeded")


def test_failure_in_step_k_compensates_earlier_steps_in_reverse_once_each(stack):
    workflow = Workflow(
        "reserve",
        [
            pipeline(
                Step("a", "record", args=("a",), compensate_with="undo"),
                Step("b", "record", args=("b",), compensate_with="undo"),
                Step("no_undo", "record", args=("c",)),
                Step("d", "record", args=("d",), compensate_with="undo"),
                Step("boom", "fail", args=("boom",), compensate_with="undo"),
                Step("never", "record", args=("never",), compensate_with="undo"),
            )
        ],
    )
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    steps = steps_of(stack.db, run_id)
    assert run.status == "compensated"
    assert "step 'boom' failed" in run.error and "failed on purpose" in run.error
    undos = [entry for entry in log_of(stack.broker) if entry.startswith("undo:")]
    assert undos == ["undo:d", "undo:b", "undo:a"]
    assert {k: v for k, v in counts_of(stack.broker).items() if k.startswith("undo:")} == {
        "undo:a": 1,
        "undo:b": 1,
        "undo:d": 1,
    }
    assert [steps[n].status for n in ("a", "b", "no_undo", "d", "boom", "never")] == [
        "compensated",
        "compensated",
        "succeeded",
        "compensated",
        "failed",
        "cancelled",
    ]
    assert "never" not in log_of(stack.broker)


def test_every_message_sent_twice_changes_nothing(stack):
    enqueue, enqueue_many = stack.broker.enqueue, stack.broker.enqueue_many

    def enqueue_twice(message, *, delay=None):
        enqueue(message, delay=delay)
        return enqueue(message, delay=delay)

    def enqueue_many_twice(messages, *, delay=None):  # the fan-out's batch send
        enqueue_many(messages, delay=delay)
        return enqueue_many(messages, delay=delay)

    stack.broker.enqueue, stack.broker.enqueue_many = enqueue_twice, enqueue_many_twice
    fan = [Step(f"leaf{i}", "count", args=(f"leaf{i}",), depends_on=["root"]) for i in range(6)]
    workflow = Workflow(
        "dupes",
        [
            Step("root", "count", args=("root",)),
            *fan,
            Step("fan_in", "count", args=("fan_in",), depends_on=[s.name for s in fan]),
            Step("boom", "fail", args=("boom",), depends_on=["fan_in"]),
        ],
    )
    workflow.steps[0].compensate_with = "undo"
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    assert run.status == "compensated"
    counts = counts_of(stack.broker)
    assert counts == {"root": 1, **{f"leaf{i}": 1 for i in range(6)}, "fan_in": 1, "undo:root": 1}
    assert log_of(stack.broker).count("fail:boom") == 1
    assert all(s.attempts == 1 for s in steps_of(stack.db, run_id).values())


def test_a_large_fan_out_is_sent_in_one_batch_and_runs_every_child_once(settings):
    # Recovery off the path: children still queued after a second must not be sent again here.
    with running_stack(fast(settings, workflow_recovery_after_ms=60_000)) as stack:
        _fan_out_in_one_batch(stack, width=300)


def _fan_out_in_one_batch(stack, *, width: int) -> None:
    enqueue, enqueue_many = stack.broker.enqueue, stack.broker.enqueue_many
    singles, batches = [], []

    def enqueue_counted(message, *, delay=None):
        singles.append(message.options["saga"]["step"])
        return enqueue(message, delay=delay)

    def enqueue_many_counted(messages, *, delay=None):
        batches.append([message.options["saga"]["step"] for message in messages])
        return enqueue_many(messages, delay=delay)

    stack.broker.enqueue, stack.broker.enqueue_many = enqueue_counted, enqueue_many_counted
    leaves = [Step(f"leaf{i}", "count", args=(f"leaf{i}",), depends_on=["root"]) for i in range(width)]
    workflow = Workflow(
        "wide",
        [
            Step("root", "count", args=("root",)),
            *leaves,
            Step("fan_in", "count", args=("fan_in",), depends_on=[s.name for s in leaves]),
        ],
    )
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    assert run.status == "succeeded"
    # One batch call (one pipelined round trip on the WakeupRedisBroker) for the whole fan-out.
    assert batches == [[f"leaf{i}" for i in range(width)]]
    assert sorted(singles) == ["fan_in", "root"]
    assert counts_of(stack.broker) == {"root": 1, **{f"leaf{i}": 1 for i in range(width)}, "fan_in": 1}


def test_a_step_is_retried_by_its_own_policy_and_then_succeeds(stack):
    workflow = Workflow("retry", [Step("flaky", "flaky", args=("flaky", 2), max_retries=3, min_backoff=10)])
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    step = steps_of(stack.db, run_id)["flaky"]
    assert run.status == "succeeded"
    assert step.attempts == 3 and step.result == 3
    assert step.error is None, "a step that finally succeeded still shows an error"


def test_a_compensation_that_keeps_failing_is_surfaced_then_resolved(stack):
    workflow = Workflow(
        "stuck",
        [
            pipeline(
                Step("a", "record", args=("a",), compensate_with="undo"),
                Step("b", "record", args=("b",), compensate_with="undo_fail"),
                Step("boom", "fail", args=("boom",)),
            )
        ],
    )
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    steps = steps_of(stack.db, run_id)
    assert run.status == "compensation_failed"
    assert "cannot undo b" in steps["b"].compensation_error
    assert steps["a"].status == "succeeded", "a compensation ran before the later one was dealt with"
    stack.engine.resume(run_id)  # retries the failing compensation: it fails again
    run = wait_for_run(stack.db, run_id, {"compensation_failed"}, timeout=30)
    stack.engine.resolve(run_id)
    run = wait_for_run(stack.db, run_id, {"compensated"})
    assert counts_of(stack.broker)["undo_fail:b"] >= 2
    assert counts_of(stack.broker)["undo:a"] == 1


def test_a_redelivered_step_receives_its_last_checkpoint(stack):
    workflow = Workflow("ckpt", [Step("long", "resumable", args=("long", 3), max_retries=1, min_backoff=10)])
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    step = steps_of(stack.db, run_id)["long"]
    assert run.status == "succeeded"
    assert [e for e in log_of(stack.broker) if e.startswith("long")] == [
        "long:from:0:attempt:1",
        "long:from:1:attempt:2",
    ]
    assert step.result == 1 and step.progress == 100 and step.checkpoint == {"done": 3}


def _siblings(on_failure: str, *, slow_seconds: float) -> Workflow:
    """``boom`` fails only after ``pause``, so its sibling ``slow`` is surely running by then."""
    return Workflow(
        f"siblings_{on_failure}",
        [
            Step("a", "record", args=("a",), compensate_with="undo"),
            Step("slow", "slow", args=("slow", slow_seconds), depends_on=["a"], compensate_with="undo"),
            Step("pause", "slow", args=("pause", 0.5), depends_on=["a"]),
            Step("boom", "fail", args=("boom",), depends_on=["pause"]),
            Step("after", "record", args=("after",), depends_on=["slow", "boom"]),
        ],
        on_failure=on_failure,
    )


def test_on_failure_finish_lets_a_running_sibling_finish_then_compensates_it_first(stack):
    run_id = stack.engine.start(_siblings("finish", slow_seconds=1.5))
    run = wait_for_run(stack.db, run_id)
    steps = steps_of(stack.db, run_id)
    assert run.status == "compensated"
    assert (steps["slow"].status, steps["after"].status) == ("compensated", "cancelled")
    log = log_of(stack.broker)
    assert log.index("slow") < log.index("undo:slow") < log.index("undo:a")


def test_on_failure_cancel_aborts_a_running_sibling(stack):
    run_id = stack.engine.start(_siblings("cancel", slow_seconds=3.0))
    run = wait_for_run(stack.db, run_id)
    steps = steps_of(stack.db, run_id)
    assert run.status == "compensated"
    assert steps["slow"].status == "cancelled" and "StepAborted" in steps["slow"].error
    assert "slow" not in log_of(stack.broker) and "undo:slow" not in log_of(stack.broker)
    assert counts_of(stack.broker) == {"undo:a": 1}


def test_a_step_whose_send_was_lost_after_the_commit_is_sent_again(stack):
    enqueue, lost = stack.broker.enqueue, []

    def lose_first_step_message(message, *, delay=None):
        if message.options.get("saga", {}).get("step") == "b" and not lost:
            lost.append(message.message_id)
            raise ConnectionError("connection reset while sending")
        return enqueue(message, delay=delay)

    stack.broker.enqueue = lose_first_step_message
    workflow = Workflow("lost", [pipeline(Step("a", "count", args=("a",)), Step("b", "count", args=("b",)))])
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    assert lost, "the send of step b was never attempted"
    assert run.status == "succeeded"
    assert counts_of(stack.broker) == {"a": 1, "b": 1}


def test_a_step_whose_actor_this_worker_does_not_declare_fails_the_run_clearly(stack):
    workflow = Workflow(
        "undeclared", [pipeline(Step("a", "slow", args=("a", 0.3)), Step("b", "count", args=("b",)))]
    )
    run_id = stack.engine.start(workflow)
    del stack.broker.actors["count"]  # like a worker deployed without the module of `count`
    run = wait_for_run(stack.db, run_id)
    assert run.status == "failed"
    assert steps_of(stack.db, run_id)["b"].error == (
        "cannot dispatch: actor 'count' is not declared in this process (import its module in every worker)"
    )


def test_a_step_time_limit_fails_the_step(stack):
    stack.broker.emit_after("process_boot")  # what `dramatiq` does in a worker process: starts TimeLimit
    workflow = Workflow("limited", [Step("slow", "slow", args=("slow", 10), time_limit=300, max_retries=0)])
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id, timeout=20)
    assert run.status == "failed"
    assert steps_of(stack.db, run_id)["slow"].error.startswith("TimeLimitExceeded")


@pytest.mark.parametrize(
    "marker", [{"run": "r"}, "text", {"run": "r", "step": "s", "kind": "other", "epoch": 1}]
)
def test_a_malformed_saga_option_fails_the_message_without_running_it(stack, marker):
    stack.actors.count.send_with_options(args=("x",), saga=marker)
    stack.actors.count.send_with_options(args=("plain",))  # a plain message after it still runs
    deadline = time.monotonic() + 20
    while counts_of(stack.broker).get("plain") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "x" not in counts_of(stack.broker)
