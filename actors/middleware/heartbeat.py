"""Worker presence in Redis: which worker processes run, on any host, and what each says of itself.

One writer, :class:`~actors.middleware.workers.WorkerRegistry` (every worker process runs it),
calls :func:`beat` every few seconds; every reader goes through :func:`read_workers` (or
:func:`workers_alive` for a count): ``tradeflow workers list``, the API's ``/workers``, the
``task_queue_workers_alive`` gauge and ``tradeflow health``.

Two keys under the namespace: the sorted set :data:`WORKERS_KEY` of ``host:pid`` by last beat,
and beside it the hash ``<key>:info`` of each process's latest record (JSON: queues, broker id,
state, running messages...).  A process that stops leaves both at once; a killed one stays, its
beat ageing, until :data:`FORGET_WORKERS_AFTER`.  Dramatiq's own ``__heartbeats__`` come from
every broker client, producers included; this presence counts only processes running a worker.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

#: Redis sorted set (under the namespace) of worker processes by last heartbeat.
WORKERS_KEY = "__workers__"

#: Seconds after which a silent worker's heartbeat entry is removed.
FORGET_WORKERS_AFTER = 86_400.0

#: Most worker processes :func:`read_workers` returns, the latest beats first.
READ_LIMIT = 1_000


@dataclass(frozen=True)
class WorkerPresence:
    """One worker process as its last beat left it.

    Parameters:
      id(str): ``host:pid``.
      beat_at(float): Epoch seconds of its last beat.
      record(dict): What it said of itself then (empty if nothing).
    """

    id: str
    beat_at: float
    record: dict[str, Any] = field(default_factory=dict)


def workers_key(namespace: str) -> str:
    return f"{namespace}:{WORKERS_KEY}"


def info_key(workers_key: str) -> str:
    """The hash of the workers' records beside the sorted set ``workers_key``."""
    return f"{workers_key}:info"


def beat(client: redis.Redis, namespace: str, worker: str, record: dict[str, Any]) -> None:
    """``worker`` is alive now and says ``record`` of itself; workers silent for a day are forgotten."""
    key, now = workers_key(namespace), time.time()
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {worker: now})
        pipe.hset(info_key(key), worker, json.dumps(record))
        pipe.zremrangebyscore(key, 0, now - FORGET_WORKERS_AFTER)  # killed long ago
        for each in (key, info_key(key)):  # the whole set, once nobody beats
            pipe.expire(each, int(FORGET_WORKERS_AFTER))
        pipe.execute()


def leave(client: redis.Redis, namespace: str, worker: str) -> None:
    """``worker`` stopped: it is gone from every reader at once."""
    key = workers_key(namespace)
    with client.pipeline(transaction=False) as pipe:
        pipe.zrem(key, worker)
        pipe.hdel(info_key(key), worker)
        pipe.execute()


def read_workers(client: redis.Redis, namespace: str, *, within: float | None = None) -> list[WorkerPresence]:
    """The worker processes that beat in the last ``within`` seconds (by default every one not yet
    forgotten, killed ones included), the latest beat first, at most :data:`READ_LIMIT`."""
    key = workers_key(namespace)
    low = "-inf" if within is None else time.time() - within
    beats = client.zrevrangebyscore(key, "+inf", low, start=0, num=READ_LIMIT, withscores=True)
    if not beats:
        return []
    records = client.hmget(info_key(key), [member for member, _ in beats])
    return [
        WorkerPresence(id=member.decode(), beat_at=beat_at, record=json.loads(raw) if raw else {})
        for (member, beat_at), raw in zip(beats, records, strict=True)
    ]


def workers_alive(client: redis.Redis, namespace: str, *, timeout: float) -> int:
    """How many worker processes beat in the last ``timeout`` seconds (a count: no record is read)."""
    return int(client.zcount(workers_key(namespace), time.time() - timeout, "+inf"))
