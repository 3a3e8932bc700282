"""The broker every tradeflow process uses, built from :class:`config.Settings`."""

from __future__ import annotations

import atexit

from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
from periodiq import PeriodiqMiddleware

from config import Settings
from storage import AuditWriter, create_db_engine

from .audit import Audit
from .redis_broker import WakeupRedisBroker

#: Seconds after its tick a periodic message is still worth running.
PERIODIC_SKIP_DELAY = 30


def build_audit_writer(settings: Settings) -> AuditWriter:
    return AuditWriter(
        create_db_engine(settings.database_url),
        buffer_size=settings.audit_buffer_size,
        batch_size=settings.audit_batch_size,
    )


def build_middleware(settings: Settings, *, audit_writer: AuditWriter | None) -> list[Middleware]:
    """The middleware stack, in order.  Audit sits before Retries so it sees the retry decision."""
    middleware: list[Middleware] = [
        AgeLimit(max_age=settings.max_age_ms),
        TimeLimit(time_limit=settings.time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
    ]
    if audit_writer is not None:
        middleware.append(
            Audit(
                writer=audit_writer,
                default_max_retries=settings.max_retries,
                default_time_limit=settings.time_limit_ms,
                commit_wait=settings.audit_commit_wait_ms / 1000,
            )
        )
    middleware += [
        Retries(
            max_retries=settings.max_retries,
            min_backoff=settings.min_backoff_ms,
            max_backoff=settings.max_backoff_ms,
        ),
        CurrentMessage(),
        Results(
            backend=RedisBackend(url=settings.effective_redis_url, namespace=f"{settings.namespace}-results"),
            result_ttl=settings.result_ttl_ms,
        ),
        PeriodiqMiddleware(skip_delay=PERIODIC_SKIP_DELAY),
    ]
    return middleware


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with tradeflow's middleware.  Nothing connects until first use.

    The waking broker with priority lanes (:mod:`actors.redis_broker`), or
    Dramatiq's own with ``stock_broker``.
    """
    audit_writer = build_audit_writer(settings) if settings.audit_enabled else None
    options = dict(
        url=settings.effective_redis_url,
        namespace=settings.namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        middleware=build_middleware(settings, audit_writer=audit_writer),
    )
    if settings.stock_broker:
        broker = RedisBroker(**options)
    else:
        broker = WakeupRedisBroker(
            aging_every=settings.broker_aging_every, prefetch_scale=settings.broker_prefetch_scale, **options
        )
    if audit_writer is not None:
        # Producers (CLI, services) exit right after sending: give their
        # pending rows a chance to land.
        atexit.register(audit_writer.close, settings.audit_commit_wait_ms / 1000)
    return broker


def audit_writer_of(broker: RedisBroker) -> AuditWriter | None:
    """The broker's audit writer, if auditing is on."""
    for middleware in broker.middleware:
        if isinstance(middleware, Audit):
            return middleware.writer
    return None
