"""Shared fixtures: the real Redis and PostgreSQL of this machine, isolated per run.

A server that is not there fails the test in CI (``CI=true``) and skips it
elsewhere, with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, event

from actors.settings import Settings

#: The real servers the tests use.
REDIS_URL = os.environ.get("TRADEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "TRADEFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Engines that connected during the running test (see :func:`_dispose_engines`).
_connected_engines: weakref.WeakSet = weakref.WeakSet()


def _remember_engine(connection) -> None:
    _connected_engines.add(connection.engine)


event.listen(Engine, "engine_connect", _remember_engine)


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    """Close the pooled connections of every engine a test used, once its other fixtures are
    torn down: a pytest process keeps no PostgreSQL connection from a finished test."""
    yield
    engines = list(_connected_engines)
    _connected_engines.clear()
    for engine in engines:
        engine.dispose()


def _missing(what: str) -> None:
    message = f"{what} is not reachable; start it (see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError:
        _missing(f"Redis at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test alone; its keys are deleted afterwards."""
    name = f"tftest-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for pattern in (f"{name}*", f"{name}-results*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    if not _port_open("127.0.0.1", 5432):
        _missing("PostgreSQL at 127.0.0.1:5432")
    return POSTGRES_URL


def _postgres_schema_url(admin_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    schema = f"tftest_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{admin_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema in the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tradeflow.db'}"
        return
    yield from _postgres_schema_url(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture
def migrated_url(database_url: str) -> str:
    from storage import create_db_engine, upgrade

    engine = create_db_engine(database_url)
    upgrade(engine)
    engine.dispose()
    return database_url


@pytest.fixture
def settings(redis_url: str, namespace: str, migrated_url: str, tmp_path: Path) -> Settings:
    """Settings of one test: its own Redis namespace and database, fast retries."""
    return Settings(
        redis_url=redis_url,
        namespace=namespace,
        database_url=migrated_url,
        delta_root=tmp_path / "delta",
        min_backoff_ms=10,
        max_backoff_ms=50,
        audit_commit_wait_ms=5_000,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read ``settings``.

    Its metrics port is 0 (no exposition process) unless ``settings`` names one
    (``model_copy(update={"metrics_port": port})``): worker processes of tests running side by side,
    or beside a stack, must not fight for the default port.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADEFLOW_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            # complex values (dicts) are read back as JSON
            env[f"TRADEFLOW_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    if "metrics_port" not in settings.model_fields_set:
        env["TRADEFLOW_METRICS_PORT"] = "0"
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def children_of(pid: int) -> list[int]:
    """The pids of the live children of process ``pid``."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the installed ``tradeflow ARGS`` console script as a user would, in a child process."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("tradeflow")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
