"""Every Redis client tradeflow makes, built from one kind of URL, and which Redis a queue lives on.

Three URL forms name a Redis deployment:

* ``redis://[:password@]host:port/db`` (``rediss://`` with TLS, ``unix:///path``): one server.
* ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the primary that
  Redis Sentinel currently names for ``service``, asked of the listed sentinels.  A client
  built from it finds the new primary after a failover by itself: the command that hits the
  dead (or demoted) primary fails with a ``ConnectionError``, the next one connects to the
  primary the sentinels promoted.  ``password`` is the data servers' one (sentinels without
  authentication).

:class:`RedisRoutes` maps queues to deployments (``Settings.redis_queue_urls``): a queue's
messages, acks, delayed and dead-lettered messages, admission claims and results live on
the Redis its URL names; keys that belong to no queue (worker heartbeats of the metrics,
schedules' leases, workflow leases, metrics counters) live on the default one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
from dramatiq.common import q_name
from redis.sentinel import Sentinel, SentinelConnectionPool

#: URL scheme of a deployment reached through Redis Sentinel.
SENTINEL_SCHEME = "redis+sentinel://"

#: Schemes of a single server's URL.
SERVER_SCHEMES = ("redis://", "rediss://", "unix://")

#: Every scheme :func:`redis_client` accepts.
REDIS_SCHEMES = (*SERVER_SCHEMES, SENTINEL_SCHEME)

#: Default port of a sentinel named without one.
SENTINEL_PORT = 26379

#: Seconds a sentinel has to answer "who is the primary?" before the next one is asked.
SENTINEL_TIMEOUT = 0.5


@dataclass(frozen=True)
class SentinelAddress:
    """A ``redis+sentinel://`` URL, parsed.

    Parameters:
      service(str): The name the sentinels monitor the primary under.
      sentinels(tuple[tuple[str, int], ...]): (host, port) of each sentinel.
      db(int): Database number on the primary.  Defaults to 0.
      password(str | None): The data servers' password.
    """

    service: str
    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The parts of a ``redis+sentinel://`` URL; a ``ValueError`` naming what is wrong."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME} (got {url!r})")
    rest = url[len(SENTINEL_SCHEME) :]
    password = None
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        password = unquote(credentials.split(":", 1)[-1]) or None
    hosts, _, path = rest.partition("/")
    parts = [part for part in path.split("/") if part]
    if not hosts or not parts or len(parts) > 2:
        raise ValueError(f"expected {SENTINEL_SCHEME}host:port[,host:port...]/service[/db] (got {url!r})")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", str(SENTINEL_PORT))
        if not name or not port.isdigit():
            raise ValueError(f"bad sentinel address {host!r} in {url!r}")
        sentinels.append((name, int(port)))
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"the database of {url!r} must be a number (got {parts[1]!r})")
    return SentinelAddress(
        service=parts[0],
        sentinels=tuple(sentinels),
        db=int(parts[1]) if len(parts) == 2 else 0,
        password=password,
    )


def check_redis_url(url: str) -> str:
    """``url`` if :func:`redis_client` can use it, else a ``ValueError`` naming the forms it takes."""
    if not url.startswith(REDIS_SCHEMES):
        raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)} (got {url!r})")
    if url.startswith(SENTINEL_SCHEME):
        parse_sentinel_url(url)
    return url


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client of the deployment ``url`` names (see the module docstring).

    ``options`` go to every connection (``socket_timeout``, ``client_name``, ...).
    """
    if not url.startswith(SENTINEL_SCHEME):
        return redis.Redis.from_url(url, **options)
    address = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(address.sentinels),
        sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT},
    )
    return sentinel.master_for(address.service, db=address.db, password=address.password, **options)


def dedicated_client(client: redis.Redis, **options: Any) -> redis.Redis:
    """A client of the same deployment as ``client`` with a pool of its own (for pub/sub),
    its connections given ``options`` (``client_name=...``)."""
    pool = client.connection_pool
    kwargs = {key: value for key, value in pool.connection_kwargs.items() if key != "connection_pool"}
    kwargs.update(options)
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_class", None)
        return redis.Redis(
            connection_pool=SentinelConnectionPool(pool.service_name, pool.sentinel_manager, **kwargs)
        )
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


class RedisRoutes:
    """Which Redis client serves each queue.

    A queue's delay (``.DQ``) and dead-letter (``.XQ``) queues go where the queue goes.

    Parameters:
      default(redis.Redis): The Redis of every queue not named in ``queues``, and of
        the keys that belong to no queue.
      queues(Mapping[str, redis.Redis]): Queue name -> its own Redis.  Defaults to none.
    """

    def __init__(self, *, default: redis.Redis, queues: Mapping[str, redis.Redis] | None = None) -> None:
        self.default = default
        self.queues = dict(queues or {})

    @classmethod
    def from_urls(
        cls, default_url: str, queue_urls: Mapping[str, str] | None = None, **options: Any
    ) -> RedisRoutes:
        """Routes with one client per distinct URL (``options`` go to each)."""
        clients = {default_url: redis_client(default_url, **options)}
        for url in (queue_urls or {}).values():
            if url not in clients:
                clients[url] = redis_client(url, **options)
        return cls(
            default=clients[default_url],
            queues={queue: clients[url] for queue, url in (queue_urls or {}).items()},
        )

    @property
    def routed(self) -> bool:
        """Whether some queue lives elsewhere than on the default Redis."""
        return any(client is not self.default for client in self.queues.values())

    def client_for(self, queue_name: str) -> redis.Redis:
        """The Redis of ``queue_name`` (or of its delay / dead-letter queue)."""
        if not self.queues:
            return self.default
        return self.queues.get(q_name(queue_name), self.default)

    def clients(self) -> list[redis.Redis]:
        """Each distinct client once, the default first."""
        distinct = {id(self.default): self.default}
        for client in self.queues.values():
            distinct.setdefault(id(client), client)
        return list(distinct.values())

    def group(self, queue_names: list[str]) -> list[tuple[redis.Redis, list[str]]]:
        """``queue_names`` grouped by the client that serves them, in first-seen order."""
        groups: dict[int, tuple[redis.Redis, list[str]]] = {}
        for queue_name in queue_names:
            client = self.client_for(queue_name)
            groups.setdefault(id(client), (client, []))[1].append(queue_name)
        return list(groups.values())


def routes_of(broker: Any) -> RedisRoutes:
    """The routes of ``broker``: its own, or its one client for every queue (Dramatiq's broker)."""
    routes = getattr(broker, "routes", None)
    return routes if routes is not None else RedisRoutes(default=broker.client)


def queue_client(broker: Any, queue_name: str) -> redis.Redis:
    """The Redis client of ``broker`` that holds ``queue_name``."""
    return routes_of(broker).client_for(queue_name)
