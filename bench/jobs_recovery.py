"""Recovery time of a SIGKILLed worker's message on an idle queue, with production settings.

Side by side, in separate namespaces and at the same time:

* tradeflow: the defaults (heartbeat 60 s, recovery pass 15 s): bound 80 s;
* dramatiq:  the same stack with our recovery pass switched off, leaving Dramatiq's
             random maintenance (0.1 % of broker calls) to requeue the message.

Each scenario: worker A starts a 10-minute job on queue ``idle``, a survivor worker
B starts, A is killed with SIGKILL, and we wait (up to 300 s) for
the job to start again.  Usage: ``python bench/jobs_recovery.py [REDIS_URL] [--smoke]``
(``--smoke``: heartbeat 2 s, recovery pass 0.5 s, waits of at most 6 s).
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
from dataclasses import dataclass
from pathlib import Path

import redis
from dramatiq.message import Message

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from actors.runtime import build_broker  # noqa: E402
from actors.settings import Settings  # noqa: E402
from bench import harness  # noqa: E402


@dataclass(frozen=True)
class Timing:
    """How long each part of a scenario takes: :data:`FULL` and :data:`SMOKE`.

    Parameters:
      limit: longest wait for the message to come back, in seconds.
      job: seconds the killed worker's job would run.
      survivor_boot: seconds the survivor gets to boot before the kill.
      settings: settings of both sides over the defaults (none: production's).
    """

    limit: float = 300.0
    job: float = 600.0
    survivor_boot: float = 5.0
    settings: tuple[tuple[str, int], ...] = ()


#: The benchmark; ``--smoke``: short timeouts, to check the bench runs (its figures mean little).
FULL = Timing()
SMOKE = Timing(
    limit=6.0,
    job=30.0,
    survivor_boot=1.0,
    settings=(("heartbeat_timeout_ms", 2_000), ("recovery_interval_ms", 500)),
)


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
    return harness.start(
        command, env=env, cwd=REPO_ROOT, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )


def scenario(settings: Settings, timing: Timing) -> float | None:
    """Seconds from the SIGKILL to the message running again (``None``: not within the limit)."""
    env = _env(settings)
    client = redis.Redis.from_url(settings.effective_redis_url)
    key = f"{settings.namespace}:marks"
    producer = build_broker(settings)
    first = _worker(env)
    try:
        message = Message(queue_name="idle", actor_name="slow", args=(key, timing.job), kwargs={}, options={})
        producer.enqueue(message)
        while client.llen(f"{key}:starts") < 1:
            time.sleep(0.2)
        survivor = _worker(env)
        try:
            time.sleep(timing.survivor_boot)
            os.killpg(first.pid, signal.SIGKILL)
            killed_at = time.time()
            harness.finish(first)  # reaped
            deadline = time.monotonic() + timing.limit
            while time.monotonic() < deadline:
                if client.llen(f"{key}:starts") >= 2:
                    return float(client.lindex(f"{key}:starts", 1)) - killed_at
                time.sleep(0.5)
            return None
        finally:
            harness.finish(survivor)
    finally:
        harness.finish(first)
        producer.close()
        for found in client.scan_iter(match=f"{settings.namespace}*"):
            client.delete(found)


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("redis_url", nargs="?", default="redis://127.0.0.1:6379/15")
    args = harness.parse(parser)
    timing = SMOKE if args.smoke else FULL
    database = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    from storage import create_db_engine, upgrade

    upgrade(create_db_engine(database))
    common = {"redis_url": args.redis_url, "database_url": database, **dict(timing.settings)}
    sides = {
        "tradeflow": Settings(namespace=f"bench-{uuid.uuid4().hex[:8]}", **common),
        "dramatiq": Settings(
            namespace=f"bench-{uuid.uuid4().hex[:8]}", **common | {"recovery_interval_ms": 10**9}
        ),
    }
    results: dict[str, float | BaseException | None] = {}

    def run(name: str) -> None:
        try:
            results[name] = scenario(sides[name], timing)
        except BaseException as error:  # re-raised in the main thread
            results[name] = error

    # Daemon threads: an interrupted bench stops their workers and exits without waiting for them.
    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in sides]
    with harness.supervised():
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # in short waits, so that a signal is seen
    for name, seconds in results.items():
        if isinstance(seconds, BaseException):
            raise SystemExit(f"{name}: the scenario failed") from seconds
        shown = f"{seconds:.1f} s" if seconds is not None else f"not recovered within {timing.limit:.0f} s"
        print(f"{name:10s} message running again {shown} after SIGKILL")
        harness.figure(f"{name}.recovered", seconds is not None)
        harness.figure(
            f"{name}.recovery_s",
            seconds if seconds is not None else timing.limit,
            "s" if seconds is not None else "s (at least: not recovered)",
        )


if __name__ == "__main__":
    main()
