"""The periodic health monitor: every minute, failing checks become alerts in SQL."""

from __future__ import annotations

import dramatiq
from periodiq import cron

from actors.system import QUEUE


@dramatiq.actor(
    queue_name=QUEUE, store_results=True, periodic=cron("* * * * *"), max_retries=0, time_limit=30_000
)
def monitor_health() -> dict:
    """Run the health checks with this deployment's thresholds and store raised/resolved alerts."""
    from actors.broker import event_log_of, routes_of
    from actors.runtime import process_settings
    from actors.telemetry import check_health
    from storage import create_db_engine

    settings = process_settings()
    engine = create_db_engine(settings.database_url)
    try:
        report = check_health(
            client=dramatiq.get_broker().client,
            routes=routes_of(dramatiq.get_broker()),
            namespace=settings.namespace,
            engine=engine,
            heartbeat_timeout=settings.heartbeat_timeout_ms / 1000,
            max_queue_depth=settings.health_max_queue_depth,
            scheduler_silence=settings.health_scheduler_silence_ms / 1000,
        )
        raised = report.record(
            engine, severities=settings.health_severities, events=event_log_of(dramatiq.get_broker())
        )
    finally:
        engine.dispose()
    return {"healthy": report.healthy, "raised": [alert.check_name for alert in raised]}
