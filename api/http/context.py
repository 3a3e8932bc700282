"""What every route reads: the settings and the connections built from them, once per app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from fastapi import Request
from sqlalchemy import Engine

from actors.settings import Settings


@dataclass
class ApiContext:
    """The app's view of the deployment.

    Parameters:
      settings: The settings the app was built with (never re-read from the environment).
      database: Engine of the tradeflow database.
      redis: Client of the broker's Redis.
      broker: The process's Dramatiq broker, with every actor registered (``None``: the
        routes that send messages answer 503).
      workflows: The workflow registry (``orchestration.registry``).
      runs_operations: Whether this process runs the bulk operations it accepts (False: an
        operations runner process does, see ``api/http/runner.py``).
      serves_requests: Whether this process answers requests (False: an operations runner,
        whose operations need not pause to let requests through).
    """

    settings: Settings
    database: Engine
    redis: redis.Redis
    broker: Any = None
    workflows: Any = None
    runs_operations: bool = True
    serves_requests: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        broker: Any = None,
        workflows: Any = None,
        runs_operations: bool = True,
        serves_requests: bool = True,
    ) -> ApiContext:
        from actors.broker import redis_client
        from storage import create_db_engine

        client = (
            broker.client
            if broker is not None and hasattr(broker, "client")
            else redis_client(settings.effective_redis_url, socket_connect_timeout=2, socket_timeout=10)
        )
        context = cls(
            settings=settings,
            database=create_db_engine(settings.database_url),
            redis=client,
            broker=broker,
            workflows=workflows,
            runs_operations=runs_operations,
            serves_requests=serves_requests,
        )
        if settings.events_enabled:
            from actors.broker import EventLog

            context.extras["events"] = EventLog(
                client=client, namespace=settings.namespace, maxlen=settings.events_maxlen
            )
        return context

    @property
    def namespace(self) -> str:
        return self.settings.namespace


def context_of(request: Request) -> ApiContext:
    """The context of the app serving ``request`` (a FastAPI dependency)."""
    return request.app.state.tradeflow


def broker_of(context: ApiContext):
    """The process's broker; 503 ``unavailable`` when the app was built without one."""
    from .problems import Problem

    if context.broker is None:
        raise Problem("unavailable", "this API process has no broker: it cannot send messages")
    return context.broker
