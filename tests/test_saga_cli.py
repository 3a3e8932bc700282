"""``tradeflow workflow`` as a user runs it, against a real worker process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT, run_cli, settings_env
from saga_helpers import fast

from actors.settings import Settings
from storage import create_db_engine, upgrade

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def env(redis_url, namespace, tmp_path):
    """A user's environment: the CLI is an edge over the engine, whose tests cover both databases,
    so it runs on SQLite only (each command is a new Python process)."""
    database_url = f"sqlite:///{tmp_path / 'tradeflow.db'}"
    upgrade(create_db_engine(database_url))
    return settings_env(fast(Settings(redis_url=redis_url, namespace=namespace, database_url=database_url)))


@pytest.fixture(scope="module")
def sqlite_env(redis_url, tmp_path_factory):
    """One migrated SQLite database for the input-checking tests (they need no PostgreSQL twin)."""
    database_url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'tradeflow.db'}"
    upgrade(create_db_engine(database_url))
    return settings_env(
        Settings(redis_url=redis_url, namespace="tftest-cli-errors", database_url=database_url)
    )


@pytest.fixture
def worker(env):
    command = [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "2"]
    process = subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    yield process
    process.terminate()
    process.wait(30)


def test_start_show_list_and_publish_with_a_real_worker(env, worker):
    started = run_cli("workflow", "start", "system_check", "--wait", "60", env=env, timeout=90)
    assert started.returncode == 0, started.stderr
    run_id, final = started.stdout.split()[0], started.stdout.splitlines()[-1]
    assert final == f"{run_id} succeeded"
    shown = run_cli("workflow", "show", run_id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "system_check" in shown.stdout and "succeeded" in shown.stdout
    assert "└── health  (health_check)  succeeded  attempts 1" in shown.stdout
    assert "    └── ping  (ping)  succeeded  attempts 1" in shown.stdout
    listed = run_cli("workflow", "list", "--status", "succeeded", env=env)
    assert run_id in listed.stdout
    first = run_cli("workflow", "publish", "system.check_requested", "--event-id", "e1", env=env)
    again = run_cli("workflow", "publish", "system.check_requested", "--event-id", "e1", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == again.stdout.split() and len(first.stdout.split()) == 1
    cancelled = run_cli("workflow", "cancel", run_id, env=env)
    assert cancelled.returncode == 1
    assert f"run {run_id} is succeeded; only a running run can be cancelled" in cancelled.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("start", "nope"), "no workflow named 'nope'; registered workflows: market_data_refresh"),
        (
            ("start", "portfolio_analysis", "--args", "{}"),
            "concurrency key 'portfolio_analysis:{user_id}' needs input 'user_id'",
        ),
        (("start", "system_check", "--args", "{bad"), "--args is not valid JSON"),
        (("show", "missing"), "no run with id 'missing'"),
        (("resume", "missing"), "no run with id 'missing'"),
        (("list", "--status", "done"), "unknown status 'done'"),
        (("publish", "nothing.happened"), "no workflow is registered for event 'nothing.happened'"),
    ],
)
def test_bad_input_is_one_clear_line(sqlite_env, args, message):
    outcome = run_cli("workflow", *args, env=sqlite_env)
    assert outcome.returncode == 1
    assert message in outcome.stderr.replace("\n", " ")
    assert "Traceback" not in outcome.stderr
