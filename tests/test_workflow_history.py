"""A run's history: an ordered log of its transitions, from Python and ``tradeflow workflow history``."""

from __future__ import annotations

import pytest
from conftest import run_cli, settings_env
from saga_helpers import fast, running_stack, wait_for_run

from saga import Step, Workflow
from storage import get_history

pytestmark = pytest.mark.timeout(60)


def _entries(db, run_id: str) -> list[tuple]:
    return [(e.kind, e.step) for e in get_history(db, run_id)]


def test_the_history_of_a_failed_compensated_resumed_and_forked_run(settings):
    workflow = Workflow(
        "history",
        [
            Step("a", "record", args=("a",), compensate_with="undo"),
            Step("b", "flaky", args=("b", 1), depends_on=["a"]),
        ],
    )
    with running_stack(fast(settings)) as stack:
        run_id = stack.engine.start(workflow)
        assert wait_for_run(stack.db, run_id).status == "compensated"
        stack.engine.resume(run_id)
        assert wait_for_run(stack.db, run_id).status == "succeeded"
        fork_id = stack.engine.fork(run_id)
        assert wait_for_run(stack.db, fork_id).status == "succeeded"
        entries = _entries(stack.db, run_id)
        assert entries == [
            ("started", None),
            ("dispatched", "a"),
            ("claimed", "a"),
            ("succeeded", "a"),
            ("dispatched", "b"),
            ("claimed", "b"),
            ("failed", "b"),
            ("unwinding", None),
            ("compensation_started", "a"),
            ("claimed", "a"),
            ("compensated", "a"),
            ("run_compensated", None),
            ("resumed", None),
            ("dispatched", "a"),
            ("claimed", "a"),
            ("succeeded", "a"),
            ("dispatched", "b"),
            ("claimed", "b"),
            ("succeeded", "b"),
            ("run_succeeded", None),
        ]
        history = get_history(stack.db, run_id)
        assert [e.at for e in history if e.kind != "claimed"] == sorted(
            e.at for e in history if e.kind != "claimed"
        )
        assert "Boom: b attempt 1 failed on purpose" in history[6].detail
        assert _entries(stack.db, fork_id) == [("forked", None), ("run_succeeded", None)]

    shown = run_cli("workflow", "history", run_id, env=settings_env(settings))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == len(entries)
    assert lines[0].split("  ")[1:] == ["started", "history v1"]
    assert lines[6].split("  ")[1:4] == ["failed", "b", "#1"]
    missing = run_cli("workflow", "history", "nope", env=settings_env(settings))
    assert missing.returncode == 1 and "no run with id 'nope'" in missing.stderr
