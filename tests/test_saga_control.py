"""Operating runs: cancel, resume, fork, idempotency keys, deadlines and concurrency leases."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from saga_helpers import counts_of, fast, log_of, running_stack, steps_of, wait_for_run

from orchestration import UnknownWorkflow, WorkflowRegistry
from orchestration.builders import pipeline
from saga import ConcurrencyLimitExceeded, Step, StepAborted, Workflow, inputs
from storage import list_runs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stack(settings):
    with running_stack(fast(settings)) as running:
        yield running


def _wait_step(stack, run_id: str, name: str, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while steps_of(stack.db, run_id)[name].status != status:
        assert time.monotonic() < deadline, f"step {name} never became {status}"
        time.sleep(0.05)


def _slow_workflow(name: str = "slow", **options) -> Workflow:
    return Workflow(
        name,
        [
            pipeline(
                Step("a", "record", args=("a",), compensate_with="undo"),
                Step("slow", "slow", args=("slow", 20)),
                Step("c", "record", args=("c",), compensate_with="undo"),
            )
        ],
        **options,
    )


def test_cancel_aborts_the_running_step_and_compensates_succeeded_ones(stack):
    run_id = stack.engine.start(_slow_workflow())
    _wait_step(stack, run_id, "slow", "running")
    stack.engine.cancel(run_id)
    run = wait_for_run(stack.db, run_id)
    steps = steps_of(stack.db, run_id)
    assert run.status == "cancelled" and run.error == "cancelled by an operator"
    assert (steps["a"].status, steps["slow"].status, steps["c"].status) == (
        "compensated",
        "cancelled",
        "cancelled",
    )
    assert steps["slow"].error == f"StepAborted: {StepAborted.MESSAGE}"  # not an empty message
    log = log_of(stack.broker)
    assert "start:slow" in log and "slow" not in log and "c" not in log
    assert counts_of(stack.broker) == {"undo:a": 1}


def test_cancel_without_compensation_leaves_succeeded_steps(stack):
    run_id = stack.engine.start(_slow_workflow())
    _wait_step(stack, run_id, "slow", "running")
    stack.engine.cancel(run_id, compensate=False)
    run = wait_for_run(stack.db, run_id)
    assert run.status == "cancelled"
    assert steps_of(stack.db, run_id)["a"].status == "succeeded"
    assert "undo:a" not in counts_of(stack.broker)
    with pytest.raises(Exception, match="only a running run can be cancelled"):
        stack.engine.cancel(run_id)


def test_resume_reruns_only_the_failed_and_unstarted_steps(stack):
    workflow = Workflow(
        "resumable",
        [
            pipeline(
                Step("a", "count", args=("a",)),
                Step("f", "flaky", args=("f", 1)),
                Step("c", "count", args=("c",)),
            )
        ],
    )
    run_id = stack.engine.start(workflow)
    assert wait_for_run(stack.db, run_id).status == "failed"
    assert steps_of(stack.db, run_id)["c"].status == "cancelled"
    stack.engine.resume(run_id)
    run = wait_for_run(stack.db, run_id)
    steps = steps_of(stack.db, run_id)
    assert run.status == "succeeded" and run.error is None
    assert counts_of(stack.broker) == {"a": 1, "f": 2, "c": 1}
    assert steps["f"].attempts == 2 and steps["f"].result == 2
    with pytest.raises(Exception, match="only a stopped run can be resumed"):
        stack.engine.resume(run_id)


def test_fork_reuses_succeeded_results_with_new_inputs(stack):
    workflow = Workflow(
        "forkable",
        [pipeline(Step("a", "count", args=("a",)), Step("b", "add", args=(inputs("x"), 1)))],
    )
    first = stack.engine.start(workflow, {"x": "text"})
    assert wait_for_run(stack.db, first).status == "failed"
    assert "TypeError" in steps_of(stack.db, first)["b"].error
    second = stack.engine.fork(first, inputs={"x": 41})
    run = wait_for_run(stack.db, second)
    steps = steps_of(stack.db, second)
    assert run.status == "succeeded" and run.forked_from == first
    assert steps["b"].result == 42 and steps["a"].result == "a"
    assert counts_of(stack.broker) == {"a": 1}, "fork re-ran a step that had succeeded"


def test_an_idempotency_key_returns_the_same_run(stack):
    workflow = Workflow("once", [Step("a", "count", args=("a",))])
    first = stack.engine.start(workflow, idempotency_key="order-17")
    second = stack.engine.start(workflow, idempotency_key="order-17")
    assert first == second
    wait_for_run(stack.db, first)
    assert stack.engine.start(workflow, idempotency_key="order-17") == first
    assert len(list_runs(stack.db, workflow="once")) == 1
    assert counts_of(stack.broker) == {"a": 1}


def test_concurrent_starts_with_one_idempotency_key_make_one_run_and_spare_the_others(stack):
    """Starts of concurrent threads share transactions: a duplicate key in a shared batch must
    not fail its neighbours, and every caller with the key gets the one run."""
    from concurrent.futures import ThreadPoolExecutor

    workflow = Workflow("once_each", [Step("a", "count", args=("a",))])
    keys = ["same"] * 6 + [f"own-{i}" for i in range(6)]
    with ThreadPoolExecutor(len(keys)) as pool:
        run_ids = list(pool.map(lambda key: stack.engine.start(workflow, idempotency_key=key), keys))
    assert len(set(run_ids[:6])) == 1, "every start with the shared key returns the same run"
    assert len(set(run_ids)) == 7
    for run_id in set(run_ids):
        assert wait_for_run(stack.db, run_id).status == "succeeded"
    assert len(list_runs(stack.db, workflow="once_each")) == 7
    assert counts_of(stack.broker) == {"a": 7}


def test_a_run_past_its_deadline_fails_and_compensates(stack):
    run_id = stack.engine.start(_slow_workflow(deadline=timedelta(seconds=1)))
    run = wait_for_run(stack.db, run_id)
    steps = steps_of(stack.db, run_id)
    assert run.status == "compensated" and run.error == "deadline exceeded"
    assert steps["slow"].status == "cancelled" and steps["a"].status == "compensated"


def test_a_concurrency_key_admits_one_run_per_key_until_it_finishes(stack):
    workflow = Workflow("backtest", [Step("s", "slow", args=("s", 1))], concurrency_key="backtest:{user}")
    first = stack.engine.start(workflow, {"user": "u1"})
    with pytest.raises(ConcurrencyLimitExceeded, match=f"'backtest:u1' allows 1 active run.*{first}"):
        stack.engine.start(workflow, {"user": "u1"})
    other = stack.engine.start(workflow, {"user": "u2"})
    assert wait_for_run(stack.db, first).status == "succeeded"
    wait_for_run(stack.db, other)
    third = stack.engine.start(workflow, {"user": "u1"})
    assert wait_for_run(stack.db, third).status == "succeeded"


def test_a_concurrency_lease_expires_when_nothing_renews_it(settings):
    with running_stack(fast(settings, workflow_concurrency_lease_ms=1_000), worker=False) as stack:
        workflow = Workflow("backtest", [Step("s", "slow", args=("s", 1))], concurrency_key="bt:{user}")
        stack.engine.start(workflow, {"user": "u1"})  # no worker: like a run whose worker died
        with pytest.raises(ConcurrencyLimitExceeded):
            stack.engine.start(workflow, {"user": "u1"})
        time.sleep(1.2)
        assert stack.engine.start(workflow, {"user": "u1"})


def test_a_concurrency_key_naming_a_missing_input_is_an_error(stack):
    workflow = Workflow("backtest", [Step("s", "count", args=("s",))], concurrency_key="bt:{user}")
    with pytest.raises(Exception, match=r"concurrency key 'bt:\{user\}' needs input 'user'"):
        stack.engine.start(workflow, {"someone": 1})


def test_recovery_does_not_send_a_retry_before_its_backoff_is_over(stack):
    # Recovery runs every 0.3 s and resends steps idle for 1 s; the retry's backoff is
    # 1.8-2.2 s (actors.middleware.retries: 2 s with 10 % jitter either way).
    workflow = Workflow(
        "backoff", [Step("f", "flaky", args=("f", 1), max_retries=1, min_backoff=2_000, max_backoff=4_000)]
    )
    started = time.monotonic()
    run_id = stack.engine.start(workflow)
    run = wait_for_run(stack.db, run_id)
    assert run.status == "succeeded"
    assert time.monotonic() - started >= 1.75, "the retry ran before its backoff was over"
    assert steps_of(stack.db, run_id)["f"].attempts == 2


def test_a_start_survives_a_database_connection_cut_by_a_restart(stack, postgres_admin_url):
    if stack.db.dialect.name != "postgresql":
        pytest.skip("a SQLite connection cannot be cut from outside")
    from sqlalchemy import create_engine, text

    with stack.db.connect() as connection:  # the pooled connection the next start will reuse
        pid = connection.connection.driver_connection.info.backend_pid
    admin = create_engine(postgres_admin_url)
    with admin.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    run_id = stack.engine.start(Workflow("after_cut", [Step("a", "count", args=("a",))]))
    assert wait_for_run(stack.db, run_id).status == "succeeded"


def test_publishing_an_event_starts_its_workflows_with_the_payload_once_per_event_id(stack):
    registry = WorkflowRegistry()
    registry.register(Workflow("fetch", [Step("f", "add", args=(inputs("a"), 1))]), on=("market.closed",))
    registry.register(Workflow("report", [Step("r", "add", args=(inputs("a"), 2))]), on=("market.closed",))
    registry.register(Workflow("other", [Step("o", "count", args=("o",))]), on=("market.opened",))
    run_ids = registry.publish(stack.engine, "market.closed", {"a": 40}, event_id="close-1")
    assert registry.publish(stack.engine, "market.closed", {"a": 40}, event_id="close-1") == run_ids
    for run_id in run_ids:
        wait_for_run(stack.db, run_id)
    assert steps_of(stack.db, run_ids[0])["f"].result == 41
    assert steps_of(stack.db, run_ids[1])["r"].result == 42
    assert registry.publish(stack.engine, "nothing.happened", {}) == []
    assert "o" not in counts_of(stack.broker)
    with pytest.raises(UnknownWorkflow, match="no workflow named 'missing'"):
        registry.on("market.closed", "missing")
