"""Dramatiq's Redis result backend, storing each result on the Redis of its message's queue."""

from __future__ import annotations

from typing import Any

from dramatiq.message import Message
from dramatiq.results.backends import RedisBackend

from actors.broker import RedisRoutes


class RoutedRedisBackend(RedisBackend):
    """A :class:`~dramatiq.results.backends.RedisBackend` per distinct Redis of ``routes``;
    a message's result goes to (and is read from) the Redis its queue lives on.

    Parameters:
      routes(RedisRoutes): Which Redis each queue lives on.
      namespace(str): Prefix of the result keys.
    """

    def __init__(self, *, routes: RedisRoutes, namespace: str) -> None:
        super().__init__(namespace=namespace, client=routes.default)
        self.routes = routes
        self._backends = {
            id(client): RedisBackend(namespace=namespace, client=client) for client in routes.clients()
        }

    def backend_for(self, message: Message) -> RedisBackend:
        return self._backends[id(self.routes.client_for(message.queue_name))]

    def get_result(self, message: Message, *, block: bool = False, timeout: int | None = None) -> Any:
        return self.backend_for(message).get_result(message, block=block, timeout=timeout)

    def store_result(self, message: Message, result: Any, ttl: int) -> None:
        return self.backend_for(message).store_result(message, result, ttl)

    def store_exception(self, message: Message, exception: Exception, ttl: int) -> None:
        return self.backend_for(message).store_exception(message, exception, ttl)
