"""Per-key concurrency limits held as expiring Redis leases, so a dead holder never leaks a slot."""

from __future__ import annotations

import time

from dramatiq.logging import get_logger

#: Takes a slot of KEYS[1] for ARGV[1] until ARGV[3] (ms) if fewer than ARGV[2] live holders.
_ACQUIRE = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[4])
if redis.call('zscore', KEYS[1], ARGV[1]) or redis.call('zcard', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('zadd', KEYS[1], ARGV[3], ARGV[1])
  redis.call('pexpire', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


class ConcurrencyLimitExceeded(RuntimeError):
    """Every slot of a concurrency key is held by a live run."""


class ConcurrencyLeases:
    """Slots of a concurrency key, as members of a Redis sorted set scored by expiry.

    Parameters:
      client: A Redis client.
      namespace: Prefix of the lease keys.
      ttl_ms: How long a lease lives unless renewed, in milliseconds.
    """

    def __init__(self, client, *, namespace: str, ttl_ms: int) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.namespace = namespace
        self.ttl_ms = ttl_ms
        self._acquire = client.register_script(_ACQUIRE)

    def key(self, name: str) -> str:
        return f"{self.namespace}:saga-lease:{name}"

    def acquire(self, name: str, holder: str, *, limit: int) -> bool:
        """Take (or renew) a slot of ``name`` for ``holder``; False if all ``limit`` are held."""
        now = int(time.time() * 1000)
        args = [holder, limit, now + self.ttl_ms, now, self.ttl_ms * 2]
        return bool(self._acquire(keys=[self.key(name)], args=args))

    def renew(self, name: str, holder: str) -> None:
        expiry = int(time.time() * 1000) + self.ttl_ms
        self.client.zadd(self.key(name), {holder: expiry}, xx=True)

    def release(self, name: str, holder: str) -> None:
        self.client.zrem(self.key(name), holder)

    def holders(self, name: str) -> list[str]:
        """Live holders of ``name``."""
        now = int(time.time() * 1000)
        return [member.decode() for member in self.client.zrangebyscore(self.key(name), now, "+inf")]
