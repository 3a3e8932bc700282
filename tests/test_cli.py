"""The CLI's one-line errors, and its happy path against the real Redis and database."""

from __future__ import annotations

import pytest
from conftest import run_cli, settings_env

from actors.settings import Settings
from storage import create_db_engine, get_task, head_revisions, upgrade


def _assert_one_line_error(result, expected: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr
    assert result.stderr.strip().startswith("error:")


@pytest.fixture
def env(redis_url, namespace, tmp_path):
    """One database is enough for the error paths: SQLite, migrated."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(create_db_engine(url))
    return settings_env(Settings(redis_url=redis_url, namespace=namespace, database_url=url))


def test_send_prints_id_and_writes_pending_row(settings):
    result = run_cli("send", "ping", "--args", '["hi"]', "--user-id", "u1", env=settings_env(settings))
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    row = get_task(create_db_engine(settings.database_url), task_id)
    assert (row.status, row.task_type, row.queue, row.user_id) == ("pending", "ping", "system", "u1")
    assert row.args == {"args": ["hi"], "kwargs": {}}


def test_send_accepts_keyword_object(settings, env):
    env["TRADEFLOW_DATABASE_URL"] = settings.database_url
    result = run_cli("send", "ping", "--args", '{"payload": 3}', env=env)
    assert result.returncode == 0, result.stderr
    row = get_task(create_db_engine(settings.database_url), result.stdout.strip())
    assert row.args == {"args": [], "kwargs": {"payload": 3}}


def test_unknown_actor(env):
    _assert_one_line_error(run_cli("send", "nope", env=env), "unknown actor 'nope'; known actors:")


def test_unknown_module(env):
    _assert_one_line_error(
        run_cli("send", "ping", "-m", "no.such", env=env), "cannot import module 'no.such'"
    )


def test_malformed_json(env):
    _assert_one_line_error(run_cli("send", "ping", "--args", "[1,", env=env), "--args is not valid JSON")


def test_args_of_wrong_type(env):
    _assert_one_line_error(run_cli("send", "ping", "--args", "5", env=env), "--args must be a JSON array")


def test_unreachable_redis(env):
    env["TRADEFLOW_REDIS_URL"] = "redis://127.0.0.1:1/0"
    _assert_one_line_error(run_cli("send", "ping", env=env), "cannot reach Redis at redis://127.0.0.1:1/0")


def test_invalid_setting(env):
    env["TRADEFLOW_DATABASE_URL"] = "mysql://x"
    _assert_one_line_error(run_cli("jobs", "list", env=env), "TRADEFLOW_DATABASE_URL")


def test_unmigrated_database_says_how_to_fix(env, tmp_path):
    env["TRADEFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    _assert_one_line_error(run_cli("jobs", "list", env=env), "run `tradeflow db upgrade`")


def test_unreachable_database(env):
    env["TRADEFLOW_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/test"
    _assert_one_line_error(run_cli("jobs", "list", env=env), "database:")


def test_unknown_task_and_status(env):
    _assert_one_line_error(run_cli("jobs", "show", "missing", env=env), "no task with id 'missing'")
    _assert_one_line_error(run_cli("jobs", "list", "--status", "weird", env=env), "unknown status 'weird'")


def test_db_upgrade_is_idempotent(env, tmp_path):
    env["TRADEFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'new.db'}"
    for _ in range(2):
        result = run_cli("db", "upgrade", env=env)
        assert result.returncode == 0, result.stderr
        assert f"database at revision {', '.join(sorted(head_revisions()))}" in result.stdout
