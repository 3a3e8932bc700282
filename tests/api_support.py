"""A real ``tradeflow api`` server (uvicorn in a child process) and worker for the HTTP API tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from conftest import REPO_ROOT, settings_env
from jobs_support import wait_for as wait_until
from obs_support import free_port

from actors.settings import Settings

#: Seconds a server or worker may take to come up.
START_TIMEOUT = 40.0


@dataclass
class Server:
    """A running API: its settings, base URL, one token per role, and its process's log."""

    settings: Settings
    url: str
    tokens: dict[str, str]
    log: Path
    #: The ``tradeflow api`` process.
    process: subprocess.Popen | None = None

    def client(self, role: str | None = "operator", *, headers: dict | None = None) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers={**auth, **(headers or {})}, timeout=30)


def _tokens(settings: Settings) -> dict[str, str]:
    from storage import create_api_key, create_db_engine

    engine = create_db_engine(settings.database_url)
    tokens = {
        role: create_api_key(engine, name=f"test-{role}", role=role)[1]
        for role in ("viewer", "operator", "admin")
    }
    engine.dispose()
    return tokens


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_api(
    settings: Settings,
    log_dir: Path,
    *,
    worker: bool = True,
    modules: tuple[str, ...] = ("tests.api_actors",),
    queues: tuple[str, ...] = ("api_work", "system"),
) -> Iterator[Server]:
    """``tradeflow api -m <modules>`` on a free port, and (``worker``) one worker process
    consuming ``queues`` (``api_work`` and ``system``); both stopped afterwards."""
    # metrics on (the workers' heartbeats that /workers lists come with them), served nowhere
    settings = settings.model_copy(
        update={"api_port": free_port(), "metrics_port": 0, "metrics_dir": log_dir / "metrics"}
    )
    env = settings_env(settings)
    log = log_dir / f"api-{settings.api_port}.log"
    tokens = _tokens(settings)
    tradeflow = str(Path(sys.executable).with_name("tradeflow"))
    with open(log, "w") as out:
        api = subprocess.Popen(
            [tradeflow, "api", *(arg for module in modules for arg in ("-m", module))],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=out,
        )
    workers = None
    if worker:
        with open(log_dir / "worker.log", "w") as out:
            workers = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dramatiq",
                    "actors",
                    *modules,
                    "-p",
                    "1",
                    "-t",
                    "4",
                    "-Q",
                    *queues,
                ],
                env=env,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=out,
            )
    server = Server(settings, f"http://127.0.0.1:{settings.api_port}", tokens, log, api)
    try:

        def up() -> bool:
            if api.poll() is not None:
                raise AssertionError(f"the API exited with {api.returncode}:\n{log.read_text()}")
            try:
                return httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=START_TIMEOUT, what="the API to answer /healthz")
        yield server
    finally:
        _stop(api)
        if workers is not None:
            _stop(workers)


def read_events(lines, *, until, timeout: float) -> list[dict]:
    """Parse Server-Sent Events from ``lines`` (``response.iter_lines()``) until
    ``until(events)`` holds (or fail after ``timeout``)."""
    import json

    events: list[dict] = []
    current: dict = {}
    deadline = time.monotonic() + timeout
    for line in lines:
        if time.monotonic() > deadline:
            break
        if line.startswith(":"):
            continue
        if not line:
            if current:
                events.append(current)
                current = {}
                if until(events):
                    return events
            continue
        name, _, value = line.partition(": ")
        current[name] = json.loads(value) if name == "data" else value
    raise AssertionError(f"the event stream did not deliver in {timeout}s; got {events}")


@contextmanager
def api_for_database(
    request, redis_url: str, tmp: Path, *, worker: bool = True, overrides: dict | None = None, **options
) -> Iterator[Server]:
    """:func:`running_api` (with ``options``) on a fresh namespace and database of the kind
    ``request.param`` (``sqlite`` or ``postgresql``: a schema of its own, dropped afterwards);
    ``overrides`` are settings."""
    import uuid

    import redis
    from conftest import _postgres_schema_url

    from storage import create_db_engine, upgrade

    namespace = f"tftest-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        urls = iter([f"sqlite:///{tmp / 'tradeflow.db'}"])
    else:
        urls = _postgres_schema_url(request.getfixturevalue("postgres_admin_url"))
    database_url = next(urls)
    try:
        engine = create_db_engine(database_url)
        upgrade(engine)
        engine.dispose()
        settings = Settings(
            **{
                "redis_url": redis_url,
                "namespace": namespace,
                "database_url": database_url,
                "delta_root": tmp / "delta",
                "api_max_payload_bytes": 4096,
                "min_backoff_ms": 10,
                "max_backoff_ms": 50,
                **(overrides or {}),
            }
        )
        with running_api(settings, tmp, worker=worker, **options) as running:
            yield running
    finally:
        next(urls, None)  # drops the PostgreSQL schema
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
