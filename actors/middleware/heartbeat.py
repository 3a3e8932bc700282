"""Heartbeats of worker processes in Redis: who is consuming, on any host."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import redis
from dramatiq.logging import get_logger

from .audit import worker_id

#: Redis sorted set (under the namespace) of worker processes by last heartbeat.
WORKERS_KEY = "__workers__"

#: Seconds between two heartbeats of a worker process.
HEARTBEAT_INTERVAL = 5.0

#: Seconds after which a silent worker's heartbeat entry is removed.
FORGET_WORKERS_AFTER = 86_400.0


class WorkerHeartbeat:
    """Records ``host:pid`` with the time in a Redis sorted set every ``interval`` seconds.

    Dramatiq's own heartbeats come from every broker client, producers
    included; this one counts only processes running a worker.

    Parameters:
      client(redis.Redis): Where to write.
      key(str): The sorted set.
      interval(float): Seconds between beats.  Defaults to :data:`HEARTBEAT_INTERVAL`.
      details(dict): What the process says about itself (its queues, its broker id), kept as
        JSON in the hash ``<key>:info`` under ``host:pid`` while it beats.  Defaults to None.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        key: str,
        interval: float = HEARTBEAT_INTERVAL,
        details: dict | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.key = key
        self.details = json.dumps(details) if details else None
        self.interval = interval
        self.member = worker_id()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tradeflow-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(self.interval)
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(self.key, self.member)
            self.client.hdel(info_key(self.key), self.member)

    def _run(self) -> None:
        while not self._stopped.is_set():
            now = time.time()
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.zadd(self.key, {self.member: now})
                    if self.details is not None:
                        pipe.hset(info_key(self.key), self.member, self.details)
                        pipe.expire(info_key(self.key), int(FORGET_WORKERS_AFTER))
                    pipe.zremrangebyscore(self.key, 0, now - FORGET_WORKERS_AFTER)  # killed long ago
                    pipe.expire(self.key, int(FORGET_WORKERS_AFTER))  # the whole set, once nobody beats
                    pipe.execute()
            except redis.RedisError as exc:
                self.logger.warning("Heartbeat not recorded (%s); retrying in %.0fs.", exc, self.interval)
            self._stopped.wait(self.interval)


def info_key(workers_key: str) -> str:
    """The hash of the workers' self-descriptions beside the sorted set ``workers_key``."""
    return f"{workers_key}:info"


def worker_details(client: redis.Redis, namespace: str) -> dict[str, dict]:
    """``host:pid`` -> what each beating worker process said about itself (queues, broker id)."""
    raw = client.hgetall(info_key(f"{namespace}:{WORKERS_KEY}"))
    return {member.decode(): json.loads(value) for member, value in raw.items()}


def workers_alive(client: redis.Redis, namespace: str, *, timeout: float) -> int:
    """How many worker processes beat in the last ``timeout`` seconds."""
    return int(client.zcount(f"{namespace}:{WORKERS_KEY}", time.time() - timeout, "+inf"))
