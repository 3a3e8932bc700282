"""Recovery after an observed death, with the default settings, under ``tradeflow up`` alone.

Two figures (docs/jobs.md states them), each in a namespace of its own:

* restart: a worker process of ``up`` running a long job is killed with SIGKILL; seconds
  from the kill to the job's next start (target: 10 s).  ``up`` sees the death, requeues the
  process's messages at once and starts the worker again; no heartbeat timeout is involved.
* quarantine: a poison message (it kills its worker) is sent; seconds until it is in the
  dead letters after ``max_deliveries`` (3) crashes (target: 30 s).

Defaults: heartbeat timeout 60 s, recovery pass 15 s, three deliveries; one worker process
of one thread; SQLite in a temporary folder.  Usage:
``python bench/recovery_under_up.py [REDIS_URL] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from dramatiq.message import Message

from actors.middleware import list_dead_letters, worker_processes
from actors.runtime import audit_writer_of, build_broker
from actors.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Longest wait for either figure, in seconds.
LIMIT = 180


def _env(settings: Settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADEFLOW_")}
    env.update({f"TRADEFLOW_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None})
    env.update(PYTHONPATH=str(REPO_ROOT), TRADEFLOW_WORKER_PROCESSES="1", TRADEFLOW_WORKER_THREADS="1")
    return env


def _up(settings: Settings) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).with_name("tradeflow")),
        "up",
        "tests.jobs_actors",
        "--no-scheduler",
        "--no-api",
    ]
    return subprocess.Popen(
        command,
        env=_env(settings),
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(up: subprocess.Popen) -> None:
    up.send_signal(signal.SIGTERM)
    try:
        up.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()


def _wait(predicate, what: str) -> float:
    deadline = time.monotonic() + LIMIT
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {LIMIT}s")
        time.sleep(0.05)
    return time.monotonic()


def restart_after_kill(settings: Settings) -> float:
    """Seconds from the SIGKILL of the worker process running a job to the job's next start."""
    producer = build_broker(settings)
    client, key = producer.client, f"{settings.namespace}:marks"
    up = _up(settings)
    try:
        producer.enqueue(
            Message(queue_name="idle", actor_name="slow", args=(key, 600.0), kwargs={}, options={})
        )
        _wait(lambda: client.llen(f"{key}:starts") >= 1, "first start")
        master = int(next(p for p in _children(up.pid)))
        [pid] = worker_processes(producer, master_pid=master)
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        _wait(lambda: client.llen(f"{key}:starts") >= 2, "restart")
        return float(client.lindex(f"{key}:starts", 1)) - killed
    finally:
        _stop(up)
        audit_writer_of(producer).close(5)


def quarantine(settings: Settings) -> float:
    """Seconds from sending a poison message to its dead letter."""
    producer = build_broker(settings)
    key = f"{settings.namespace}:marks"
    up = _up(settings)
    try:
        time.sleep(5)  # up and its worker booted: the figure counts the crashes, not the first boot
        sent = time.monotonic()
        producer.enqueue(
            Message(queue_name="crashing", actor_name="crash", args=(key,), kwargs={}, options={})
        )
        return _wait(lambda: list_dead_letters(producer), "dead letter") - sent
    finally:
        _stop(up)
        audit_writer_of(producer).close(5)


def _send(producer, queue: str, actor: str, *args) -> None:
    producer.enqueue(Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}))


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("redis_url", nargs="?", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    restarts, quarantines = [], []
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(options.rounds):
            for figure, results in ((restart_after_kill, restarts), (quarantine, quarantines)):
                settings = Settings(
                    redis_url=options.redis_url,
                    namespace=f"bench-up-{uuid.uuid4().hex[:8]}",
                    database_url=f"sqlite:///{folder}/{figure.__name__}-{round_}.db",
                )
                try:
                    results.append(figure(settings))
                finally:
                    client = redis.Redis.from_url(options.redis_url)
                    for key in client.scan_iter(match=f"{settings.namespace}*", count=1000):
                        client.delete(key)
                print(f"round {round_ + 1}: {figure.__name__} {results[-1]:.1f} s", flush=True)
    print(
        f"observed death, kill to restart: median {statistics.median(restarts):.1f} s, "
        f"max {max(restarts):.1f} s (target 10 s)"
    )
    print(
        f"poison message to the dead letters (3 crashes): median {statistics.median(quarantines):.1f} s, "
        f"max {max(quarantines):.1f} s (target 30 s)"
    )


if __name__ == "__main__":
    main()
