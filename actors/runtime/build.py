"""The broker every tradeflow process uses, built from :class:`actors.settings.Settings`."""

from __future__ import annotations

import atexit

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.results.backends import RedisBackend
from periodiq import PeriodiqMiddleware

from actors.broker import (
    Admission,
    EventLog,
    RedisRoutes,
    WakeupRedisBroker,
    enqueue_messages,
    first_delivery,
    forgo_retry,
    postpone,
    readmit,
    redis_client,
    withdraw_unstarted,
)
from actors.middleware import (
    Audit,
    CancelWatcher,
    DeadLetterLog,
    RateLimits,
    RedisAuditJournal,
    Retries,
    StalledRecovery,
    WorkerRegistry,
)
from actors.scheduling import ScheduleControl
from actors.settings import Settings
from actors.telemetry import Metrics, Tracing, tracer_provider_for
from saga import Saga, StepAwareResults
from storage import MAX_OVERFLOW, POOL_SIZE, AuditWriter, create_db_engine

from .metrics_server import serve_metrics
from .process import remember
from .routed_results import RoutedRedisBackend

#: Connections of the audit writer's pool: its thread's, and the journal replay's.
AUDIT_POOL_SIZE = 2

#: Connections a saga engine may open beyond one per worker thread and its maintenance thread.
SAGA_POOL_OVERFLOW = 2

#: Seconds after its tick a periodic message is still worth running.
PERIODIC_SKIP_DELAY = 30


def build_redis_routes(settings: Settings, **options) -> RedisRoutes:
    """The Redis clients of ``settings``: the default one and one per routed queue's URL
    (``options`` go to every connection, e.g. ``socket_timeout``)."""
    return RedisRoutes.from_urls(settings.effective_redis_url, settings.redis_queue_urls, **options)


def build_redis_client(settings: Settings, **options) -> redis.Redis:
    """A client of the default Redis of ``settings`` (plain or Sentinel URL)."""
    return redis_client(settings.effective_redis_url, **options)


def build_results_backend(settings: Settings, *, routes: RedisRoutes | None = None) -> RedisBackend:
    """Where actor results go: on the Redis of each message's queue."""
    routes = routes or build_redis_routes(settings)
    namespace = f"{settings.namespace}-results"
    if not routes.routed:
        return RedisBackend(client=routes.default, namespace=namespace)
    return RoutedRedisBackend(routes=routes, namespace=namespace)


def saga_pool(*, threads: int) -> dict[str, int]:
    """Pool of a worker process's saga engine: a connection for each worker thread (one
    statement or transaction at a time each), one for the maintenance thread, and
    :data:`SAGA_POOL_OVERFLOW` for producers' threads (an API process sending many runs)."""
    return {"pool_size": threads + 1, "max_overflow": SAGA_POOL_OVERFLOW}


def connections_per_process(*, threads: int) -> int:
    """Most PostgreSQL connections one worker process opens with ``threads`` worker threads:
    the saga engine's, the audit writer's and the schedules' (docs/architecture.md); an actor
    module with an engine of its own adds ``POOL_SIZE + MAX_OVERFLOW`` (4)."""
    saga = sum(saga_pool(threads=threads).values())
    return saga + AUDIT_POOL_SIZE + POOL_SIZE + MAX_OVERFLOW


def build_audit_writer(settings: Settings) -> AuditWriter:
    journal = RedisAuditJournal(client=build_redis_client(settings), namespace=settings.namespace)
    return AuditWriter(
        # Its thread writes; the journal's replay may run beside it.
        create_db_engine(settings.database_url, pool_size=AUDIT_POOL_SIZE, max_overflow=0),
        buffer_size=settings.audit_buffer_size,
        batch_size=settings.audit_batch_size,
        commit_interval=settings.audit_commit_interval_ms / 1000,
        journal=journal,  # a stop while the database is down spills here
    )


