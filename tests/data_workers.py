"""Real dramatiq worker processes for the data and analysis tests, and a client that calls them by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dramatiq
from conftest import REPO_ROOT, settings_env
from dramatiq.results import Results, ResultTimeout

from actors.runtime import build_broker
from actors.settings import Settings
from storage import create_db_engine, upgrade

#: Milliseconds to wait for one result (a cold worker imports pandas and deltalake first).
RESULT_TIMEOUT_MS = 60_000
#: One blocking wait for a result, in milliseconds (under redis-py's 5 s socket timeout).
WAIT_STEP_MS = 3_000


def data_settings(redis_url: str, namespace: str, tmp_path: Path, **overrides) -> Settings:
    """Settings on a migrated SQLite file, Delta tables under ``tmp_path``, a small synthetic universe."""
    database_url = f"sqlite:///{tmp_path / 'tradeflow.db'}"
    engine = create_db_engine(database_url)
    upgrade(engine)
    engine.dispose()
    defaults = {"data_synthetic_seed": 5, "data_synthetic_symbols": "AAPL,MSFT,GOOG"}
    return Settings(
        redis_url=redis_url,
        namespace=namespace,
        database_url=database_url,
        delta_root=tmp_path / "delta",
        **{**defaults, **overrides},
    )


@contextmanager
def worker(settings: Settings, *queues: str) -> Iterator[subprocess.Popen]:
    """``dramatiq actors`` (1 process, 2 threads) on ``queues``; must exit cleanly on SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "2", "-Q", *queues],
        env=settings_env(settings),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so a test can kill -9 master and worker at once
    )
    try:
        yield process
    finally:
        killed = process.poll() is not None  # by the test (kill_hard)
        if not killed:
            process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    # A clean exit also proves the reads did not trip delta-rs #2184 (SIGABRT at exit).
    assert killed or process.returncode == 0, stderr.decode()[-3000:]


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL the worker's whole process group, as a crash or OOM kill would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


class Client:
    """Sends messages by actor name, as another service would, and waits for their results."""

    def __init__(self, settings: Settings, queue: str):
        self.queue = queue
        self.broker = build_broker(settings.model_copy(update={"audit_enabled": False}))
        self.broker.declare_queue(queue)
        self.backend = next(m for m in self.broker.middleware if isinstance(m, Results)).backend

    def send(self, actor_name: str, *args, **kwargs) -> dramatiq.Message:
        message = dramatiq.Message(
            queue_name=self.queue, actor_name=actor_name, args=args, kwargs=kwargs, options={}
        )
        return self.broker.enqueue(message)

    def call(self, actor_name: str, *args, **kwargs):
        return self.result(self.send(actor_name, *args, **kwargs))

    def result(self, message: dramatiq.Message):
        # Short blocking waits: redis-py's default 5 s socket timeout cuts a longer BRPOPLPUSH.
        deadline = time.monotonic() + RESULT_TIMEOUT_MS / 1000
        while True:
            try:
                return self.backend.get_result(message, block=True, timeout=WAIT_STEP_MS)
            except ResultTimeout:
                if time.monotonic() > deadline:
                    raise
