"""The user's modules from every door (``TRADEFLOW_MODULES``, ``-m/--module``), and the refusal of
an operation that would dispatch a step through an actor the process does not know."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_cli, settings_env
from saga_helpers import fast, steps_of

from actors.settings import Settings
from storage import create_db_engine, get_run, list_runs, upgrade

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MODULE = "tests.user_workflows"


@pytest.fixture
def env(settings):
    return settings_env(fast(settings))


@pytest.fixture
def worker(env):
    """``tradeflow worker -m MODULE``: the worker knows the user's actors."""
    tradeflow = str(Path(sys.executable).with_name("tradeflow"))
    command = [tradeflow, "worker", "-m", MODULE, "-p", "1", "-t", "2"]
    process = subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    yield process
    process.terminate()
    process.wait(30)


def _step_state(db, run_id: str) -> dict:
    return {name: (s.status, s.attempts, s.error, s.epoch) for name, s in steps_of(db, run_id).items()}


def test_resume_and_fork_without_the_module_are_refused_and_change_nothing(env, worker, settings):
    db = create_db_engine(settings.database_url)
    started = run_cli("-m", MODULE, "workflow", "start", "user_flow", "--wait", "60", env=env, timeout=90)
    assert started.returncode == 1, started.stdout + started.stderr
    run_id = started.stdout.split()[0]
    assert get_run(db, run_id).status == "failed"
    before_run, before_steps = get_run(db, run_id).model_dump(), _step_state(db, run_id)
    runs_before = len(list_runs(db, limit=100))

    for operation in ("resume", "fork"):
        refused = run_cli("workflow", operation, run_id, env=env)
        assert refused.returncode == 1
        message = refused.stderr.replace("\n", " ")
        assert f"cannot {operation} run {run_id}: step 'first' runs actor 'user_first'" in message
        assert "which this process does not declare" in message and "Traceback" not in message
        assert get_run(db, run_id).model_dump() == before_run
        assert _step_state(db, run_id) == before_steps
        assert len(list_runs(db, limit=100)) == runs_before

    resumed = run_cli("workflow", "-m", MODULE, "resume", run_id, "--wait", "60", env=env, timeout=90)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[-1] == f"{run_id} succeeded"
    assert steps_of(db, run_id)["second"].result == {"after": 2}
    db.dispose()


def test_the_setting_loads_the_users_workflows_and_a_changed_version_is_refused_at_start_up(
    redis_url, namespace, tmp_path
):
    """Little database work: SQLite only (the refusal test above covers both databases and ``-m``)."""
    url = f"sqlite:///{tmp_path}/t.db"
    upgrade(create_db_engine(url))
    env = settings_env(Settings(redis_url=redis_url, namespace=namespace, database_url=url))
    by_setting = run_cli("workflow", "list", "--defined", env={**env, "TRADEFLOW_MODULES": MODULE})
    assert by_setting.returncode == 0 and "user_flow  v1" in by_setting.stdout
    bad = run_cli(
        "workflow", "list", "--defined", env={**env, "TRADEFLOW_MODULES": f"{MODULE},no.such.module"}
    )
    assert bad.returncode == 1
    assert "cannot import module 'no.such.module'" in bad.stderr and "Traceback" not in bad.stderr
    shown = run_cli("workflow", "-m", "no.such.module", "show", "any", env=env)  # every command loads them
    assert shown.returncode == 1 and "cannot import module 'no.such.module'" in shown.stderr
    started = run_cli("-m", MODULE, "workflow", "start", "user_flow", env=env)  # stores version 1
    assert started.returncode == 0, started.stderr
    changed = run_cli("worker", "-m", "tests.user_workflows_changed", env=env)
    assert changed.returncode == 1
    assert (
        "workflow 'user_flow' version 1 is already defined differently: step 'first' args: ['a'] -> ['b']; "
        "give the changed definition a new version"
    ) in " ".join(changed.stderr.split())