def build_middleware(
    settings: Settings, *, audit_writer: AuditWriter | None, routes: RedisRoutes | None = None
) -> list[Middleware]:
    """The middleware stack, in order.

    Tracing comes first so its span is still open while the others enqueue
    (retries, pipelines); Admission sits before Audit (a skipped message is
    never recorded running); Audit and Saga before Retries (after_* hooks run
    in reverse order, and both need the retry decision); CancelWatcher last.
    """
    middleware: list[Middleware] = []
    tracer_provider = tracer_provider_for(settings)
    if tracer_provider is not None:
        middleware.append(Tracing(tracer_provider=tracer_provider))
    if settings.metrics_enabled:
        middleware.append(
            Metrics(
                directory=settings.effective_metrics_dir,
                host=settings.metrics_host,
                port=settings.metrics_port,
                serve=serve_metrics,
            )
        )
    middleware += [
        AgeLimit(max_age=settings.max_age_ms),
        TimeLimit(time_limit=settings.time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Admission(max_deliveries=settings.max_deliveries, ttl=settings.run_once_ttl_ms),
    ]
    if (
        settings.effective_rate_limits
    ):  # after Admission: a duplicate takes no slot; before Audit: not running
        middleware.append(
            RateLimits(limits=settings.effective_rate_limits, max_wait_ms=settings.rate_limit_max_wait_ms)
        )
    if audit_writer is not None:
        middleware.append(
            Audit(
                writer=audit_writer,
                default_max_retries=settings.max_retries,
                default_time_limit=settings.time_limit_ms,
                commit_wait=settings.audit_commit_wait_ms / 1000,
                running_delay=settings.audit_running_delay_ms / 1000,
            )
        )
    middleware += [
        Saga(
            # No pre-ping: the saga retries a failed claim or outcome itself.
            database=create_db_engine(
                settings.database_url, pre_ping=False, **saga_pool(threads=settings.worker_threads)
            ),
            lease_ms=settings.workflow_lease_ms,
            recovery_after_ms=settings.workflow_recovery_after_ms,
            recovery_interval_ms=settings.workflow_recovery_interval_ms,
            concurrency_lease_ms=settings.workflow_concurrency_lease_ms,
            send_many=enqueue_messages,  # a fan-out's messages in one round trip
            tracer_provider=tracer_provider,  # each run's root span
            first_delivery=first_delivery,  # admission's count: a first delivery only reads
            withdraw=withdraw_unstarted,  # a stopping run's queued steps never start
            postpone=postpone,  # a dead worker's step, back inside its lease, waits for it
            readmit=readmit,  # recovery's copies are admitted on their own
            forgo_retry=forgo_retry,  # a step whose run stopped is not retried
        ),
        Retries(
            max_retries=settings.max_retries,
            min_backoff=settings.min_backoff_ms,
            max_backoff=settings.max_backoff_ms,
            jitter=settings.retry_jitter,
        ),
        CurrentMessage(),
        # a workflow step's result is the engine's to record: no store_results warning for it
        StepAwareResults(
            backend=build_results_backend(settings, routes=routes), result_ttl=settings.result_ttl_ms
        ),
        PeriodiqMiddleware(skip_delay=PERIODIC_SKIP_DELAY),
        ScheduleControl(
            overrides=settings.schedules,
            catch_up=settings.schedule_catch_up,
            timezone=settings.schedule_timezone,
            lease_ttl=settings.schedule_lease_ms,
            database_url=settings.database_url,
        ),
        DeadLetterLog(),
        WorkerRegistry(),
        StalledRecovery(interval=settings.recovery_interval_ms),
        # last: its after-hook runs first, so a job stops being interruptible as soon as it returns
        CancelWatcher(interval=settings.cancel_poll_interval_ms),
    ]
    return middleware


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with tradeflow's middleware.  Nothing connects until first use.

    The waking broker with priority lanes (:mod:`actors.broker.redis_broker`), or
    Dramatiq's own with ``stock_broker``.
    """
    if settings.stock_broker and (settings.redis_queue_urls or settings.redis_confirm_replicas):
        raise ValueError(
            "TRADEFLOW_REDIS_QUEUE_URLS and TRADEFLOW_REDIS_CONFIRM_REPLICAS need tradeflow's broker:"
            " unset TRADEFLOW_STOCK_BROKER"
        )
    audit_writer = build_audit_writer(settings) if settings.audit_enabled else None
    routes = build_redis_routes(settings)
    options = dict(
        namespace=settings.namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        middleware=build_middleware(settings, audit_writer=audit_writer, routes=routes),
    )
    if settings.stock_broker:
        broker = RedisBroker(client=routes.default, **options)
    else:
        broker = WakeupRedisBroker(
            aging_every=settings.broker_aging_every,
            prefetch_scale=settings.broker_prefetch_scale,
            ack_flush_timeout=settings.audit_commit_wait_ms / 1000,
            routes=routes,
            confirm_replicas=settings.redis_confirm_replicas,
            confirm_timeout=settings.redis_confirm_timeout_ms,
            **options,
        )
    if settings.events_enabled:
        _feed_events(
            broker,
            EventLog(client=broker.client, namespace=settings.namespace, maxlen=settings.events_maxlen),
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


def configure(settings: Settings) -> RedisBroker:
    """Build the broker of ``settings``, make it Dramatiq's global broker and remember the settings."""
    broker = build_broker(settings)
    dramatiq.set_broker(broker)
    remember(settings)
    return broker


def _feed_events(broker: RedisBroker, events: EventLog) -> None:
    """Let the audit trail, the dead-letter log and the saga engine append to the live-events stream."""
    for middleware in broker.middleware:
        if isinstance(middleware, Audit):
            middleware.writer.on_commit = events.task_events
        elif isinstance(middleware, DeadLetterLog):
            middleware.events = events
        elif isinstance(middleware, Saga):
            middleware.on_run_status = events.run_event
