"""The ``maintenance`` queue: the seed's housekeeping schedules.

Their times come from the schedule table (:data:`actors.scheduling.schedules.DEFAULT_SCHEDULES`,
overridable by settings): cleanup daily 03:00, vacuum Sundays 04:00, summary 08:00.
"""

from __future__ import annotations

from datetime import timedelta

import dramatiq
from dramatiq.logging import get_logger

from actors.scheduling import schedule_control_of
from storage import delete_finished_before, status_counts_since, utc_now, vacuum

#: Queue of the maintenance actors.
QUEUE = "maintenance"

#: Days finished tasks and relayed outbox rows are kept by ``cleanup_tasks``.
RETENTION_DAYS = 30


def _engine():
    engine = schedule_control_of(dramatiq.get_broker()).engine
    if engine is None:
        raise RuntimeError("no database configured for maintenance (TRADEFLOW_DATABASE_URL)")
    return engine


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=1)
def cleanup_tasks(retention_days: int = RETENTION_DAYS) -> dict[str, int]:
    """Delete finished tasks and relayed outbox rows older than ``retention_days``."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1 (got {retention_days})")
    return delete_finished_before(_engine(), utc_now() - timedelta(days=retention_days))


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=1, time_limit=3_600_000)
def vacuum_database() -> None:
    """VACUUM (and ANALYZE on PostgreSQL) the database."""
    vacuum(_engine())


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=1)
def daily_summary() -> dict[str, int]:
    """Tasks of the last 24 hours per status (also in the worker log)."""
    counts = status_counts_since(_engine(), utc_now() - timedelta(days=1))
    get_logger(__name__).info("Daily summary: %s", counts)
    return counts
