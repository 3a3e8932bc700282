"""Rate and concurrency limits shared by every worker process, kept in Redis.

A limit applies to an actor (``"fetch_history"``) or to every actor of a
queue (``"queue:ib_positions"``): at most ``rate`` starts in any ``per_ms``
window (a sliding window, e.g. IB's 60 historical-data requests per 10
minutes), and at most ``concurrency`` messages running at once, over all
workers.  A message over its limit waits in its worker thread before it
starts (before the time limit and the audit's ``running``) until the limit
lets it, up to ``max_wait_ms``; then it fails with :class:`RateLimited` and
is retried with back-off like any failure.

Redis keys: ``<ns>:limit:<key>:starts`` (sorted set of start times) and
``<ns>:limit:<key>:running`` (sorted set of holders by expiry).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Broker, Middleware
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .audit import worker_id

#: Seconds between two attempts of a waiting message at most.
MAX_POLL = 0.25

#: Milliseconds a concurrency slot is kept after its holder vanished (killed worker).
SLOT_TTL_MS = 600_000

# KEYS: starts, running.  ARGV: now_ms, rate, per_ms, concurrency, holder, slot_ttl_ms.
# Returns 0 when taken, else the milliseconds to wait before trying again.
_ACQUIRE = """
local starts, running = KEYS[1], KEYS[2]
local now, rate, per, concurrency = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if concurrency > 0 then
    redis.call("zremrangebyscore", running, "-inf", now)
    if redis.call("zcard", running) >= concurrency then
        return 50
    end
end
if rate > 0 then
    redis.call("zremrangebyscore", starts, "-inf", now - per)
    if redis.call("zcard", starts) >= rate then
        local oldest = redis.call("zrange", starts, 0, 0, "withscores")
        return math.max(1, tonumber(oldest[2]) + per - now)
    end
    redis.call("zadd", starts, now, ARGV[5] .. ":" .. now)
    redis.call("pexpire", starts, per)
end
if concurrency > 0 then
    redis.call("zadd", running, now + tonumber(ARGV[6]), ARGV[5])
    redis.call("pexpire", running, tonumber(ARGV[6]))
end
return 0
"""


class RateLimited(Exception):
    """A message waited longer than ``max_wait_ms`` for its limit (it is retried)."""


@dataclass(frozen=True)
class Limit:
    """One limit.

    Parameters:
      key(str): An actor name, or ``queue:<name>`` for every actor of a queue.
      rate(int): Starts allowed per window; 0: no rate limit.
      per_ms(int): The window, in milliseconds.  Defaults to 1000.
      concurrency(int): Messages running at once over all workers; 0: no limit.
    """

    key: str
    rate: int = 0
    per_ms: int = 1_000
    concurrency: int = 0

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any]) -> Limit:
        unknown = set(spec) - {"rate", "per_ms", "concurrency"}
        if unknown:
            raise ValueError(f"{key}: unknown fields {sorted(unknown)}; use rate, per_ms, concurrency")
        limit = cls(key=key, **{name: int(value) for name, value in spec.items()})
        if (
            limit.rate < 0
            or limit.concurrency < 0
            or limit.per_ms <= 0
            or not (limit.rate or limit.concurrency)
        ):
            raise ValueError(f"{key}: give rate (> 0, per per_ms > 0 ms) and/or concurrency (> 0)")
        return limit

    def describe(self) -> str:
        parts = [f"{self.rate} per {self.per_ms / 1000:g}s"] if self.rate else []
        return ", ".join(parts + ([f"{self.concurrency} at once"] if self.concurrency else []))


def limit_keys(namespace: str, key: str) -> list[str]:
    return [f"{namespace}:limit:{key}:starts", f"{namespace}:limit:{key}:running"]


def limit_usage(client: redis.Redis, namespace: str, limit: Limit) -> dict[str, int]:
    """Starts in the current window and messages running now under ``limit``."""
    now = time.time() * 1000
    starts, running = limit_keys(namespace, limit.key)
    return {
        "starts": int(client.zcount(starts, now - limit.per_ms, "+inf")) if limit.rate else 0,
        "running": int(client.zcount(running, now, "+inf")) if limit.concurrency else 0,
    }


class RateLimits(Middleware):
    """Holds each message back until its actor's and queue's limits let it start.

    Parameters:
      limits(dict): Key (actor name or ``queue:<name>``) -> ``{"rate", "per_ms", "concurrency"}``.
      max_wait_ms(int): Longest wait of a message in its worker thread.  Defaults to 60 s.
    """

    def __init__(self, *, limits: dict[str, dict[str, Any]], max_wait_ms: int = 60_000) -> None:
        self.logger = get_logger(__name__, type(self))
        self.limits = {key: Limit.parse(key, spec) for key, spec in limits.items()}
        self.max_wait_ms = max_wait_ms
        self._script = None
        self._held: dict[str, list[Limit]] = {}

    def limits_of(self, message: Message) -> list[Limit]:
        queue = f"queue:{q_name(message.queue_name)}"
        found = (self.limits.get(message.actor_name), self.limits.get(queue))
        return [limit for limit in found if limit is not None]

    def before_process_message(self, broker: Broker, message: Message) -> None:
        limits = self.limits_of(message)
        if not limits:
            return
        holder = f"{worker_id()}:{message.message_id}"
        taken: list[Limit] = []
        deadline = time.monotonic() + self.max_wait_ms / 1000
        try:
            for limit in limits:
                self._acquire(broker, limit, holder, deadline)
                taken.append(limit)
        except BaseException:
            self._release(broker, taken, holder)
            raise
        self._held[message.message_id] = taken

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        taken = self._held.pop(message.message_id, None)
        if taken:
            self._release(broker, taken, f"{worker_id()}:{message.message_id}")

    after_skip_message = after_process_message

    def _acquire(self, broker: Broker, limit: Limit, holder: str, deadline: float) -> None:
        if self._script is None:
            self._script = broker.client.register_script(_ACQUIRE)
        keys = limit_keys(broker.namespace, limit.key)
        while True:
            now_ms = int(time.time() * 1000)
            args = [now_ms, limit.rate, limit.per_ms, limit.concurrency, holder, SLOT_TTL_MS]
            wait_ms = int(self._script(keys=keys, args=args))
            if wait_ms == 0:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise RateLimited(
                    f"waited {self.max_wait_ms / 1000:g}s for limit {limit.key!r} ({limit.describe()})"
                )
            # a little jitter: waiting workers do not all try again at the same instant
            time.sleep(min(wait_ms / 1000 * random.uniform(1.0, 1.2), MAX_POLL, left))

    def _release(self, broker: Broker, limits: list[Limit], holder: str) -> None:
        for limit in limits:
            if limit.concurrency:
                try:
                    broker.client.zrem(limit_keys(broker.namespace, limit.key)[1], holder)
                except redis.RedisError as exc:  # the slot expires on its own
                    self.logger.warning("Could not release %s of limit %r: %s", holder, limit.key, exc)
