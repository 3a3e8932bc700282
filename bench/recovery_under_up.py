"""Recovery after an observed death, with the default settings, under ``tradeflow up`` alone.

Two figures (docs/jobs.md states them), each in a namespace of its own:

* restart: a worker process of ``up`` running a long job is killed with SIGKILL; seconds
  from the kill to the job's next start (target: 10 s).  ``up`` sees the death, requeues the
  process's messages at once and starts the worker again; no heartbeat timeout is involved.
* quarantine: a poison message (it kills its worker) is sent; seconds until it is in the
  dead letters after ``max_deliveries`` (3) crashes (target: 30 s).

Defaults: heartbeat timeout 60 s, recovery pass 15 s, three deliveries; one worker process
of one thread; SQLite in a temporary folder.  Usage:
``python bench/recovery_under_up.py [REDIS_URL] [--rounds N] [--smoke]``.  ``--smoke``: one round,
one delivery before the dead letters (one crash instead of three), no wait for ``up`` to boot
before the poison message; its figures mean little.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
from dramatiq.message import Message

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from actors.middleware import list_dead_letters, worker_processes  # noqa: E402
from actors.runtime import audit_writer_of, build_broker  # noqa: E402
from actors.settings import Settings  # noqa: E402
from api.stack import STOP_TIMEOUT  # noqa: E402
from bench import harness  # noqa: E402

#: Seconds ``up`` gets to stop: more than it gives its worker masters before killing their
#: groups, which are not in its own (killed sooner, it would leave them running).
UP_STOP_TIMEOUT = STOP_TIMEOUT + 15


@dataclass(frozen=True)
class Timing:
    """How each round runs: :data:`FULL` and :data:`SMOKE`.

    Parameters:
      limit: longest wait for either figure, in seconds.
      job: seconds the killed job runs; once restarted, ``up``'s stop waits for it to finish.
      boot: seconds ``up`` and its worker get to boot before the poison message is sent.
      max_deliveries: the quarantine's ``max_deliveries`` (the restart keeps the default: with
        one delivery, the killed job would be dead-lettered instead of restarted).
    """

    limit: float = 180.0
    job: float = 600.0
    boot: float = 5.0
    max_deliveries: int = Settings.model_fields["max_deliveries"].default


#: The benchmark; ``--smoke``: one crash to the dead letters, to check the bench runs.
FULL = Timing()
SMOKE = Timing(limit=60.0, job=3.0, boot=0.0, max_deliveries=1)


def _env(settings: Settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADEFLOW_")}
    env.update({f"TRADEFLOW_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None})
    env.update(PYTHONPATH=str(REPO_ROOT), TRADEFLOW_WORKER_PROCESSES="1", TRADEFLOW_WORKER_THREADS="1")
    return env


def _up(settings: Settings) -> subprocess.Popen:
    """``tradeflow up`` with one worker process, leading a process group of its own."""
    command = [
        str(Path(sys.executable).with_name("tradeflow")),
        "up",
        "tests.jobs_actors",
        "--no-scheduler",
        "--no-api",
    ]
    return harness.start(
        command, env=_env(settings), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait(predicate, what: str, timing: Timing) -> float:
    deadline = time.monotonic() + timing.limit
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timing.limit:.0f}s")
        time.sleep(0.05)
    return time.monotonic()


def restart_after_kill(settings: Settings, timing: Timing) -> float:
    """Seconds from the SIGKILL of the worker process running a job to the job's next start."""
    producer = build_broker(settings)
    client, key = producer.client, f"{settings.namespace}:marks"
    up = _up(settings)
    try:
        producer.enqueue(
            Message(queue_name="idle", actor_name="slow", args=(key, timing.job), kwargs={}, options={})
        )
        _wait(lambda: client.llen(f"{key}:starts") >= 1, "first start", timing)
        master = int(next(p for p in _children(up.pid)))
        [pid] = worker_processes(producer, master_pid=master)
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        _wait(lambda: client.llen(f"{key}:starts") >= 2, "restart", timing)
        return float(client.lindex(f"{key}:starts", 1)) - killed
    finally:
        harness.finish(up, timeout=UP_STOP_TIMEOUT)
        audit_writer_of(producer).close(5)


def quarantine(settings: Settings, timing: Timing) -> float:
    """Seconds from sending a poison message to its dead letter."""
    producer = build_broker(settings)
    key = f"{settings.namespace}:marks"
    up = _up(settings)
    try:
        time.sleep(timing.boot)  # up and its worker booted: the figure counts the crashes, not the first boot
        sent = time.monotonic()
        producer.enqueue(
            Message(queue_name="crashing", actor_name="crash", args=(key,), kwargs={}, options={})
        )
        return _wait(lambda: list_dead_letters(producer), "dead letter", timing) - sent
    finally:
        harness.finish(up, timeout=UP_STOP_TIMEOUT)
        audit_writer_of(producer).close(5)


def _send(producer, queue: str, actor: str, *args) -> None:
    producer.enqueue(Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}))


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("redis_url", nargs="?", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--rounds", type=int, default=3)
    options = harness.parse(parser)
    timing = FULL
    if options.smoke:
        timing, options.rounds = SMOKE, 1
    restarts, quarantines = [], []
    with harness.supervised(), tempfile.TemporaryDirectory() as folder:
        for round_ in range(options.rounds):
            for figure, results in ((restart_after_kill, restarts), (quarantine, quarantines)):
                settings = Settings(
                    redis_url=options.redis_url,
                    namespace=f"bench-up-{uuid.uuid4().hex[:8]}",
                    database_url=f"sqlite:///{folder}/{figure.__name__}-{round_}.db",
                    **({"max_deliveries": timing.max_deliveries} if figure is quarantine else {}),
                )
                try:
                    results.append(figure(settings, timing))
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
        f"poison message to the dead letters ({timing.max_deliveries} crashes): "
        f"median {statistics.median(quarantines):.1f} s, max {max(quarantines):.1f} s (target 30 s)"
    )
    for name, results in (("restart", restarts), ("quarantine", quarantines)):
        harness.figure(f"{name}.median_s", statistics.median(results), "s")
        harness.figure(f"{name}.max_s", max(results), "s")
    harness.figure("quarantine.deliveries", timing.max_deliveries)


if __name__ == "__main__":
    main()
