"""The CLI for people and scripts: full ids when piped, ``--json`` everywhere, results, live watch, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import dramatiq
import pytest
from conftest import REPO_ROOT, run_cli, settings_env
from jobs_support import sqlite_only, wait_for
from saga_helpers import fast, running_stack, wait_for_run
from test_jobs_control import harness  # noqa: F401  (fixture)

from api.cli.jobs import DEAD_LETTER_FIELDS, SCHEDULE_FIELDS, WATCH_FIELDS
from api.cli.workflow import DEFINED_FIELDS, HISTORY_FIELDS, RUN_DETAIL_FIELDS, RUN_FIELDS, STEP_FIELDS
from saga import Step, Workflow
from storage import create_db_engine, get_task

TRADEFLOW = str(Path(sys.executable).with_name("tradeflow"))


def _plain_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    return env | {"PYTHONPATH": str(REPO_ROOT)}


def test_help_shows_plain_types_and_completion_is_installed():
    top = run_cli("--help", env=_plain_env())
    assert top.returncode == 0 and "--install-completion" in top.stdout
    send = run_cli("send", "--help", env=_plain_env())
    assert send.returncode == 0
    assert "<str>" not in send.stdout and "<list[" not in send.stdout and "<bool>" not in send.stdout
    assert "TEXT..." in send.stdout and "INTEGER" in send.stdout and "ACTOR" in send.stdout


def test_docs_name_every_json_field():
    from api.cli.http import API_KEY_FIELDS
    from api.cli.ops import DEPTH_FIELDS, TASK_FIELDS
    from api.cli.workers import WORKER_FIELDS

    documented = (REPO_ROOT / "docs" / "cli.md").read_text()
    constants = (DEAD_LETTER_FIELDS, SCHEDULE_FIELDS, WATCH_FIELDS, WORKER_FIELDS, API_KEY_FIELDS)
    constants += (RUN_FIELDS, RUN_DETAIL_FIELDS, STEP_FIELDS, DEFINED_FIELDS, HISTORY_FIELDS)
    missing = {field for fields in (*constants, TASK_FIELDS, DEPTH_FIELDS) for field in fields}
    missing = {field for field in missing if field != "running_now" and f"`{field}`" not in documented}
    assert not missing, f"fields of --json missing from docs/cli.md: {sorted(missing)}"


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_lists_print_full_ids_when_piped_and_json_everywhere(harness, settings):  # noqa: F811
    @dramatiq.actor(broker=harness, store_results=True, queue_name="a_rather_long_queue_name_for_output")
    def an_actor_with_a_long_name_that_tables_used_to_cut(x):
        return {"doubled": x * 2}

    @dramatiq.actor(broker=harness, max_retries=0, queue_name="a_rather_long_queue_name_for_output")
    def an_actor_that_always_fails_with_a_long_name(x):
        raise RuntimeError(f"broken {x}")

    done = an_actor_with_a_long_name_that_tables_used_to_cut.send(21)
    dead = an_actor_that_always_fails_with_a_long_name.send(1)
    harness.start_worker()
    engine = create_db_engine(settings.database_url)
    for message, status in ((done, "completed"), (dead, "dead_letter")):
        wait_for(
            lambda m=message, s=status: getattr(get_task(engine, m.message_id), "status", None) == s,
            timeout=30,
            what=f"{message.actor_name} {status}",
        )
    env = settings_env(settings)  # no COLUMNS: output to a pipe is 80 columns wide

    listed = run_cli("jobs", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    for message in (done, dead):
        assert message.message_id in listed.stdout and message.actor_name in listed.stdout
    rows = _lines(run_cli("jobs", "list", "--json", env=env).stdout)
    assert {row["task_id"] for row in rows} == {done.message_id, dead.message_id}

    shown = _lines(run_cli("jobs", "show", done.message_id, "--json", env=env).stdout)[0]
    assert shown["status"] == "completed" and shown["result"] == {"doubled": 42}
    assert [(a["number"], a["status"], a["error_message"]) for a in shown["attempts"]] == [
        (1, "completed", None)
    ]
    died = _lines(run_cli("jobs", "show", dead.message_id, "--json", env=env).stdout)[0]
    (attempt,) = died["attempts"]
    assert (attempt["status"], attempt["error_type"]) == ("dead_letter", "RuntimeError")
    assert attempt["worker_id"] == died["worker_id"] and attempt["finished_at"] >= attempt["started_at"]
    assert attempt["traceback"].rstrip().endswith("RuntimeError: broken 1")
    text = run_cli("jobs", "show", dead.message_id, env=env).stdout
    assert (
        "attempts" in text
        and "RuntimeError: broken 1" in text
        and 'raise RuntimeError(f"broken {x}")' in text
    )

    dlq = run_cli("dlq", "list", env=env)
    assert dead.message_id in dlq.stdout and "RuntimeError: broken 1" in dlq.stdout
    letters = _lines(run_cli("dlq", "list", "--json", env=env).stdout)
    assert [letter["message_id"] for letter in letters] == [dead.message_id]
    assert set(DEAD_LETTER_FIELDS) <= set(letters[0])
    # the id printed by the table pastes into show
    pasted = next(word for word in dlq.stdout.split() if word.startswith(dead.message_id[:8]))
    letter = _lines(run_cli("dlq", "show", pasted, "--json", env=env).stdout)[0]
    assert letter["error"].endswith("RuntimeError: broken 1") and "traceback" in letter

    schedules = _lines(run_cli("schedules", "list", "--json", env=env).stdout)
    assert schedules and all(tuple(row) == SCHEDULE_FIELDS for row in schedules)
    assert all(isinstance(row["enabled"], bool) for row in schedules)


@sqlite_only
@pytest.mark.timeout(60)
def test_workflow_list_show_and_history_print_json_and_full_ids(settings):
    workflow = Workflow(
        "a_workflow_with_a_name_long_enough_that_tables_used_to_cut_it",
        [
            Step("a", "record", args=("a",), compensate_with="undo"),
            Step("b", "fail", args=("b",), depends_on=["a"]),
        ],
    )
    with running_stack(fast(settings)) as stack:
        run_id = stack.engine.start(workflow, {"account": "DU123"})
        assert wait_for_run(stack.db, run_id).status == "compensated"
    env = settings_env(settings)  # no COLUMNS: piped, 80 columns

    table = run_cli("workflow", "list", env=env)
    assert table.returncode == 0, table.stderr
    assert run_id in table.stdout and workflow.name in table.stdout
    [row] = _lines(run_cli("workflow", "list", "--json", env=env).stdout)
    assert tuple(row) == RUN_FIELDS
    assert row["run_id"] == run_id and row["workflow"] == workflow.name and row["status"] == "compensated"
    assert row["inputs"] == {"account": "DU123"} and row["open_steps"] == 0
    assert "b failed on purpose" in row["error"] and row["finished_at"] > row["created_at"]
    assert _lines(run_cli("workflow", "list", "--status", "succeeded", "--json", env=env).stdout) == []

    shown = run_cli("workflow", "show", run_id, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    [run] = _lines(shown.stdout)
    assert tuple(run) == (*RUN_FIELDS, *RUN_DETAIL_FIELDS, "steps")
    assert {key: run[key] for key in RUN_FIELDS} == row and run["workflow_version"] == 1
    first, second = run["steps"]
    assert tuple(first) == STEP_FIELDS and tuple(second) == STEP_FIELDS
    assert (first["name"], first["actor"], first["status"]) == ("a", "record", "compensated")
    assert first["compensate_with"] == "undo" and first["result"]["label"] == "a"
    assert (second["name"], second["status"], second["depends_on"]) == ("b", "failed", ["a"])
    assert "b failed on purpose" in second["error"] and second["attempts"] == 1

    history = _lines(run_cli("workflow", "history", run_id, "--json", env=env).stdout)
    assert all(tuple(entry) == HISTORY_FIELDS for entry in history)
    assert history[0]["kind"] == "started" and history[-1]["kind"] == "run_compensated"
    assert ("failed", "b", 1) in [(e["kind"], e["step"], e["attempt"]) for e in history]

    defined = _lines(run_cli("workflow", "list", "--defined", "--json", env=env).stdout)
    assert all(tuple(entry) == DEFINED_FIELDS for entry in defined)
    assert {"name": "system_check", "version": 1, "events": ["system.check_requested"]} in defined


@sqlite_only
@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_jobs_watch_streams_state_changes_until_the_jobs_finish(harness, settings):  # noqa: F811
    release = threading.Event()

    @dramatiq.actor(broker=harness, max_retries=0)
    def waits_for_the_test():
        release.wait(30)

    harness.start_worker()
    message = waits_for_the_test.send()
    watch = subprocess.Popen(
        [TRADEFLOW, "jobs", "watch", message.message_id, "--json", "--interval", "0.1", "--timeout", "40"],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    first = json.loads(watch.stdout.readline())  # printed while the job is still unfinished
    assert first["status"] in ("pending", "running") and tuple(first) == WATCH_FIELDS
    release.set()
    rest, _ = watch.communicate(timeout=45)
    assert watch.returncode == 0, rest
    statuses = [first["status"]] + [change["status"] for change in _lines(rest)]
    assert statuses[-1] == "completed" and "completed" not in statuses[:-1], statuses
