"""Actors and roles of the multi-host test (tests/test_multihost.py), each on its own host.

* worker hosts: ``dramatiq actors tests.multihost_actors -Q multihost``;
* scheduler host: ``python tests/multihost_actors.py schedule SECONDS`` (a fast clock: one
  virtual minute per real second, ``mh_tick`` every minute);
* producer host: ``python tests/multihost_actors.py produce FOLDER``: sends the mixed load,
  asks for the cut (``FOLDER/cut-now``), waits for it (``FOLDER/cut-done``), sends more,
  waits until everything ran and writes what it found to ``FOLDER/result.json``.

Every run of an actor records its effect in Redis: ``SADD <ns>:mh:<kind> <key>`` (what ran)
and ``HINCRBY <ns>:mh:runs <kind>:<key> 1`` (how often).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pendulum
from dramatiq.middleware import CurrentMessage

import actors
from actors.middleware import WORKERS_KEY
from actors.scheduling import every_minutes

#: Queue of every actor here.
QUEUE = "multihost"

#: Plain jobs sent before the cut and after it.
JOBS_BEFORE, JOBS_AFTER = 40, 20

#: Workflows: fan-out width; how many succeed, how many fail at the fan-in and compensate.
WIDTH, GOOD_RUNS, BAD_RUNS = 4, 3, 2


def _effect(kind: str, key: str) -> None:
    client, namespace = actors.current_broker.client, actors.current_broker.namespace
    with client.pipeline(transaction=False) as pipe:
        pipe.sadd(f"{namespace}:mh:{kind}", key)
        pipe.hincrby(f"{namespace}:mh:runs", f"{kind}:{key}", 1)
        pipe.hset(f"{namespace}:mh:host", f"{kind}:{key}", socket.gethostname())
        pipe.execute()


@dramatiq.actor(queue_name=QUEUE, max_retries=10, min_backoff=100, max_backoff=500)
def mh_job(key: str) -> None:
    time.sleep(0.3)  # long enough that a worker holds some when its link goes down
    _effect("job", key)


@dramatiq.actor(queue_name=QUEUE, max_retries=10, min_backoff=100, max_backoff=500)
def mh_step(key: str) -> str:
    time.sleep(0.1)
    _effect("step", key)
    return key


@dramatiq.actor(queue_name=QUEUE, max_retries=10, min_backoff=100, max_backoff=500)
def mh_join(run: str, results: list) -> int:
    _effect("join", run)
    return len(results)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def mh_refuse(run: str, results: list) -> None:
    raise RuntimeError(f"fan-in of {run} refuses: its steps are compensated")


@dramatiq.actor(queue_name=QUEUE, max_retries=10, min_backoff=100, max_backoff=500)
def mh_undo(key: str, result: str | None = None) -> None:
    _effect("undo", key)


@every_minutes(1, queue_name=QUEUE)
def mh_tick() -> None:
    _effect("tick", CurrentMessage.get_current_message().message_id)


def _workflow(name: str, run: str, *, good: bool):
    from saga import Step, Workflow

    steps = [Step(f"s{i}", "mh_step", args=(f"{run}-{i}",), compensate_with="mh_undo") for i in range(WIDTH)]
    fan_in = "mh_join" if good else "mh_refuse"
    steps.append(
        Step(
            "fan_in",
            fan_in,
            args=(run,),
            depends_on=[s.name for s in steps],
            pipe_from=tuple(s.name for s in steps),
        )
    )
    return Workflow(name, steps)


def schedule(seconds: float) -> None:
    from jobs_support import FastClock

    from actors.scheduling import Scheduler

    # virtual time from now on, 60 times faster: ticks are never late (periodiq skips late ones)
    clock = FastClock(pendulum.now("UTC"), time.time(), speed=60.0)
    scheduler = Scheduler([mh_tick], clock=clock)
    threading.Timer(seconds, scheduler.stop).start()
    scheduler.run_forever()


def _wait_for(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
    return path.read_text()


def produce(folder: Path) -> None:
    from saga import engine_of
    from storage import create_db_engine

    client, namespace = actors.current_broker.client, actors.current_broker.namespace
    priorities = ["critical", "high", "normal", "low"]
    hosts_seen: set[str] = set()

    def live_hosts() -> set[str]:
        members = client.zrangebyscore(f"{namespace}:{WORKERS_KEY}", time.time() - 10, "+inf")
        return {member.decode().split(":")[0] for member in members}

    deadline = time.monotonic() + 60
    while len(hosts_seen := live_hosts()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    engine = engine_of(actors.current_broker)
    jobs = []
    for index in range(JOBS_BEFORE):
        key = f"before-{index}"
        message = mh_job.send_with_options(args=(key,), priority=priorities[index % 4])
        jobs.append((key, message.message_id))
    runs = {}
    for index in range(GOOD_RUNS + BAD_RUNS):
        good = index < GOOD_RUNS
        run = f"run{index}"
        runs[run] = (good, engine.start(_workflow("mh_good" if good else "mh_bad", run, good=good)))

    time.sleep(1.0)  # the workers are busy with all of it
    (folder / "cut-now").write_text("")
    cut_at = float(_wait_for(folder / "cut-done", 30))
    # what the cut host held: the ack sets of workers whose heartbeat stopped at the cut
    held = {
        key.decode(): {m.decode() for m in client.smembers(key)}
        for key in client.scan_iter(match=f"{namespace}:__acks__.*")
    }
    time.sleep(1.5)
    beats = dict(client.zrange(f"{namespace}:__heartbeats__", 0, -1, withscores=True))
    stale = {broker.decode() for broker, score in beats.items() if score < cut_at * 1000}
    in_flight = []
    for key, redis_ids in held.items():
        broker_id, queue = key[len(f"{namespace}:__acks__.") :].split(".", 1)
        if broker_id in stale and redis_ids:
            for body in client.hmget(f"{namespace}:{queue}.msgs", list(redis_ids)):
                if body is not None:
                    in_flight.append(json.loads(body)["message_id"])

    for index in range(JOBS_AFTER):
        key = f"after-{index}"
        jobs.append((key, mh_job.send_with_options(args=(key,), priority=priorities[index % 4]).message_id))

    from storage import get_run

    def finished() -> bool:
        done = client.smembers(f"{namespace}:mh:job")
        if len(done) < len(jobs):
            return False
        return all(
            str(get_run(engine.database, run_id).status) in ("succeeded", "compensated")
            for _, run_id in runs.values()
        )

    deadline = time.monotonic() + 90
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.2)
    actors.audit_writer_of(actors.current_broker).flush(10)
    time.sleep(1.0)  # the workers' last audit rows

    from sqlalchemy import text

    database = create_db_engine(actors.current_settings.database_url)
    with database.connect() as connection:
        rows = connection.execute(text("SELECT task_id, status, worker_id, completed_at FROM tasks")).all()
    audit = {
        row.task_id: {
            "status": row.status,
            "worker": row.worker_id,
            "completed_at": row.completed_at.replace(tzinfo=UTC).timestamp() if row.completed_at else None,
        }
        for row in rows
    }
    result = {
        "hosts_at_start": sorted(hosts_seen),
        "jobs": jobs,
        "done": sorted(m.decode() for m in client.smembers(f"{namespace}:mh:job")),
        "runs_of": {k.decode(): int(v) for k, v in client.hgetall(f"{namespace}:mh:runs").items()},
        "host_of": {k.decode(): v.decode() for k, v in client.hgetall(f"{namespace}:mh:host").items()},
        "workflows": {
            run: {"good": good, "status": str(get_run(engine.database, run_id).status)}
            for run, (good, run_id) in runs.items()
        },
        "undo": sorted(m.decode() for m in client.smembers(f"{namespace}:mh:undo")),
        "shape": [GOOD_RUNS, BAD_RUNS, WIDTH],
        "ticks": client.scard(f"{namespace}:mh:tick"),
        "in_flight_at_cut": in_flight,
        "cut_at": cut_at,
        "audit": audit,
        "now": datetime.now(UTC).timestamp(),
    }
    (folder / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "schedule":
        schedule(float(sys.argv[2]))
    elif role == "produce":
        produce(Path(sys.argv[2]))
    actors.audit_writer_of(actors.current_broker).close(5)
