"""Recovery time of a SIGKILLed worker's message on an idle queue, with production settings.

Side by side, in separate namespaces and at the same time:

* tradeflow: the defaults (heartbeat 60 s, recovery pass 15 s): bound 80 s;
* dramatiq:  the same stack with our recovery pass switched off, leaving Dramatiq's
             random maintenance (0.1 % of broker calls) to requeue the message.

Each scenario: worker A starts a 10-minute job on queue ``idle``, a survivor worker
B starts, A is killed with SIGKILL, and we wait (up to ``LIMIT`` seconds) for
the job to start again.  Usage: ``python bench/jobs_recovery.py [REDIS_URL]``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis
from dramatiq.message import Message

from actors.runtime import build_broker
from actors.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Longest wait for the message to come back, in seconds.
LIMIT = 300


def _env(settings: Settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADEFLOW_")}
    env.update({f"TRADEFLOW_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None})
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _worker(env: dict[str, str]) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "actors",
        "tests.jobs_actors",
        "-p",
        "1",
        "-t",
        "1",
        "-Q",
        "idle",
    ]
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def scenario(settings: Settings, results: dict[str, float | None], name: str) -> None:
    env = _env(settings)
    client = redis.Redis.from_url(settings.effective_redis_url)
    key = f"{settings.namespace}:marks"
    producer = build_broker(settings)
    first = _worker(env)
    producer.enqueue(Message(queue_name="idle", actor_name="slow", args=(key, 600.0), kwargs={}, options={}))
    while client.llen(f"{key}:starts") < 1:
        time.sleep(0.2)
    survivor = _worker(env)
    time.sleep(5)
    os.killpg(first.pid, signal.SIGKILL)
    killed_at = time.time()
    deadline = time.monotonic() + LIMIT
    results[name] = None
    while time.monotonic() < deadline:
        if client.llen(f"{key}:starts") >= 2:
            results[name] = float(client.lindex(f"{key}:starts", 1)) - killed_at
            break
        time.sleep(0.5)
    os.killpg(survivor.pid, signal.SIGKILL)
    for found in client.scan_iter(match=f"{settings.namespace}*"):
        client.delete(found)


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/15"
    database = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    from storage import create_db_engine, upgrade

    upgrade(create_db_engine(database))
    common = {"redis_url": url, "database_url": database}
    tradeflow = Settings(namespace=f"bench-{uuid.uuid4().hex[:8]}", **common)
    dramatiq_only = Settings(namespace=f"bench-{uuid.uuid4().hex[:8]}", recovery_interval_ms=10**9, **common)
    results: dict[str, float | None] = {}
    threads = [
        threading.Thread(target=scenario, args=(tradeflow, results, "tradeflow")),
        threading.Thread(target=scenario, args=(dramatiq_only, results, "dramatiq")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, seconds in results.items():
        shown = f"{seconds:.1f} s" if seconds is not None else f"not recovered within {LIMIT} s"
        print(f"{name:10s} message running again {shown} after SIGKILL")


if __name__ == "__main__":
    main()
